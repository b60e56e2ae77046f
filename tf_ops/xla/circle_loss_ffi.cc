// XLA:CPU typed-FFI handlers of the Circle custom calls, registered for the
// "Host" platform at library load, and run on XLA's intra-op thread pool.
//
// Kept apart from circle_loss_custom_call.cc, which emits the calls: this file
// uses XLA's header-only external FFI API (xla/ffi/api/ffi.h), whose classes
// share the xla::ffi namespace and names (Buffer, AnyBuffer, ...) with XLA's
// internal FFI headers that the tf2xla headers may pull in.
//
// Why the typed FFI and not the legacy registry: XLA:CPU's thunk runtime in
// TF 2.21 still accepts API_VERSION_STATUS_RETURNING targets from
// xla::CustomCallTargetRegistry, but logs an error for every such thunk it
// builds (that API is slated for removal), and it gives them no thread pool.
// The FFI registry (xla::ffi, behind XLA_FFI_GetApi, both in
// libtensorflow_framework.so.2) is the one CustomCallThunk consults for
// API_VERSION_TYPED_FFI, and it passes the run's intra-op pool to handlers.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tf_ops/kernels/circle_loss_engine.h"
#include "tf_ops/kernels/circle_loss_labels.h"
#include "tf_ops/xla/circle_loss_custom_call.h"
#include "tsl/platform/cpu_info.h"
// The header-only FFI API warns under GCC 12 (switches over enums without a
// default return, always_inline templates); nothing there is ours to fix.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wreturn-type"
#pragma GCC diagnostic ignored "-Wattributes"
#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"
#pragma GCC diagnostic pop

namespace keras_margin {
namespace {

namespace ffi = ::xla::ffi;

// ---------------------------------------------------------------------------
// Threads.

// Blocks are always planned for the machine's schedulable CPUs, never for the
// pool at hand: the plan alone fixes every summation order, so results are
// bitwise identical across runs and intra-op thread counts, and equal to the
// CPU kernel's under op determinism (which plans for the same number).
int PlannedThreads() {
  static const int threads = std::max(1, tsl::port::MaxParallelism());
  return threads;
}

// One TaskRunner::run call shared by the calling thread and helpers scheduled
// on the pool. Every participant claims task indices until none are left, so
// the caller never waits for a task nobody has started: helpers the pool runs
// late, inline or never cannot deadlock it, even when the caller itself is a
// pool thread or every pool thread is busy in another custom call. Helpers
// hold the batch by shared_ptr because they may start after the call is over;
// they only touch `body` after claiming an index, which the caller waits for.
class Batch {
 public:
  Batch(int64_t tasks, const std::function<void(int64_t)>* body)
      : tasks_(tasks), unfinished_(tasks), body_(body) {}

  void Drain() {
    for (;;) {
      const int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
      if (t >= tasks_) return;
      // An exception (the engine's tile buffers can fail to allocate) must
      // not escape a pool thread; the first one is rethrown by the caller.
      try {
        (*body_)(t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
      }
      // acq_rel: the last finisher sees every task's writes and publishes
      // them, through the mutex, to the waiting caller.
      if (unfinished_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mu_);
        done_ = true;
        cv_.notify_all();
      }
    }
  }

  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  const int64_t tasks_;
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> unfinished_;
  const std::function<void(int64_t)>* const body_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

TaskRunner PoolRunner(ffi::ThreadPool* pool) {
  TaskRunner runner;
  runner.threads = PlannedThreads();
  // 0 when the run has no intra-op pool: everything runs on the caller.
  const int64_t workers = pool->num_threads();
  runner.run = [pool, workers](int64_t tasks,
                               const std::function<void(int64_t)>& body) {
    // The caller is one of the participants; it may or may not be a pool
    // thread, so min(workers, tasks) participants never oversubscribe the
    // pool by more than the caller.
    const int64_t helpers = std::min(workers, tasks) - 1;
    if (helpers <= 0) {
      for (int64_t t = 0; t < tasks; ++t) body(t);
      return;
    }
    auto batch = std::make_shared<Batch>(tasks, &body);
    for (int64_t h = 0; h < helpers; ++h) {
      pool->Schedule([batch] { batch->Drain(); });
    }
    batch->Drain();
    batch->Wait();
  };
  return runner;
}

// ---------------------------------------------------------------------------
// The problem as the engine takes it.

struct Attrs {
  double gamma;
  double margin;
  bool remove_diagonal;
  bool self_reference;
};

// Runtime values the engine's contract does not cover, mapped to what the HLO
// lowering computes for them, since a custom call cannot fail on data the HLO
// would accept: row i drops the pair (i, i + offset) wherever that is a
// reference, so an offset with no such pair (>= M, or <= -N) drops nothing
// and the symmetric self-reference schedule, which assumes offset 0, gives
// way to the general one over (x, x) for any other in-range offset.
struct Plan {
  bool symmetric;
  bool remove_diagonal;
  int64_t offset;
};

Plan MakePlan(const Attrs& a, int64_t n, int64_t m, int64_t offset) {
  const bool drops = a.remove_diagonal && offset < m && offset > -n;
  return {a.self_reference && (!drops || offset == 0), drops,
          drops ? offset : 0};
}

// Operands shared by both calls, as emitted by circle_loss_custom_call.cc.
struct Inputs {
  ffi::AnyBuffer x, labels, ref, ref_labels;
  int64_t offset;
};

ffi::Error CheckInputs(const Inputs& in, ffi::DataType acc) {
  const auto xd = in.x.dimensions();
  const auto rd = in.ref.dimensions();
  if (in.x.element_type() != acc || in.ref.element_type() != acc ||
      xd.size() != 2 || rd.size() != 2 || xd[1] != rd[1] ||
      in.labels.element_type() != in.ref_labels.element_type() ||
      in.labels.dimensions().size() != 1 ||
      in.ref_labels.dimensions().size() != 1 ||
      in.labels.dimensions()[0] != xd[0] ||
      in.ref_labels.dimensions()[0] != rd[0]) {
    // Only a lowering bug gets here: shapes are checked at compile time.
    return ffi::Error::InvalidArgument("Circle custom call: operand mismatch");
  }
  return ffi::Error::Success();
}

bool IsRows(const ffi::AnyBuffer& b, ffi::DataType type, int64_t rows,
            int64_t cols) {
  const auto d = b.dimensions();
  if (b.element_type() != type) return false;
  return cols < 0 ? d.size() == 1 && d[0] == rows
                  : d.size() == 2 && d[0] == rows && d[1] == cols;
}

template <typename T>
struct Tag {
  using type = T;
};

// Runs fn(Tag<Acc>, Tag<Tlabel>) for the operand types, the only ones the
// lowering emits: F32/F64 embeddings and S32/S64 labels.
template <typename Fn>
ffi::Error Dispatch(const Inputs& in, Fn&& fn) {
  const bool f64 = in.x.element_type() == ffi::DataType::F64;
  const ffi::DataType lt = in.labels.element_type();
  if (lt != ffi::DataType::S32 && lt != ffi::DataType::S64) {
    return ffi::Error::InvalidArgument("Circle custom call: label type");
  }
  const bool s64 = lt == ffi::DataType::S64;
  if (f64) {
    return s64 ? fn(Tag<double>(), Tag<int64_t>())
               : fn(Tag<double>(), Tag<int32_t>());
  }
  return s64 ? fn(Tag<float>(), Tag<int64_t>())
             : fn(Tag<float>(), Tag<int32_t>());
}

// Runs body(n, m, acc) on inputs that passed CheckInputs, for n rows of x, m
// of ref and the accumulation type acc, unless KERAS_MARGIN_ENGINE_ISA names a
// build that cannot run (the CPU kernels refuse it too). The engine may
// allocate; nothing may unwind through the C FFI boundary.
template <typename Body>
ffi::Error CheckedCall(const Inputs& in, Body&& body) {
  try {
    if (const char* error = EngineSelectionError()) {
      return ffi::Error::InvalidArgument(error);
    }
    const ffi::DataType acc = in.x.element_type();
    if (ffi::Error e = CheckInputs(in, acc); e.failure()) return e;
    return body(in.x.dimensions()[0], in.ref.dimensions()[0], acc);
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("Circle custom call: ") + e.what());
  } catch (...) {
    return ffi::Error::Internal("Circle custom call: unknown exception");
  }
}

// One call's problem for the engine, and the dense label ids it points to
// (int64 labels are compacted; int32 ones are used in place). With
// self_reference, ref is x, passed twice, and ref_labels is labels.
template <typename Acc, typename Tlabel>
struct EngineProblem {
  EngineProblem(const Inputs& in, const Attrs& a)
      : plan(MakePlan(a, in.x.dimensions()[0], in.ref.dimensions()[0],
                      in.offset)),
        ids(in.labels.typed_data<Tlabel>(), in.x.dimensions()[0],
            in.ref_labels.typed_data<Tlabel>(), in.ref.dimensions()[0],
            plan.symmetric) {
    problem.x = in.x.typed_data<Acc>();
    problem.labels = ids.query;
    problem.ref = in.ref.typed_data<Acc>();
    problem.ref_labels = ids.ref;
    problem.n = in.x.dimensions()[0];
    problem.m = in.ref.dimensions()[0];
    problem.dim = in.x.dimensions()[1];
    problem.self_reference = plan.symmetric;
    problem.gamma = a.gamma;
    problem.margin = a.margin;
    problem.remove_diagonal = plan.remove_diagonal;
    problem.diagonal_offset = plan.offset;
  }

  const Plan plan;
  const CompactLabels<Tlabel> ids;
  CircleProblem<Acc> problem;
};

// ---------------------------------------------------------------------------
// Handlers.

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                       ffi::AnyBuffer labels, ffi::AnyBuffer ref,
                       ffi::AnyBuffer ref_labels,
                       ffi::BufferR0<ffi::DataType::S64> offset,
                       ffi::Result<ffi::AnyBuffer> loss,
                       ffi::Result<ffi::AnyBuffer> lse_pos,
                       ffi::Result<ffi::AnyBuffer> lse_neg, double gamma,
                       double margin, bool remove_diagonal,
                       bool self_reference) {
  const Inputs in{x, labels, ref, ref_labels, *offset.typed_data()};
  const Attrs a{gamma, margin, remove_diagonal, self_reference};
  return CheckedCall(in, [&](int64_t n, int64_t m,
                             ffi::DataType acc) -> ffi::Error {
    if (!IsRows(*loss, acc, n, -1) || !IsRows(*lse_pos, acc, n, 2) ||
        !IsRows(*lse_neg, acc, n, 2) || (self_reference && m != n)) {
      return ffi::Error::InvalidArgument("Circle custom call: result shapes");
    }
    if (n == 0) return ffi::Error::Success();
    return Dispatch(in, [&](auto acc_tag, auto label_tag) {
      using Acc = typename decltype(acc_tag)::type;
      using Tlabel = typename decltype(label_tag)::type;
      const EngineProblem<Acc, Tlabel> call(in, a);
      ffi::ThreadPool* pool_ptr = &pool;
      CircleForward<Acc>(call.problem, PoolRunner(pool_ptr),
                         loss->typed_data<Acc>(), lse_pos->typed_data<Acc>(),
                         lse_neg->typed_data<Acc>());
      return ffi::Error::Success();
    });
  });
}

// With self_reference grad_ref has 0 rows: the lowering supplies its zeros as
// an HLO broadcast, which XLA folds into the sum TF takes of both gradients.
ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                        ffi::AnyBuffer labels, ffi::AnyBuffer ref,
                        ffi::AnyBuffer ref_labels,
                        ffi::BufferR0<ffi::DataType::S64> offset,
                        ffi::AnyBuffer grad_loss, ffi::AnyBuffer lse_pos,
                        ffi::AnyBuffer lse_neg,
                        ffi::Result<ffi::AnyBuffer> grad_x,
                        ffi::Result<ffi::AnyBuffer> grad_ref, double gamma,
                        double margin, bool remove_diagonal,
                        bool self_reference) {
  const Inputs in{x, labels, ref, ref_labels, *offset.typed_data()};
  const Attrs a{gamma, margin, remove_diagonal, self_reference};
  return CheckedCall(in, [&](int64_t n, int64_t m,
                             ffi::DataType acc) -> ffi::Error {
    const int64_t dim = x.dimensions()[1];
    if (!IsRows(grad_loss, acc, n, -1) || !IsRows(lse_pos, acc, n, 2) ||
        !IsRows(lse_neg, acc, n, 2) || !IsRows(*grad_x, acc, n, dim) ||
        !IsRows(*grad_ref, acc, self_reference ? 0 : m, dim) ||
        (self_reference && m != n)) {
      return ffi::Error::InvalidArgument("Circle custom call: result shapes");
    }
    return Dispatch(in, [&](auto acc_tag, auto label_tag) {
      using Acc = typename decltype(acc_tag)::type;
      using Tlabel = typename decltype(label_tag)::type;
      Acc* gx = grad_x->typed_data<Acc>();
      Acc* gr = grad_ref->typed_data<Acc>();
      if (n == 0) {
        std::fill(gr, gr + (self_reference ? 0 : m) * dim, Acc(0));
        return ffi::Error::Success();
      }
      const EngineProblem<Acc, Tlabel> call(in, a);
      const CircleProblem<Acc>& p = call.problem;
      ffi::ThreadPool* pool_ptr = &pool;
      const TaskRunner runner = PoolRunner(pool_ptr);
      const Acc* upstream = grad_loss.typed_data<Acc>();
      const Acc* lp = lse_pos.typed_data<Acc>();
      const Acc* ln = lse_neg.typed_data<Acc>();
      if (call.plan.symmetric) {
        CircleBackward<Acc>(p, runner, upstream, lp, ln, gx, nullptr);
      } else if (self_reference) {
        // x is both query and reference: its gradient is the sum of both.
        std::vector<Acc> as_ref(n * dim);
        CircleBackward<Acc>(p, runner, upstream, lp, ln, gx, as_ref.data());
        for (int64_t k = 0; k < n * dim; ++k) gx[k] += as_ref[k];
      } else {
        CircleBackward<Acc>(p, runner, upstream, lp, ln, gx, gr);
      }
      return ffi::Error::Success();
    });
  });
}

// Both handlers take the op's five operands first and its four attributes
// last; these keep the two bindings in step with each other and with the
// custom call that circle_loss_custom_call.cc emits.
template <typename Binding>
auto WithOperands(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()                      // x
      .template Arg<ffi::AnyBuffer>()                      // labels
      .template Arg<ffi::AnyBuffer>()                      // ref
      .template Arg<ffi::AnyBuffer>()                      // ref_labels
      .template Arg<ffi::BufferR0<ffi::DataType::S64>>();  // diagonal_offset
}

template <typename Binding>
auto WithAttrs(Binding binding) {
  return std::move(binding)
      .template Attr<double>("gamma")
      .template Attr<double>("margin")
      .template Attr<bool>("remove_diagonal")
      .template Attr<bool>("self_reference");
}

XLA_FFI_DEFINE_HANDLER(
    kCircleForward, ForwardImpl,
    WithAttrs(WithOperands(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>())
                  .Ret<ffi::AnyBuffer>()     // loss
                  .Ret<ffi::AnyBuffer>()     // lse_pos
                  .Ret<ffi::AnyBuffer>()));  // lse_neg

XLA_FFI_DEFINE_HANDLER(
    kCircleBackward, BackwardImpl,
    WithAttrs(WithOperands(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>())
                  .Arg<ffi::AnyBuffer>()     // grad_loss
                  .Arg<ffi::AnyBuffer>()     // lse_pos
                  .Arg<ffi::AnyBuffer>()     // lse_neg
                  .Ret<ffi::AnyBuffer>()     // grad_x
                  .Ret<ffi::AnyBuffer>()));  // grad_ref

// Registration happens once, at load; a failure (say, an FFI API the runtime
// does not accept) is kept so that the lowering falls back to HLO rather
// than emitting a call XLA could not resolve.
std::string RegisterHandlers() {
  const XLA_FFI_Api* api = XLA_FFI_GetApi();
  if (api == nullptr) return "XLA_FFI_GetApi() returned null";
  std::string errors;
  for (const auto& [name, handler] :
       {std::pair{kCircleForwardTarget, kCircleForward},
        std::pair{kCircleBackwardTarget, kCircleBackward}}) {
    XLA_FFI_Error* error =
        ffi::Ffi::RegisterStaticHandler(api, name, "Host", handler);
    if (error != nullptr) {
      XLA_FFI_Error_GetMessage_Args args;
      args.struct_size = XLA_FFI_Error_GetMessage_Args_STRUCT_SIZE;
      args.extension_start = nullptr;
      args.error = error;
      api->XLA_FFI_Error_GetMessage(&args);
      errors += std::string(name) + ": " + (args.message ? args.message : "?") + "; ";
      XLA_FFI_Error_Destroy_Args destroy;
      destroy.struct_size = XLA_FFI_Error_Destroy_Args_STRUCT_SIZE;
      destroy.extension_start = nullptr;
      destroy.error = error;
      api->XLA_FFI_Error_Destroy(&destroy);
    }
  }
  return errors;
}

const std::string& RegistrationErrors() {
  static const std::string* const errors = new std::string(RegisterHandlers());
  return *errors;
}

// Forces registration at load time (static init), before any compilation can
// look the targets up.
[[maybe_unused]] const bool kRegisteredAtLoad = RegistrationErrors().empty();

}  // namespace

const char* CircleFfiRegistrationError() {
  const std::string& errors = RegistrationErrors();
  return errors.empty() ? nullptr : errors.c_str();
}

}  // namespace keras_margin
