// The engine's entry points as a table, one per instruction set it is built
// for.
//
// circle_loss_engine.cc is compiled twice: into the op library for the
// baseline instruction set (AVX2/FMA by default), and, on x86-64, into
// _circle_engine_avx512.so with AVX-512 enabled: Eigen's tile products use
// its 32 registers of 16 floats, and the element-wise step 16-float lanes
// (circle_loss_engine.cc, kFloatLanes). The op library loads the
// AVX-512 copy only on a CPU that has AVX-512, with dlopen: linked directly,
// its static initialisers would run, and fault, on CPUs without it, and the
// two copies of every inline Eigen function could be merged into one.
// Everything but keras_margin_engine_table is hidden in each library, so
// neither ever calls into the other's code.

#ifndef KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_ENGINE_TABLE_H_
#define KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_ENGINE_TABLE_H_

#include <cstdint>

#include "tf_ops/kernels/circle_loss_engine.h"

#if defined(__AVX512F__)
#define KERAS_MARGIN_ENGINE_ISA_NAME "avx512"
#elif defined(__AVX2__)
#define KERAS_MARGIN_ENGINE_ISA_NAME "avx2"
#else
#define KERAS_MARGIN_ENGINE_ISA_NAME "portable"
#endif

namespace keras_margin {

// Changes whenever the table or the types it passes change, so that a stale
// AVX-512 library next to a newer op library is refused, not called.
inline constexpr uint32_t kEngineAbi =
    2u * 1000000u + sizeof(CircleProblem<float>) * 1000u + sizeof(TaskRunner);

struct EngineTable {
  uint32_t abi;
  const char* isa;
  void (*forward_f32)(const CircleProblem<float>&, const TaskRunner&, float*,
                      float*, float*);
  void (*forward_f64)(const CircleProblem<double>&, const TaskRunner&, double*,
                      double*, double*);
  void (*backward_f32)(const CircleProblem<float>&, const TaskRunner&,
                       const float*, const float*, const float*, float*,
                       float*);
  void (*backward_f64)(const CircleProblem<double>&, const TaskRunner&,
                       const double*, const double*, const double*, double*,
                       double*);
};

// The engine of the instruction set this translation unit was compiled for.
const EngineTable& ThisIsaEngine();

}  // namespace keras_margin

// The one symbol _circle_engine_avx512.so exports.
inline constexpr char kEngineTableSymbol[] = "keras_margin_engine_table";

#endif  // KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_ENGINE_TABLE_H_
