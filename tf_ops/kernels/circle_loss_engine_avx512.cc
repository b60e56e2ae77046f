// The engine compiled with AVX-512 (setup.py gives this unit its flags), as
// the library _circle_engine_avx512.so. See circle_loss_engine_table.h.

#include "tf_ops/kernels/circle_loss_engine.cc"

extern "C" __attribute__((visibility("default"))) const keras_margin::EngineTable*
keras_margin_engine_table() {
  return &keras_margin::ThisIsaEngine();
}
