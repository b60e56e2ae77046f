import pytest

from keras_margin import ops as km_ops

from .helpers import RawCircleOps


@pytest.fixture(scope="session")
def op_lib():
    """The loaded op library's raw ops. Fails (never skips) when the library was not built."""
    assert km_ops.custom_op_available(), km_ops.custom_op_unavailable_reason()
    from keras_margin.ops import _loader

    return RawCircleOps(_loader.load_library())


@pytest.fixture(params=["fused", "composite"])
def implementation(request):
    """Runs a value test through the fused op and through the pure keras.ops path."""
    if request.param == "fused":
        assert km_ops.custom_op_available(), km_ops.custom_op_unavailable_reason()
    return request.param
