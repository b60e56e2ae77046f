"""The tile width of Circle's blocked implementations (JAX's and PyTorch's), backend-neutral.

Each blocked path walks the reference set in column tiles of width B and keeps about eight
[N, B] temporaries alive per tile. The width is a multiple of 128 (a TPU matrix unit's side),
the widest that keeps those temporaries within a budget: CPU caches favour small tiles;
accelerators want wide products to keep their matrix units busy (the budgets of the TensorFlow
op's HLO lowering).
"""

import math

_TILE_TEMPORARIES = 8
_CPU_TILE_BUDGET_BYTES = 16 << 20
_ACCELERATOR_TILE_BUDGET_BYTES = 256 << 20
_TILE_QUANTUM, _MIN_TILE, _MAX_TILE = 128, 128, 1024


def tile_width(rows, ref_rows, itemsize, platform):
    """Columns of the reference set per tile, for ``rows`` anchors on ``platform`` ("cpu" or
    any accelerator's name), with ``itemsize``-byte elements."""
    budget = _CPU_TILE_BUDGET_BYTES if platform == "cpu" else _ACCELERATOR_TILE_BUDGET_BYTES
    fit = budget // (_TILE_TEMPORARIES * itemsize * max(rows, 1))
    width = min(max(fit // _TILE_QUANTUM * _TILE_QUANTUM, _MIN_TILE), _MAX_TILE)
    return min(width, _TILE_QUANTUM * math.ceil(max(ref_rows, 1) / _TILE_QUANTUM))
