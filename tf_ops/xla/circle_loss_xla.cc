// XLA lowerings of KerasMargin>CircleLoss and KerasMargin>CircleLossGrad, so
// that the ops compile under tf.function(jit_compile=True) on every XLA
// backend of the wheel (XLA_CPU_JIT, XLA_GPU_JIT).
//
// The lowering is plain HLO and materialises the N x M similarity matrix and
// a few element-wise temporaries of the same size: O(N*M) memory, like the
// unfused Keras graph. XLA fuses the element-wise chain and the reductions;
// the blocked O(N) memory scheme is specific to the CPU kernels.

#include <limits>
#include <string>
#include <vector>

#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/kernel_def.pb.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_ops/kernels/circle_loss_validation.h"
#include "tf_ops/xla/circle_loss_custom_call.h"
#include "xla/hlo/builder/lib/arithmetic.h"
#include "xla/hlo/builder/lib/constants.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape_util.h"

namespace keras_margin {
namespace {

using ::tensorflow::OpKernelConstruction;
using ::tensorflow::XlaOpKernel;
using ::tensorflow::XlaOpKernelContext;

// The logits of every (i, j) pair and the masks they were selected with.
// Inputs start at `first`: embeddings, labels, ref_embeddings, ref_labels,
// diagonal_offset.
struct CircleGraph {
  CircleGraph(XlaOpKernelContext* ctx, const CircleAttrs& attrs, int first)
      : b(ctx->builder()),
        acc(ctx->input_type(first) == tensorflow::DT_DOUBLE ? xla::F64
                                                            : xla::F32) {
    const int ref_input = attrs.self_reference ? first : first + 2;
    x = xla::ConvertElementType(ctx->Input(first), acc);
    ref = attrs.self_reference
              ? x
              : xla::ConvertElementType(ctx->Input(ref_input), acc);
    n = ctx->InputShape(first).dim_size(0);
    m = ctx->InputShape(ref_input).dim_size(0);
    const xla::XlaOp labels = ctx->Input(first + 1);
    const xla::XlaOp ref_labels = ctx->Input(ref_input + 1);

    xla::DotDimensionNumbers dims;
    dims.add_lhs_contracting_dimensions(1);
    dims.add_rhs_contracting_dimensions(1);
    const xla::XlaOp s = xla::DotGeneral(x, ref, dims, nullptr, acc);
    const xla::XlaOp zero = Scalar(0.0);
    u = xla::Sub(Scalar(1.0), s);
    d = xla::Max(u, zero);
    const xla::XlaOp same =
        xla::Eq(xla::BroadcastInDim(labels, {n, m}, {0}),
                xla::BroadcastInDim(ref_labels, {n, m}, {1}));
    pos = same;
    if (attrs.remove_diagonal) {
      // Row i drops reference i + diagonal_offset. XLA cannot raise at run
      // time; an offset beyond the references drops nothing.
      const xla::Shape index = xla::ShapeUtil::MakeShape(xla::S64, {n, m});
      const xla::XlaOp excluded =
          xla::Add(xla::Iota(b, index, 0), ctx->Input(first + 4), {});
      pos = xla::And(same, xla::Ne(excluded, xla::Iota(b, index, 1)));
    }
    neg = xla::Not(same);
    // Same constants and evaluation order as keras.losses.circle.
    const double g = attrs.gamma;
    const double mg = attrs.margin;
    up = xla::Add(Scalar(mg), d);
    un = xla::Sub(Scalar(1.0 + mg), d);
    dp = xla::Sub(Scalar(mg), d);
    dn = xla::Sub(Scalar(1.0 - mg), d);
    const xla::XlaOp lp =
        xla::Mul(xla::Mul(Scalar(-g), xla::Max(up, zero)), dp);
    const xla::XlaOp ln = xla::Mul(xla::Mul(Scalar(g), xla::Max(un, zero)), dn);
    logits = xla::Select(pos, lp, ln);
    neg_gamma = Scalar(-g);
  }

  xla::XlaOp Scalar(double v) const {
    return xla::ConstantR0WithType(b, acc, v);
  }
  xla::XlaOp Full(double v) const { return xla::Broadcast(Scalar(v), {n, m}); }

  // Row-wise log-sum-exp over the pairs in `mask`; -inf for an empty row.
  xla::XlaOp Lse(const xla::XlaOp& mask) const {
    const double inf = std::numeric_limits<double>::infinity();
    const xla::XlaOp masked = xla::Select(mask, logits, Full(-inf));
    const xla::XlaOp max = xla::Reduce(masked, Scalar(-inf),
                                       xla::CreateScalarMaxComputation(acc, b),
                                       {1});
    const xla::XlaOp shift =
        xla::Select(xla::IsFinite(max), max, xla::ZerosLike(max));
    const xla::XlaOp sum = xla::Reduce(
        xla::Exp(xla::Sub(masked, shift, {0})), Scalar(0.0),
        xla::CreateScalarAddComputation(acc, b), {1});
    return xla::Add(xla::Log(sum), shift);
  }

  xla::XlaBuilder* b;
  xla::PrimitiveType acc;
  int64_t n = 0, m = 0;
  xla::XlaOp x, ref, u, d, pos, neg, up, un, dp, dn, logits, neg_gamma;
};

class CircleLossXlaOp : public XlaOpKernel {
 public:
  explicit CircleLossXlaOp(OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadCircleAttrs(ctx, &attrs_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    OP_REQUIRES_OK(ctx, ValidateCircleInputs(
                            ctx->InputShape(0), ctx->InputShape(1),
                            ctx->InputShape(2), ctx->InputShape(3),
                            attrs_.self_reference));
    OP_REQUIRES_OK(ctx, ValidateDiagonalOffset(ctx->InputShape(4)));
    if (UseCpuCustomCall(ctx)) {
      EmitCpuCircleLoss(ctx, attrs_);
      return;
    }
    const CircleGraph g(ctx, attrs_, 0);
    const xla::XlaOp lse_pos = g.Lse(g.pos);
    const xla::XlaOp lse_neg = g.Lse(g.neg);
    const xla::XlaOp z = xla::Add(lse_pos, lse_neg);
    // Stable softplus; z = -inf (an empty set) gives exactly 0.
    const xla::XlaOp loss =
        xla::Add(xla::Max(z, g.Scalar(0.0)),
                 xla::Log1p(xla::Exp(xla::Neg(xla::Abs(z)))));
    ctx->SetOutput(0, xla::ConvertElementType(loss, ctx->output_xla_type(0)));
    ctx->SetOutput(1, lse_pos);
    ctx->SetOutput(2, lse_neg);
  }

 private:
  CircleAttrs attrs_;
};

class CircleLossGradXlaOp : public XlaOpKernel {
 public:
  explicit CircleLossGradXlaOp(OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadCircleAttrs(ctx, &attrs_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    OP_REQUIRES_OK(ctx, ValidateCircleInputs(
                            ctx->InputShape(1), ctx->InputShape(2),
                            ctx->InputShape(3), ctx->InputShape(4),
                            attrs_.self_reference));
    OP_REQUIRES_OK(ctx, ValidateDiagonalOffset(ctx->InputShape(5)));
    OP_REQUIRES_OK(ctx, ValidateCircleGradInputs(
                            ctx->InputShape(0), ctx->InputShape(6),
                            ctx->InputShape(7), ctx->InputShape(1).dim_size(0)));
    if (UseCpuCustomCall(ctx)) {
      EmitCpuCircleLossGrad(ctx, attrs_);
      return;
    }
    const CircleGraph g(ctx, attrs_, 1);
    const double inf = std::numeric_limits<double>::infinity();
    const xla::XlaOp zero = g.Scalar(0.0);
    const xla::XlaOp lse_pos = ctx->Input(6);
    const xla::XlaOp lse_neg = ctx->Input(7);
    const xla::XlaOp scale =
        xla::Mul(xla::ConvertElementType(ctx->Input(0), g.acc),
                 xla::Logistic(xla::Add(lse_pos, lse_neg)));
    // +inf for an empty set, so exp(logit - ref) is 0 instead of NaN.
    auto reference = [&](const xla::XlaOp& lse) {
      const xla::XlaOp safe = xla::Select(xla::IsFinite(lse), lse,
                                          xla::Broadcast(g.Scalar(inf), {g.n}));
      return xla::BroadcastInDim(safe, {g.n, g.m}, {0});
    };
    const xla::XlaOp softmax = xla::Exp(xla::Sub(
        g.logits, xla::Select(g.pos, reference(lse_pos), reference(lse_neg))));
    const xla::XlaOp weight = xla::Mul(softmax, scale, {0});
    const xla::XlaOp slope_pos =
        xla::Sub(xla::Select(xla::Ge(g.up, zero), g.dp, g.Full(0.0)),
                 xla::Max(g.up, zero));
    const xla::XlaOp slope_neg =
        xla::Add(xla::Select(xla::Ge(g.un, zero), g.dn, g.Full(0.0)),
                 xla::Max(g.un, zero));
    const xla::XlaOp slope =
        xla::Mul(g.neg_gamma, xla::Select(g.pos, slope_pos, slope_neg));
    const xla::XlaOp active =
        xla::And(xla::Or(g.pos, g.neg), xla::Ge(g.u, zero));
    const xla::XlaOp grad_s = xla::Select(
        active, xla::Neg(xla::Mul(weight, slope)), g.Full(0.0));

    xla::DotDimensionNumbers rows;
    rows.add_lhs_contracting_dimensions(1);
    rows.add_rhs_contracting_dimensions(0);
    xla::DotDimensionNumbers cols;
    cols.add_lhs_contracting_dimensions(0);
    cols.add_rhs_contracting_dimensions(0);
    xla::XlaOp grad_x = xla::DotGeneral(grad_s, g.ref, rows, nullptr, g.acc);
    xla::XlaOp grad_ref = xla::DotGeneral(grad_s, g.x, cols, nullptr, g.acc);
    if (attrs_.self_reference) {
      grad_x = xla::Add(grad_x, grad_ref);
      grad_ref = xla::ZerosLike(grad_ref);
    }
    const xla::PrimitiveType out = ctx->output_xla_type(0);
    ctx->SetOutput(0, xla::ConvertElementType(grad_x, out));
    ctx->SetOutput(1, xla::ConvertElementType(grad_ref, out));
  }

 private:
  CircleAttrs attrs_;
};

REGISTER_XLA_OP(Name("KerasMargin>CircleLoss"), CircleLossXlaOp);
REGISTER_XLA_OP(Name("KerasMargin>CircleLossGrad"), CircleLossGradXlaOp);

template <typename Kernel>
tensorflow::OpKernel* CreateKernel(OpKernelConstruction* ctx) {
  return new Kernel(ctx);
}

// XlaOpRegistry::RegisterCompilationKernels() turns REGISTER_XLA_OP entries
// into JIT kernels only once per process, at the first XLA compilation. If
// that already happened before this library was loaded, our entries above
// would never become kernels and jit_compile=True would report the ops as
// unsupported, so the JIT kernels are registered here directly instead.
bool RegisterJitKernelsIfAlreadyFrozen() {
  const std::string add_kernels = tensorflow::KernelsRegisteredForOp("Add");
  if (add_kernels.find(tensorflow::DEVICE_CPU_XLA_JIT) == std::string::npos) {
    return false;
  }
  const struct {
    const char* op;
    tensorflow::XlaOpRegistry::Factory factory;
  } kOps[] = {
      {"KerasMargin>CircleLoss", &CreateKernel<CircleLossXlaOp>},
      {"KerasMargin>CircleLossGrad", &CreateKernel<CircleLossGradXlaOp>},
  };
  for (const std::string& backend : tensorflow::XlaOpRegistry::BackendNames()) {
    for (const auto& entry : kOps) {
      auto* kdef = new tensorflow::KernelDef;
      kdef->set_op(entry.op);
      kdef->set_device_type(backend);
      auto* types =
          kdef->add_constraint()->mutable_allowed_values()->mutable_list();
      kdef->mutable_constraint(0)->set_name("T");
      for (tensorflow::DataType t :
           {tensorflow::DT_HALF, tensorflow::DT_BFLOAT16, tensorflow::DT_FLOAT,
            tensorflow::DT_DOUBLE}) {
        types->add_type(t);
      }
      // Registrations live for the whole process, like TF's own.
      new tensorflow::kernel_factory::OpKernelRegistrar(kdef, "XlaJitOp",
                                                        entry.factory);
    }
  }
  return true;
}

[[maybe_unused]] const bool kJitKernelsRegistered =
    RegisterJitKernelsIfAlreadyFrozen();

}  // namespace
}  // namespace keras_margin
