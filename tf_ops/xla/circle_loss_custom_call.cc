// Emits the XLA:CPU custom calls into the blocked engine; the handlers they
// name live in circle_loss_ffi.cc.

#include "tf_ops/xla/circle_loss_custom_call.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "tensorflow/compiler/tf2xla/xla_compiler.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/platform/logging.h"
#include "tf_ops/kernels/circle_loss_validation.h"
#include "xla/hlo/builder/lib/constants.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape.h"
#include "xla/shape_util.h"

namespace keras_margin {
namespace {

using ::tensorflow::XlaOpKernelContext;

// Row-major, as the engine reads and writes its arrays; fixing the layout
// here is what makes XLA hand over (and accept back) exactly that.
xla::Shape RowMajor(xla::PrimitiveType type,
                    std::vector<int64_t> dimensions) {
  return xla::ShapeUtil::MakeShapeWithDescendingLayout(type, dimensions);
}

// A double as the MLIR literal of its bits: the FFI attributes are parsed
// from this text, and the hexadecimal form round-trips every double exactly.
std::string F64Literal(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return absl::StrFormat("0x%016X : f64", bits);
}

// The typed-FFI attributes, as the MLIR dictionary XLA:CPU parses.
std::string Attributes(const CircleAttrs& attrs) {
  return absl::StrFormat(
      "{gamma = %s, margin = %s, remove_diagonal = %s, self_reference = %s}",
      F64Literal(attrs.gamma), F64Literal(attrs.margin),
      attrs.remove_diagonal ? "true" : "false",
      attrs.self_reference ? "true" : "false");
}

// The operands both calls start with: embeddings and references converted to
// the accumulation type (half and bfloat16 are widened to float in HLO, which
// is exact), labels as they are, and the runtime diagonal offset. With
// self_reference the embeddings and labels stand in for the references.
struct Common {
  Common(XlaOpKernelContext* ctx, const CircleAttrs& attrs, int first)
      : acc(ctx->input_type(first) == tensorflow::DT_DOUBLE ? xla::F64
                                                            : xla::F32) {
    const int ref_input = attrs.self_reference ? first : first + 2;
    const tensorflow::TensorShape x_shape = ctx->InputShape(first);
    n = x_shape.dim_size(0);
    dim = x_shape.dim_size(1);
    m = ctx->InputShape(ref_input).dim_size(0);
    const xla::PrimitiveType label = ctx->input_xla_type(first + 1);
    const xla::XlaOp x = xla::ConvertElementType(ctx->Input(first), acc);
    const xla::XlaOp ref =
        attrs.self_reference
            ? x
            : xla::ConvertElementType(ctx->Input(ref_input), acc);
    operands = {x, ctx->Input(first + 1), ref, ctx->Input(ref_input + 1),
                ctx->Input(first + 4)};
    shapes = {RowMajor(acc, {n, dim}), RowMajor(label, {n}),
              RowMajor(acc, {m, dim}), RowMajor(label, {m}),
              RowMajor(xla::S64, {})};
  }

  void Add(const xla::XlaOp& op, const xla::Shape& shape) {
    operands.push_back(op);
    shapes.push_back(shape);
  }

  xla::PrimitiveType acc;
  int64_t n = 0, m = 0, dim = 0;
  std::vector<xla::XlaOp> operands;
  std::vector<xla::Shape> shapes;
};

xla::XlaOp Call(XlaOpKernelContext* ctx, const char* target,
                const Common& c, const xla::Shape& result,
                const CircleAttrs& attrs) {
  return xla::CustomCallWithLayout(
      ctx->builder(), target, c.operands, result, c.shapes, Attributes(attrs),
      /*has_side_effect=*/false, /*output_operand_aliasing=*/{},
      /*literal=*/nullptr, xla::CustomCallSchedule::SCHEDULE_NONE,
      xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
}

}  // namespace

bool CompilingForXlaCpu(XlaOpKernelContext* ctx) {
  const tensorflow::XlaCompiler* compiler = ctx->compiler();
  return compiler != nullptr &&
         compiler->options().device_type ==
             tensorflow::DeviceType(tensorflow::DEVICE_CPU_XLA_JIT);
}

bool UseCpuCustomCall(XlaOpKernelContext* ctx) {
  if (!CompilingForXlaCpu(ctx)) return false;
  // XLA's dynamic padder cannot give a custom call bounded dynamic
  // dimensions (say, rows picked by tf.boolean_mask); the HLO lowering
  // handles them.
  for (int i = 0; i < ctx->num_inputs(); ++i) {
    const absl::StatusOr<xla::Shape> shape = ctx->InputXlaShape(i);
    if (!shape.ok() || !shape->is_static()) return false;
  }
  const char* force_hlo = std::getenv("KERAS_MARGIN_XLA_BLOCKED_HLO");
  if (force_hlo != nullptr && std::string_view(force_hlo) == "1") return false;
  if (const char* error = CircleFfiRegistrationError()) {
    LOG_FIRST_N(WARNING, 1)
        << "keras_margin: the Circle XLA:CPU custom call is not registered ("
        << error << "); compiling the HLO lowering instead";
    return false;
  }
  return true;
}

void EmitCpuCircleLoss(XlaOpKernelContext* ctx, const CircleAttrs& attrs) {
  const Common c(ctx, attrs, 0);
  const xla::Shape lse = RowMajor(c.acc, {c.n, 2});
  const xla::XlaOp call = Call(
      ctx, kCircleForwardTarget, c,
      xla::ShapeUtil::MakeTupleShape({RowMajor(c.acc, {c.n}), lse, lse}),
      attrs);
  ctx->SetOutput(0, xla::ConvertElementType(xla::GetTupleElement(call, 0),
                                            ctx->output_xla_type(0)));
  ctx->SetOutput(1, xla::GetTupleElement(call, 1));
  ctx->SetOutput(2, xla::GetTupleElement(call, 2));
}

void EmitCpuCircleLossGrad(XlaOpKernelContext* ctx,
                           const CircleAttrs& attrs) {
  Common c(ctx, attrs, 1);
  c.Add(xla::ConvertElementType(ctx->Input(0), c.acc), RowMajor(c.acc, {c.n}));
  c.Add(ctx->Input(6), RowMajor(c.acc, {c.n, 2}));
  c.Add(ctx->Input(7), RowMajor(c.acc, {c.n, 2}));
  // With self_reference the call writes the whole gradient to grad_x and its
  // grad_ref has no rows; the zeros the op returns there are an HLO
  // broadcast, which XLA folds into the sum TF takes of the two gradients.
  const int64_t ref_rows = attrs.self_reference ? 0 : c.m;
  const xla::XlaOp call = Call(
      ctx, kCircleBackwardTarget, c,
      xla::ShapeUtil::MakeTupleShape(
          {RowMajor(c.acc, {c.n, c.dim}), RowMajor(c.acc, {ref_rows, c.dim})}),
      attrs);
  const xla::PrimitiveType out = ctx->output_xla_type(0);
  ctx->SetOutput(0, xla::ConvertElementType(xla::GetTupleElement(call, 0), out));
  ctx->SetOutput(
      1, attrs.self_reference
             ? xla::Broadcast(xla::Zero(ctx->builder(), out), {c.m, c.dim})
             : xla::ConvertElementType(xla::GetTupleElement(call, 1), out));
}

}  // namespace keras_margin
