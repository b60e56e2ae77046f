// The engine's public entry points in the op library: each call goes to the
// AVX-512 build of the engine where the CPU has AVX-512 and the library
// _circle_engine_avx512.so beside this one loads, and to this library's own
// baseline build otherwise. KERAS_MARGIN_ENGINE_ISA, read once at the first
// call, names the build to run instead (for tests and side-by-side
// benchmarks); a name that is not a build, or a build that cannot run here, is
// an error that the kernels report, never a reason to run another build.

#include <dlfcn.h>

#include <cstdlib>
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

// The AVX-512 engine, or nullptr with the reason in *why.
const EngineTable* LoadAvx512Engine(std::string* why) {
  const std::string dir = ThisLibraryDirectory();
  if (dir.empty()) {
    *why = "the folder of the op library could not be found";
    return nullptr;
  }
  const std::string path = dir + "/_circle_engine_avx512.so";
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* error = dlerror();
    *why = error == nullptr ? path + " did not load" : error;
    return nullptr;
  }
  using Entry = const EngineTable* (*)();
  auto entry = reinterpret_cast<Entry>(dlsym(handle, kEngineTableSymbol));
  const EngineTable* table = entry == nullptr ? nullptr : entry();
  if (table == nullptr || table->abi != kEngineAbi) {
    dlclose(handle);
    *why = path + " was built from other sources than the op library; " +
           "rebuild both";
    return nullptr;
  }
  return table;  // Kept loaded for the life of the process.
}

// The engine to run, or nullptr and why KERAS_MARGIN_ENGINE_ISA cannot be
// honoured.
struct Selection {
  const EngineTable* engine = nullptr;
  std::string error;
};

Selection SelectEngine() {
  const EngineTable& own = ThisIsaEngine();
  const char* requested = std::getenv("KERAS_MARGIN_ENGINE_ISA");
  std::string why;
  if (requested == nullptr) {
    if (CpuHasAvx512()) {
      if (const EngineTable* avx512 = LoadAvx512Engine(&why)) return {avx512};
    }
    return {&own};
  }
  const std::string name = requested;
  if (name == "baseline" || name == own.isa) return {&own};
  const std::string setting = "KERAS_MARGIN_ENGINE_ISA='" + name + "'";
  const std::string baseline =
      std::string("'baseline' (the op library's own build: ") + own.isa + ")";
  if (name == "avx512") {
    if (!CpuHasAvx512()) {
      return {nullptr, setting +
                           " asks for the avx512 build of the engine, which "
                           "cannot run on this CPU: it lacks AVX-512 (F, DQ, "
                           "BW and VL are needed). Unset it, or set it to " +
                           baseline + "."};
    }
    if (const EngineTable* avx512 = LoadAvx512Engine(&why)) return {avx512};
    return {nullptr, setting +
                         " asks for the avx512 build of the engine, which did "
                         "not load: " +
                         why + "."};
  }
  if (name == "avx2" || name == "portable") {
    return {nullptr,
            setting + " asks for the " + name +
                " build of the engine, which cannot run here: the op library "
                "was built as " + own.isa +
                " (setup.py's KERAS_MARGIN_ARCH_FLAGS chooses its build; "
                "avx512 is built beside it on x86-64). Unset it, or set it "
                "to " + baseline + "."};
  }
  return {nullptr,
          setting + " is not an engine; expected 'avx512', 'avx2' or "
                    "'portable' (a build, as keras_margin.ops.engine_isa() "
                    "names it) or " +
              baseline + ", or leave it unset for the fastest build this "
                         "CPU runs."};
}

const Selection& ActiveSelection() {
  static const Selection selection = SelectEngine();
  return selection;
}

// Only called once the kernel has checked EngineSelectionError().
const EngineTable& ActiveEngine() { return *ActiveSelection().engine; }

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

const char* EngineSelectionError() {
  const Selection& selection = ActiveSelection();
  return selection.engine == nullptr ? selection.error.c_str() : nullptr;
}

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

// For keras_margin.ops (through ctypes): the selection's error, checked when
// the library loads, then engine_isa()'s answer.
extern "C" __attribute__((visibility("default"))) const char*
keras_margin_engine_selection_error() {
  return keras_margin::EngineSelectionError();
}

extern "C" __attribute__((visibility("default"))) const char*
keras_margin_engine_isa() {
  const keras_margin::EngineTable* engine =
      keras_margin::ActiveSelection().engine;
  return engine == nullptr ? nullptr : engine->isa;
}
