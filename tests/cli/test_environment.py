"""metrics.json's ``environment`` tells apart the machines whose single seeds differ."""

import json
import os
import platform
import subprocess
import sys

import pytest

from keras_margin import ops as fused_ops
from keras_margin_cli import experiment, machine

# The two machines of the README: the same "AMD EPYC" with 2 cores, one with AVX-512.
AVX2_FLAGS = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma sse4a avx2 bmi2 sha_ni"
AVX512_FLAGS = f"{AVX2_FLAGS} avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16"
# TensorFlow's own default on Linux x86-64 without TF_ENABLE_ONEDNN_OPTS.
ONEDNN_BY_DEFAULT = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}


def cpuinfo(tmp_path, monkeypatch, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    monkeypatch.setattr(machine, "CPUINFO", str(path))


@pytest.mark.parametrize(
    "text, extensions",
    [
        (
            f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {AVX2_FLAGS}\n",
            ["avx", "avx2", "f16c", "fma", "sse4_2"],
        ),
        (
            f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {AVX512_FLAGS}\n",
            ["avx", "avx2", "avx512_bf16", "avx512_vnni", "avx512bw", "avx512dq", "avx512f"]
            + ["avx512vl", "f16c", "fma", "sse4_2"],
        ),
        (
            "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 sve sve2\n",
            ["asimd", "sve", "sve2"],
        ),
        ("processor\t: 0\n", None),  # a CPU that lists no features: unknown, not none
    ],
    ids=["avx2", "avx512", "arm", "unlisted"],
)
def test_vector_extensions_are_read_from_cpuinfo(text, extensions, tmp_path, monkeypatch):
    cpuinfo(tmp_path, monkeypatch, text)
    assert experiment.environment()["cpu_vector_extensions"] == extensions


def test_the_two_readme_machines_differ(tmp_path, monkeypatch):
    found = []
    for flags in (AVX2_FLAGS, AVX512_FLAGS):
        cpuinfo(tmp_path, monkeypatch, f"model name\t: AMD EPYC\nflags\t\t: {flags}\n")
        found.append(experiment.environment())
    assert found[0]["cpu"] == found[1]["cpu"] == "AMD EPYC"
    assert found[0] != found[1]


def test_a_missing_cpuinfo_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "absent"))
    found = experiment.environment()
    assert found["cpu_vector_extensions"] is None
    assert found["cpu"] == (platform.processor() or platform.machine())


def test_engine_build_is_the_ops_own():
    found = experiment.environment()
    assert found["engine_isa"] == fused_ops.engine_isa()
    assert found["engine_isa"] in ("avx512", "avx2", "portable")
    assert "engine_unavailable" not in found


def test_an_unavailable_op_records_why(monkeypatch):
    def unavailable():
        raise fused_ops.CustomOpUnavailableError("_circle_loss_op.so was not built")

    monkeypatch.setattr(fused_ops, "engine_isa", unavailable)
    found = experiment.environment()
    assert found["engine_isa"] is None
    assert found["engine_unavailable"] == "_circle_loss_op.so was not built"


SCRIPT = (
    "import json; from keras_margin_cli import experiment; "
    "print(json.dumps(experiment.environment()))"
)


def environment_in_a_process(setting):
    """The environment as a fresh process records it: TensorFlow reads the setting once."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("setting, on", [("1", True), ("0", False)])
def test_onednn_follows_tf_enable_onednn_opts(setting, on):
    found = environment_in_a_process(setting)
    assert found["onednn"] is on
    assert found["TF_ENABLE_ONEDNN_OPTS"] == setting


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="TensorFlow's default is stated here for Linux on x86-64",
)
def test_onednn_unset_is_tensorflows_default_for_the_cpu():
    found = environment_in_a_process(None)
    assert found["TF_ENABLE_ONEDNN_OPTS"] is None
    assert found["onednn"] is bool(ONEDNN_BY_DEFAULT & set(found["cpu_vector_extensions"]))
