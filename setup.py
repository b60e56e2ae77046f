"""Builds the fused Circle-loss TensorFlow op as keras_margin/ops/_circle_loss_op.so.

Project metadata lives in pyproject.toml; this file only describes the C++ extension. The
library compiles against the headers of the installed TensorFlow and links against its shared
libraries, so it is only usable with that exact TensorFlow version (recorded in the library and
checked by keras_margin.ops at load time).

Environment variables:
  KERAS_MARGIN_ARCH_FLAGS  compiler flags selecting the instruction set. Default: "-mavx2 -mfma
                           -mf16c" when the build machine supports them, else none. Set it to ""
                           for a portable build or to "-march=native" for this machine only.
  KERAS_MARGIN_BUILD_JOBS  number of sources compiled in parallel (default: CPU count).

On x86-64 the engine is also built with AVX-512, as keras_margin/ops/_circle_engine_avx512.so,
whatever KERAS_MARGIN_ARCH_FLAGS says: the op library loads it at run time on CPUs that have
AVX-512 and never touches it elsewhere (tf_ops/kernels/circle_loss_engine_table.h).
"""

import os
import platform
import shlex
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

SOURCES = [
    "tf_ops/ops/circle_loss_ops.cc",
    "tf_ops/kernels/circle_loss_engine.cc",
    "tf_ops/kernels/circle_loss_engine_dispatch.cc",
    "tf_ops/kernels/circle_loss_kernels.cc",
    "tf_ops/xla/circle_loss_blocked_hlo.cc",
    "tf_ops/xla/circle_loss_xla.cc",
    "tf_ops/xla/circle_loss_custom_call.cc",
    "tf_ops/xla/circle_loss_ffi.cc",
    "tf_ops/version.cc",
]


def _default_arch_flags():
    """AVX2/FMA/F16C when the build machine has them: the tile GEMMs and the vectorised exp
    gain about 2x, and every x86-64 CPU TensorFlow 2.21 targets in practice has them.
    -march=native is avoided because it would tie the wheel to the build machine's exact
    CPU generation (e.g. AVX-512)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return []
    if {"avx2", "fma", "f16c"} <= flags:
        return ["-mavx2", "-mfma", "-mf16c"]
    return []


# AVX-512 Foundation, DQ, BW and VL: what Eigen's AVX-512 packets use (every AVX-512 CPU since
# Skylake-SP has them). -march=native is avoided: on CPUs with AVX512-FP16 it makes Eigen 3.4's
# headers fail to compile.
AVX512_FLAGS = ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"]
AVX512_ENGINE = "keras_margin.ops._circle_engine_avx512"


def _arch_flags():
    if "KERAS_MARGIN_ARCH_FLAGS" in os.environ:
        return shlex.split(os.environ["KERAS_MARGIN_ARCH_FLAGS"])
    return _default_arch_flags()


class BuildTfOp(build_ext):
    """Adds the TensorFlow flags at build time (TensorFlow is only importable then) and
    compiles the sources in parallel: the XLA lowering alone takes ~40 s."""

    def get_ext_filename(self, fullname):
        # A plain "_circle_loss_op.so": this is loaded with tf.load_op_library, not imported
        # as a CPython extension, so the ABI tag would only get in the way.
        parts = fullname.split(".")
        return os.path.join(*parts[:-1], parts[-1] + ".so")

    def build_extensions(self):
        import tensorflow as tf

        include = tf.sysconfig.get_include()
        compile_flags = (
            tf.sysconfig.get_compile_flags()
            + [
                f"-I{include}/external/highwayhash",
                f"-I{include}/external/farmhash_archive/src",
                f"-I{HERE}",
                f"-DKERAS_MARGIN_TF_VERSION={tf.__version__}",
                "-O3",
                "-g0",
                "-DNDEBUG",
                "-fvisibility=hidden",
                "-fvisibility-inlines-hidden",
                "-Wno-sign-compare",
                "-Wno-unused-parameter",
                "-Wno-deprecated-declarations",
            ]
            + _arch_flags()
        )
        link_flags = tf.sysconfig.get_link_flags() + ["-l:libtensorflow_cc.so.2"]
        for ext in self.extensions:
            if ext.name == AVX512_ENGINE:
                # TensorFlow-free: Eigen's headers only, no TensorFlow library linked.
                ext.extra_compile_args = [
                    f for f in compile_flags if f not in _arch_flags()
                ] + AVX512_FLAGS
            else:
                ext.extra_compile_args = compile_flags
                ext.extra_link_args = link_flags
        # -Wstrict-prototypes etc. from Python's own CFLAGS are C-only noise for C++ sources.
        self.compiler.compiler_so = [
            f for f in self.compiler.compiler_so if f != "-Wstrict-prototypes"
        ]
        self._compile_in_parallel()
        super().build_extensions()

    def _compile_in_parallel(self):
        jobs = int(os.environ.get("KERAS_MARGIN_BUILD_JOBS", os.cpu_count() or 1))
        serial_compile = self.compiler.compile

        def compile_sources(sources, *args, **kwargs):
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                groups = pool.map(lambda src: serial_compile([src], *args, **kwargs), sources)
                return [obj for group in groups for obj in group]

        self.compiler.compile = compile_sources


# The headers, and the engine source that circle_loss_engine_avx512.cc includes: setuptools
# rebuilds an extension only when one of its sources or these is newer than the library.
ENGINE_DEPENDS = [
    "tf_ops/kernels/circle_loss_engine.cc",
    *(
        os.path.join(d, f)
        for d in ("tf_ops/kernels", "tf_ops/xla")
        for f in os.listdir(os.path.join(HERE, d))
        if f.endswith(".h")
    ),
]
EXTENSIONS = [
    Extension(
        "keras_margin.ops._circle_loss_op",
        sources=SOURCES,
        depends=ENGINE_DEPENDS,
        language="c++",
        optional=True,
    )
]
if platform.machine() in ("x86_64", "AMD64"):
    EXTENSIONS.append(
        Extension(
            AVX512_ENGINE,
            sources=["tf_ops/kernels/circle_loss_engine_avx512.cc"],
            depends=ENGINE_DEPENDS,
            language="c++",
            optional=True,
        )
    )

setup(
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": BuildTfOp},
)
