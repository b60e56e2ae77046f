"""What the CPU is, from /proc/cpuinfo: for metrics.json's environment and the benchmark's
table. Standard library only, so that the benchmark's driver stays light."""

import platform

CPUINFO = "/proc/cpuinfo"
# The vector extensions that change results or speed here: those the op's engine builds need
# (avx2 and fma; avx512f, dq, bw and vl), those that turn TensorFlow's oneDNN kernels on by
# default on Linux (avx512_vnni, avx512_bf16, avx_vnni, amx_*), and ARM's counterparts.
VECTOR_EXTENSIONS = frozenset(
    {
        *("sse4_2", "avx", "avx2", "fma", "f16c"),
        *("avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_fp16"),
        *("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"),
        *("asimd", "sve", "sve2"),
    }
)


def _field(name):
    """The first ``name : value`` of /proc/cpuinfo, or None where there is none."""
    try:
        with open(CPUINFO) as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model():
    return _field("model name") or platform.processor() or platform.machine()


def vector_extensions():
    """The CPU's extensions of ``VECTOR_EXTENSIONS``, sorted; None where they are unknown."""
    flags = _field("flags") or _field("Features")  # x86, ARM
    return None if flags is None else sorted(VECTOR_EXTENSIONS.intersection(flags.split()))
