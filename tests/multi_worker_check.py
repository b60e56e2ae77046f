"""One worker of test_distribute.py's MultiWorkerMirroredStrategy check (TF_CONFIG is set).

Each of the two worker processes runs every loss case through a custom-loop step under the
strategy and compares it with a single-device step over the same global batch. Prints one JSON
line of failures.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distributed_steps import check_custom_loop_steps  # noqa: E402

if __name__ == "__main__":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2
    print(json.dumps(check_custom_loop_steps(strategy)))
