// The engine's public entry points in the op library: each call goes to the
// AVX-512 build of the engine where the CPU has AVX-512 and the library
// _circle_engine_avx512.so beside this one loads, and to this library's own
// baseline build otherwise. KERAS_MARGIN_ENGINE_ISA=baseline, read once at
// the first call, keeps the baseline (for tests and side-by-side benchmarks).

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "tf_ops/kernels/circle_loss_engine.h"
#include "tf_ops/kernels/circle_loss_engine_table.h"

namespace keras_margin {
namespace {

bool CpuHasAvx512() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

// The directory this library was loaded from, where setup.py puts the
// AVX-512 library too.
std::string ThisLibraryDirectory() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&CpuHasAvx512), &info) == 0 ||
      info.dli_fname == nullptr) {
    return "";
  }
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

const EngineTable* LoadAvx512Engine() {
  const std::string dir = ThisLibraryDirectory();
  if (dir.empty()) return nullptr;
  void* handle = dlopen((dir + "/_circle_engine_avx512.so").c_str(),
                        RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) return nullptr;
  using Entry = const EngineTable* (*)();
  auto entry = reinterpret_cast<Entry>(dlsym(handle, kEngineTableSymbol));
  const EngineTable* table = entry == nullptr ? nullptr : entry();
  if (table == nullptr || table->abi != kEngineAbi) {
    dlclose(handle);
    return nullptr;
  }
  return table;  // Kept loaded for the life of the process.
}

const EngineTable& SelectEngine() {
  const char* forced = std::getenv("KERAS_MARGIN_ENGINE_ISA");
  const bool baseline = forced != nullptr && std::strcmp(forced, "baseline") == 0;
  if (!baseline && CpuHasAvx512()) {
    if (const EngineTable* avx512 = LoadAvx512Engine()) return *avx512;
  }
  return ThisIsaEngine();
}

const EngineTable& ActiveEngine() {
  static const EngineTable& engine = SelectEngine();
  return engine;
}

// The table's entries for an accumulation type.
template <typename Acc>
struct Entries;
template <>
struct Entries<float> {
  static auto Forward() { return ActiveEngine().forward_f32; }
  static auto Backward() { return ActiveEngine().backward_f32; }
};
template <>
struct Entries<double> {
  static auto Forward() { return ActiveEngine().forward_f64; }
  static auto Backward() { return ActiveEngine().backward_f64; }
};

}  // namespace

template <typename Acc>
void CircleForward(const CircleProblem<Acc>& problem, const TaskRunner& run,
                   Acc* loss, Acc* lse_pos, Acc* lse_neg) {
  Entries<Acc>::Forward()(problem, run, loss, lse_pos, lse_neg);
}

template <typename Acc>
void CircleBackward(const CircleProblem<Acc>& problem, const TaskRunner& run,
                    const Acc* grad_loss, const Acc* lse_pos,
                    const Acc* lse_neg, Acc* grad_x, Acc* grad_ref) {
  Entries<Acc>::Backward()(problem, run, grad_loss, lse_pos, lse_neg, grad_x,
                           grad_ref);
}

template void CircleForward<float>(const CircleProblem<float>&,
                                   const TaskRunner&, float*, float*, float*);
template void CircleForward<double>(const CircleProblem<double>&,
                                    const TaskRunner&, double*, double*,
                                    double*);
template void CircleBackward<float>(const CircleProblem<float>&,
                                    const TaskRunner&, const float*,
                                    const float*, const float*, float*,
                                    float*);
template void CircleBackward<double>(const CircleProblem<double>&,
                                     const TaskRunner&, const double*,
                                     const double*, const double*, double*,
                                     double*);

}  // namespace keras_margin

// For keras_margin.ops.engine_isa() (through ctypes).
extern "C" __attribute__((visibility("default"))) const char*
keras_margin_engine_isa() {
  return keras_margin::ActiveEngine().isa;
}
