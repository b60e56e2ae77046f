// On XLA:CPU the Circle ops lower to a typed-FFI custom call into the blocked
// CPU engine (tf_ops/kernels/circle_loss_engine.h) instead of HLO: the engine
// is faster than any HLO lowering there and keeps O(N) memory.

#ifndef KERAS_MARGIN_TF_OPS_XLA_CIRCLE_LOSS_CUSTOM_CALL_H_
#define KERAS_MARGIN_TF_OPS_XLA_CIRCLE_LOSS_CUSTOM_CALL_H_

namespace tensorflow {
class XlaOpKernelContext;
}  // namespace tensorflow

namespace keras_margin {

struct CircleAttrs;

// The FFI target names, also what the compiled HLO shows.
inline constexpr char kCircleForwardTarget[] = "keras_margin_circle_loss";
inline constexpr char kCircleBackwardTarget[] = "keras_margin_circle_loss_grad";

// Why registering the FFI handlers at load failed, or null when they are
// registered (circle_loss_ffi.cc).
const char* CircleFfiRegistrationError();

// True when `ctx` is compiling for XLA_CPU_JIT.
bool CompilingForXlaCpu(tensorflow::XlaOpKernelContext* ctx);

// True when compiling for XLA_CPU_JIT with static input shapes, the FFI
// handlers registered at load time, and KERAS_MARGIN_XLA_BLOCKED_HLO (read at
// each compilation; tests set it to "1" to force the HLO lowering on CPU) is
// not "1".
bool UseCpuCustomCall(tensorflow::XlaOpKernelContext* ctx);

// Emit the custom call and set every output of KerasMargin>CircleLoss /
// KerasMargin>CircleLossGrad. Inputs must already be validated.
void EmitCpuCircleLoss(tensorflow::XlaOpKernelContext* ctx,
                       const CircleAttrs& attrs);
void EmitCpuCircleLossGrad(tensorflow::XlaOpKernelContext* ctx,
                           const CircleAttrs& attrs);

}  // namespace keras_margin

#endif  // KERAS_MARGIN_TF_OPS_XLA_CIRCLE_LOSS_CUSTOM_CALL_H_
