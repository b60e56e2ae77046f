"""Circle loss forward+backward: Keras vs the fused op vs the bare matrix products.

The benchmark is ``keras_margin_cli/benchmark.py``, which ``keras-margin bench`` runs too; its
docstring and ``--help`` give the options. Run from here, it writes its table to the
``## Circle`` section of benchmarks/RESULTS.md (``--no-write`` only prints it).

    python benchmarks/circle.py                 # N = 1024 ... 65536, D = 128 and 512
    python benchmarks/circle.py --quick         # keras:jit and fused:jit, N = 4096, D = 128
"""

import sys

import results

from keras_margin_cli import benchmark

if __name__ == "__main__":
    benchmark.main(sys.argv[1:], results, prog="python benchmarks/circle.py")
