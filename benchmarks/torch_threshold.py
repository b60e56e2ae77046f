"""Where Circle's blocked PyTorch path starts to pay: composite against blocked, eagerly.

Forward+backward of the per-row losses (summed), D = 128, float32, on the CPU, for each N
given (default 512 1024 2048 4096): one warm-up each, then eight runs of each path,
alternating, and the fastest of each (the least disturbed by other work). It sets
``TORCH_BLOCKED_MIN_PAIRS`` in ``keras_margin/losses/circle_dispatch.py``:

    KERAS_BACKEND=torch python benchmarks/torch_threshold.py 512 1024 2048 4096
"""

import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch  # noqa: E402

from keras_margin.losses import circle_composite  # noqa: E402
from keras_margin.torch import circle as blocked  # noqa: E402

KWARGS = {"gamma": 80.0, "margin": 0.4, "remove_diagonal": True}


def seconds(circle_loss, x, labels):
    leaf = x.clone().requires_grad_()
    start = time.perf_counter()
    circle_loss(leaf, labels, **KWARGS).sum().backward()
    return time.perf_counter() - start


def fastest(x, labels, repeats=8):
    paths = (circle_composite.circle_loss, blocked.circle_loss)
    for circle_loss in paths:
        seconds(circle_loss, x, labels)
    runs = [[seconds(path, x, labels) for path in paths] for _ in range(repeats)]
    return [min(times) for times in zip(*runs, strict=True)]


def main(sizes):
    torch.manual_seed(0)
    for n in sizes:
        x = torch.nn.functional.normalize(torch.randn(n, 128), dim=1)
        labels = torch.randint(0, max(n // 4, 1), (n,))
        composite, fast = fastest(x, labels)
        print(
            f"N={n}: composite {composite:.4f} s, blocked {fast:.4f} s, "
            f"ratio {fast / composite:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main([int(n) for n in sys.argv[1:]] or [512, 1024, 2048, 4096])
