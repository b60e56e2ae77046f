// CPU kernels of KerasMargin>CircleLoss and KerasMargin>CircleLossGrad: input
// checks, dtype conversion and label compaction around the blocked engine.

#include <cstdint>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/platform/cpu_info.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tensorflow/core/util/determinism.h"
#include "tf_ops/kernels/circle_loss_engine.h"
#include "tf_ops/kernels/circle_loss_labels.h"
#include "tf_ops/kernels/circle_loss_validation.h"

namespace keras_margin {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;

// half and bfloat16 are widened to float; float and double compute natively.
template <typename T>
using AccType =
    std::conditional_t<std::is_same_v<T, double>, double, float>;

TaskRunner CpuRunner(OpKernelContext* ctx) {
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  TaskRunner runner;
  // Blocks planned for the pool's size fit it best, but would make results
  // depend on the intra-op thread count. Under op determinism they are planned
  // for the machine's schedulable CPUs instead, which is also the pool's size
  // unless set_intra_op_parallelism_threads changed it.
  runner.threads = tensorflow::OpDeterminismRequired()
                       ? tensorflow::port::MaxParallelism()
                       : pool->NumThreads();
  runner.run = [pool](int64_t num_tasks,
                      const std::function<void(int64_t)>& body) {
    if (num_tasks == 1) {
      body(0);
      return;
    }
    pool->ParallelFor(
        num_tasks, tsl::thread::ThreadPool::SchedulingParams::Fixed(1),
        [&body](int64_t begin, int64_t end) {
          for (int64_t t = begin; t < end; ++t) body(t);
        });
  };
  return runner;
}

// Embeddings as a contiguous Acc array: a view when T is already Acc, else a
// widened copy kept alive by `storage`.
template <typename T>
const AccType<T>* AsAcc(const Tensor& t, std::vector<AccType<T>>* storage) {
  const auto flat = t.flat<T>();
  if constexpr (std::is_same_v<T, AccType<T>>) {
    return flat.data();
  } else {
    storage->resize(flat.size());
    for (int64_t i = 0; i < flat.size(); ++i) {
      (*storage)[i] = static_cast<AccType<T>>(flat(i));
    }
    return storage->data();
  }
}

// CompactLabels over the two label tensors.
template <typename Tlabel>
struct TensorLabels : CompactLabels<Tlabel> {
  TensorLabels(const Tensor& labels, const Tensor& ref_labels,
               bool self_reference)
      : CompactLabels<Tlabel>(labels.flat<Tlabel>().data(), labels.NumElements(),
                              ref_labels.flat<Tlabel>().data(),
                              ref_labels.NumElements(), self_reference) {}
};

// A KERAS_MARGIN_ENGINE_ISA that cannot be honoured fails every call, so that
// no client (TF Serving included) silently runs another build than it asked for.
tensorflow::Status CheckEngineSelection() {
  const char* error = EngineSelectionError();
  return error == nullptr ? tensorflow::Status()
                          : tensorflow::errors::InvalidArgument(error);
}

template <typename T, typename Tlabel>
class CircleKernelBase : public OpKernel {
 protected:
  using Acc = AccType<T>;

  explicit CircleKernelBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadCircleAttrs(ctx, &attrs_));
  }

  // Checks diagonal_offset's shape and value; returns its value in *offset.
  tensorflow::Status ReadDiagonalOffset(const Tensor& t,
                                        int64_t* offset) const {
    TF_RETURN_IF_ERROR(ValidateDiagonalOffset(t.shape()));
    *offset = t.scalar<int64_t>()();
    return ValidateDiagonalOffsetValue(*offset, attrs_.self_reference);
  }

  CircleProblem<Acc> Problem(const Tensor& x, const Tensor& ref,
                             const CompactLabels<Tlabel>& labels,
                             int64_t diagonal_offset,
                             std::vector<Acc>* x_storage,
                             std::vector<Acc>* ref_storage) const {
    CircleProblem<Acc> p;
    p.n = x.dim_size(0);
    p.dim = x.dim_size(1);
    p.m = attrs_.self_reference ? p.n : ref.dim_size(0);
    p.x = AsAcc<T>(x, x_storage);
    p.labels = labels.query;
    p.ref = attrs_.self_reference ? p.x : AsAcc<T>(ref, ref_storage);
    p.ref_labels = labels.ref;
    p.self_reference = attrs_.self_reference;
    p.gamma = attrs_.gamma;
    p.margin = attrs_.margin;
    p.remove_diagonal = attrs_.remove_diagonal;
    p.diagonal_offset = diagonal_offset;
    return p;
  }

  CircleAttrs attrs_;
};

template <typename T, typename Tlabel>
class CircleLossOp : public CircleKernelBase<T, Tlabel> {
 public:
  using Base = CircleKernelBase<T, Tlabel>;
  using Acc = typename Base::Acc;
  explicit CircleLossOp(OpKernelConstruction* ctx) : Base(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    const Tensor& ref = ctx->input(2);
    const Tensor& ref_labels = ctx->input(3);
    OP_REQUIRES_OK(ctx, CheckEngineSelection());
    OP_REQUIRES_OK(ctx,
                   ValidateCircleInputs(x.shape(), labels.shape(), ref.shape(),
                                        ref_labels.shape(),
                                        this->attrs_.self_reference));
    int64_t offset;
    OP_REQUIRES_OK(ctx, this->ReadDiagonalOffset(ctx->input(4), &offset));
    const int64_t n = x.dim_size(0);
    Tensor *loss, *lse_pos, *lse_neg;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {n}, &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, {n, 2}, &lse_pos));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, {n, 2}, &lse_neg));
    if (n == 0) return;

    const TensorLabels<Tlabel> ids(labels, ref_labels,
                                    this->attrs_.self_reference);
    std::vector<Acc> x_storage, ref_storage;
    const CircleProblem<Acc> p =
        this->Problem(x, ref, ids, offset, &x_storage, &ref_storage);
    Acc* lp = lse_pos->flat<Acc>().data();
    Acc* ln = lse_neg->flat<Acc>().data();
    if constexpr (std::is_same_v<T, Acc>) {
      CircleForward<Acc>(p, CpuRunner(ctx), loss->flat<T>().data(), lp, ln);
    } else {
      std::vector<Acc> row_loss(n);
      CircleForward<Acc>(p, CpuRunner(ctx), row_loss.data(), lp, ln);
      auto out = loss->flat<T>();
      for (int64_t i = 0; i < n; ++i) out(i) = static_cast<T>(row_loss[i]);
    }
  }
};

template <typename T, typename Tlabel>
class CircleLossGradOp : public CircleKernelBase<T, Tlabel> {
 public:
  using Base = CircleKernelBase<T, Tlabel>;
  using Acc = typename Base::Acc;
  explicit CircleLossGradOp(OpKernelConstruction* ctx) : Base(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grad_loss = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& labels = ctx->input(2);
    const Tensor& ref = ctx->input(3);
    const Tensor& ref_labels = ctx->input(4);
    const Tensor& lse_pos = ctx->input(6);
    const Tensor& lse_neg = ctx->input(7);
    const bool self_reference = this->attrs_.self_reference;
    OP_REQUIRES_OK(ctx, CheckEngineSelection());
    OP_REQUIRES_OK(ctx, ValidateCircleInputs(x.shape(), labels.shape(),
                                             ref.shape(), ref_labels.shape(),
                                             self_reference));
    int64_t offset;
    OP_REQUIRES_OK(ctx, this->ReadDiagonalOffset(ctx->input(5), &offset));
    OP_REQUIRES_OK(ctx, ValidateCircleGradInputs(grad_loss.shape(),
                                                 lse_pos.shape(),
                                                 lse_neg.shape(), x.dim_size(0)));
    Tensor *grad_x, *grad_ref;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &grad_x));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ref.shape(), &grad_ref));
    const int64_t n = x.dim_size(0);
    const int64_t dim = x.dim_size(1);
    // Every output element is written by the engine except grad_ref with
    // self_reference, which stays zero (the caller passes x twice and TF adds
    // the two gradients).
    if (self_reference || n == 0) grad_ref->flat<T>().setZero();
    if (n == 0) {
      grad_x->flat<T>().setZero();
      return;
    }

    const TensorLabels<Tlabel> ids(labels, ref_labels, self_reference);
    std::vector<Acc> x_storage, ref_storage;
    const CircleProblem<Acc> p =
        this->Problem(x, ref, ids, offset, &x_storage, &ref_storage);
    std::vector<Acc> upstream_storage;
    const Acc* upstream = AsAcc<T>(grad_loss, &upstream_storage);
    const Acc* lp = lse_pos.flat<Acc>().data();
    const Acc* ln = lse_neg.flat<Acc>().data();
    if constexpr (std::is_same_v<T, Acc>) {
      CircleBackward<Acc>(p, CpuRunner(ctx), upstream, lp, ln,
                          grad_x->flat<T>().data(),
                          self_reference ? nullptr : grad_ref->flat<T>().data());
    } else {
      std::vector<Acc> gx(n * dim);
      std::vector<Acc> gr(self_reference ? 0 : p.m * dim);
      CircleBackward<Acc>(p, CpuRunner(ctx), upstream, lp, ln, gx.data(),
                          gr.data());
      auto out_x = grad_x->flat<T>();
      for (int64_t i = 0; i < n * dim; ++i) out_x(i) = static_cast<T>(gx[i]);
      auto out_ref = grad_ref->flat<T>();
      for (size_t i = 0; i < gr.size(); ++i) out_ref(i) = static_cast<T>(gr[i]);
    }
  }
};

#define KERAS_MARGIN_REGISTER_CIRCLE(T, Tlabel)                        \
  REGISTER_KERNEL_BUILDER(Name("KerasMargin>CircleLoss")               \
                              .Device(tensorflow::DEVICE_CPU)          \
                              .TypeConstraint<T>("T")                  \
                              .TypeConstraint<Tlabel>("Tlabel"),       \
                          CircleLossOp<T, Tlabel>);                    \
  REGISTER_KERNEL_BUILDER(Name("KerasMargin>CircleLossGrad")           \
                              .Device(tensorflow::DEVICE_CPU)          \
                              .TypeConstraint<T>("T")                  \
                              .TypeConstraint<Tlabel>("Tlabel"),       \
                          CircleLossGradOp<T, Tlabel>);

#define KERAS_MARGIN_REGISTER_CIRCLE_LABELS(T) \
  KERAS_MARGIN_REGISTER_CIRCLE(T, int32_t)     \
  KERAS_MARGIN_REGISTER_CIRCLE(T, int64_t)

KERAS_MARGIN_REGISTER_CIRCLE_LABELS(Eigen::half)
KERAS_MARGIN_REGISTER_CIRCLE_LABELS(Eigen::bfloat16)
KERAS_MARGIN_REGISTER_CIRCLE_LABELS(float)
KERAS_MARGIN_REGISTER_CIRCLE_LABELS(double)

#undef KERAS_MARGIN_REGISTER_CIRCLE_LABELS
#undef KERAS_MARGIN_REGISTER_CIRCLE

}  // namespace
}  // namespace keras_margin
