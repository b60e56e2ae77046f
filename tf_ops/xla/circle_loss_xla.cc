// XLA lowerings of KerasMargin>CircleLoss and KerasMargin>CircleLossGrad, so
// that the ops compile under tf.function(jit_compile=True) on every XLA
// backend of the wheel (XLA_CPU_JIT, XLA_GPU_JIT).
//
// Compile() validates the static shapes (XLA cannot raise at run time) and
// hands the operands to an emitter: on XLA:CPU a custom call into the blocked
// CPU engine (circle_loss_custom_call.h), elsewhere, or when
// KERAS_MARGIN_XLA_BLOCKED_HLO=1, the blocked HLO of circle_loss_blocked_hlo.h,
// whose While loops over reference tiles keep memory at O((N + M) * D + N * B).

#include <string>

#include "absl/status/status.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/kernel_def.pb.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_ops/kernels/circle_loss_validation.h"
#include "tf_ops/xla/circle_loss_blocked_hlo.h"
#include "tf_ops/xla/circle_loss_custom_call.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape.h"
#include "xla/tsl/platform/statusor.h"

namespace keras_margin {
namespace {

using ::tensorflow::OpKernelConstruction;
using ::tensorflow::XlaOpKernel;
using ::tensorflow::XlaOpKernelContext;

// Input `index` with a static shape. A bounded-dynamic first dimension is
// padded to its bound by XLA; its run-time size goes to *rows (s64) when rows
// is given. Only rows may vary: a dynamic column count has no padding the
// emitters could mask.
absl::Status StaticInput(XlaOpKernelContext* ctx, int index, xla::XlaOp* op,
                         xla::XlaOp* rows = nullptr) {
  *op = ctx->Input(index);
  TF_ASSIGN_OR_RETURN(const xla::Shape shape, ctx->InputXlaShape(index));
  for (int k = 1; k < shape.dimensions().size(); ++k) {
    if (shape.is_dynamic_dimension(k)) {
      return absl::InvalidArgumentError(
          "Circle under XLA: the embeddings' dimension D must be static, got "
          "the shape " + shape.ToString());
    }
  }
  if (!shape.dimensions().empty() && shape.is_dynamic_dimension(0)) {
    if (rows != nullptr) {
      *rows = xla::ConvertElementType(xla::GetDimensionSize(*op, 0), xla::S64);
    }
    *op = xla::RemoveDynamicDimension(*op, 0);
  }
  return absl::OkStatus();
}

// The operands at inputs first .. first + 4: embeddings, labels,
// ref_embeddings, ref_labels, diagonal_offset.
absl::Status Operands(XlaOpKernelContext* ctx, int first,
                      CircleXlaOperands* out) {
  CircleXlaOperands& in = *out;
  TF_RETURN_IF_ERROR(StaticInput(ctx, first, &in.x, &in.n_rows));
  TF_RETURN_IF_ERROR(StaticInput(ctx, first + 1, &in.labels));
  TF_RETURN_IF_ERROR(StaticInput(ctx, first + 2, &in.ref, &in.m_rows));
  TF_RETURN_IF_ERROR(StaticInput(ctx, first + 3, &in.ref_labels));
  in.diagonal_offset = ctx->Input(first + 4);
  in.n = ctx->InputShape(first).dim_size(0);
  in.m = ctx->InputShape(first + 2).dim_size(0);
  in.dim = ctx->InputShape(first).dim_size(1);
  in.type = ctx->input_xla_type(first);
  in.label_type = ctx->input_xla_type(first + 1);
  in.tile_budget_bytes = CompilingForXlaCpu(ctx) ? kCpuTileBudgetBytes
                                                 : kAcceleratorTileBudgetBytes;
  return absl::OkStatus();
}

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
    CircleXlaOperands in;
    OP_REQUIRES_OK(ctx, Operands(ctx, 0, &in));
    const CircleXlaForward out =
        EmitBlockedCircleForward(ctx->builder(), attrs_, in);
    ctx->SetOutput(0, out.loss);
    ctx->SetOutput(1, out.lse_pos);
    ctx->SetOutput(2, out.lse_neg);
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
    CircleXlaOperands in;
    OP_REQUIRES_OK(ctx, Operands(ctx, 1, &in));
    xla::XlaOp grad_loss, lse_pos, lse_neg;
    OP_REQUIRES_OK(ctx, StaticInput(ctx, 0, &grad_loss));
    OP_REQUIRES_OK(ctx, StaticInput(ctx, 6, &lse_pos));
    OP_REQUIRES_OK(ctx, StaticInput(ctx, 7, &lse_neg));
    const CircleXlaBackward out = EmitBlockedCircleBackward(
        ctx->builder(), attrs_, in, grad_loss, lse_pos, lse_neg);
    ctx->SetOutput(0, out.grad_x);
    ctx->SetOutput(1, out.grad_ref);
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
