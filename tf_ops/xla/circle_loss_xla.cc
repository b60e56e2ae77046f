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

#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/kernel_def.pb.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tf_ops/kernels/circle_loss_validation.h"
#include "tf_ops/xla/circle_loss_blocked_hlo.h"
#include "tf_ops/xla/circle_loss_custom_call.h"

namespace keras_margin {
namespace {

using ::tensorflow::OpKernelConstruction;
using ::tensorflow::XlaOpKernel;
using ::tensorflow::XlaOpKernelContext;

bool OnCpu(OpKernelConstruction* ctx) {
  return ctx->device_type() ==
         tensorflow::DeviceType(tensorflow::DEVICE_CPU_XLA_JIT);
}

// The operands at inputs first .. first + 4: embeddings, labels,
// ref_embeddings, ref_labels, diagonal_offset.
CircleXlaOperands Operands(XlaOpKernelContext* ctx, int first, bool on_cpu) {
  CircleXlaOperands in;
  in.x = ctx->Input(first);
  in.labels = ctx->Input(first + 1);
  in.ref = ctx->Input(first + 2);
  in.ref_labels = ctx->Input(first + 3);
  in.diagonal_offset = ctx->Input(first + 4);
  in.n = ctx->InputShape(first).dim_size(0);
  in.m = ctx->InputShape(first + 2).dim_size(0);
  in.dim = ctx->InputShape(first).dim_size(1);
  in.type = ctx->input_xla_type(first);
  in.label_type = ctx->input_xla_type(first + 1);
  in.tile_budget_bytes =
      on_cpu ? kCpuTileBudgetBytes : kAcceleratorTileBudgetBytes;
  return in;
}

class CircleLossXlaOp : public XlaOpKernel {
 public:
  explicit CircleLossXlaOp(OpKernelConstruction* ctx)
      : XlaOpKernel(ctx), on_cpu_(OnCpu(ctx)) {
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
    const CircleXlaForward out = EmitBlockedCircleForward(
        ctx->builder(), attrs_, Operands(ctx, 0, on_cpu_));
    ctx->SetOutput(0, out.loss);
    ctx->SetOutput(1, out.lse_pos);
    ctx->SetOutput(2, out.lse_neg);
  }

 private:
  CircleAttrs attrs_;
  const bool on_cpu_;
};

class CircleLossGradXlaOp : public XlaOpKernel {
 public:
  explicit CircleLossGradXlaOp(OpKernelConstruction* ctx)
      : XlaOpKernel(ctx), on_cpu_(OnCpu(ctx)) {
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
    const CircleXlaBackward out = EmitBlockedCircleBackward(
        ctx->builder(), attrs_, Operands(ctx, 1, on_cpu_), ctx->Input(0),
        ctx->Input(6), ctx->Input(7));
    ctx->SetOutput(0, out.grad_x);
    ctx->SetOutput(1, out.grad_ref);
  }

 private:
  CircleAttrs attrs_;
  const bool on_cpu_;
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
