"""Distributed equality: MirroredStrategy over 2 logical CPUs against a single device."""

import json
import subprocess
import sys
from pathlib import Path


def test_mirrored_strategy_matches_single_device():
    # Logical devices must be configured before TensorFlow starts, hence a fresh process.
    script = Path(__file__).with_name("mirrored_check.py")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert failures == []
