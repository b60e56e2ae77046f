"""Run in a fresh process that never imports keras_margin: loads SavedModels and calls them.

Usage: python saved_model_probe.py REQUEST_JSON. The request maps a name to
{"path": ..., "signature": ..., "inputs": {arg: npz key}, "npz": ...}; the reply (one JSON
line) gives, per name, the op types in the SavedModel's graphs, and either the signature's
outputs or the error that loading or calling raised.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402


def op_types(path):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    types = set()
    for meta_graph in saved_model.meta_graphs:
        types.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            types.update(node.op for node in function.node_def)
    return sorted(types)


def probe(request):
    reply = {"op_types": op_types(request["path"])}
    data = np.load(request["npz"])
    try:
        loaded = tf.saved_model.load(request["path"])
        signature = loaded.signatures[request["signature"]]
        outputs = signature(
            **{arg: tf.constant(data[key]) for arg, key in request["inputs"].items()}
        )
        reply["outputs"] = {k: v.numpy().tolist() for k, v in outputs.items()}
    except Exception as error:  # noqa: BLE001 - the error text is the result
        reply["error"] = f"{type(error).__name__}: {error}"
    return reply


if __name__ == "__main__":
    assert "keras_margin" not in sys.modules
    requests = json.loads(sys.argv[1])
    replies = {name: probe(request) for name, request in requests.items()}
    assert "keras_margin" not in sys.modules
    print(json.dumps(replies))
