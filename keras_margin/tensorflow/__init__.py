"""keras_margin's TensorFlow-only code (the fused op lives in ``keras_margin.ops``)."""
