// Blocked HLO for KerasMargin>CircleLoss and KerasMargin>CircleLossGrad.
//
// Both passes are XLA While loops over column tiles of the reference set: each
// iteration forms the [N, B] similarity tile with one dot, folds it into
// per-row running state and drops it. No N x M value is ever live, so memory
// is O((N + M) * D + N * B) on every backend, where the plain lowering needed
// O(N * M). The backward pass recomputes the tiles from the saved per-row
// log-sum-exps, as the CPU engine does.
//
// In self-reference mode the similarity matrix is symmetric, and the CPU
// engine computes each off-diagonal tile once for both of its row blocks.
// That saving is not used here: it needs 2-D [B, B] tiles on a triangular
// schedule, whose small dots leave GPU/TPU matrix units idle, while 1-D
// column tiles keep every dot [N, D] x [D, B] large.
//
// These functions only build HLO; the XlaOpKernels validate their inputs and
// call them from Compile(). They have no tf2xla dependency, so another
// emitter (a custom call into the CPU engine) can sit beside them.

#ifndef KERAS_MARGIN_TF_OPS_XLA_CIRCLE_LOSS_BLOCKED_HLO_H_
#define KERAS_MARGIN_TF_OPS_XLA_CIRCLE_LOSS_BLOCKED_HLO_H_

#include <cstdint>

#include "tf_ops/kernels/circle_loss_validation.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/xla_data.pb.h"

namespace keras_margin {

// Budgets for the live [n, B] temporaries of one loop iteration; see
// CircleTileWidth. On GPU/TPU a tile lives in device memory and wide tiles
// keep the matrix units busy. On CPU the fused element-wise passes run
// fastest on tiles that stay in cache: at n = 4096 (D = 128) 128-wide tiles
// made the whole step 15-20% faster than 1024-wide ones.
constexpr int64_t kAcceleratorTileBudgetBytes = int64_t{256} << 20;
constexpr int64_t kCpuTileBudgetBytes = int64_t{16} << 20;

// The operands shared by both ops, with their static sizes. With
// attrs.self_reference, `ref` and `ref_labels` are not read: the reference set
// is `x` itself.
struct CircleXlaOperands {
  xla::XlaOp x;            // [n, dim] in `type`
  xla::XlaOp labels;       // [n] integers
  xla::XlaOp ref;          // [m, dim] in `type`
  xla::XlaOp ref_labels;   // [m], same integer type as labels
  xla::XlaOp diagonal_offset;  // s64 scalar
  int64_t n = 0;
  int64_t m = 0;
  int64_t dim = 0;
  xla::PrimitiveType type = xla::F32;        // T
  xla::PrimitiveType label_type = xla::S32;  // Tlabel
  int64_t tile_budget_bytes = kAcceleratorTileBudgetBytes;
  // The run-time row counts (s64 scalars) of x and ref when their first
  // dimension is bounded-dynamic (rows picked by tf.boolean_mask, say). The
  // operands are then static, padded to the bounds n and m with unspecified
  // rows past the counts; the emitters mask those rows out and give the
  // outputs the counts back as their dynamic sizes. Unset for static inputs.
  xla::XlaOp n_rows;
  xla::XlaOp m_rows;
};

struct CircleXlaForward {
  xla::XlaOp loss;     // [n] in T
  xla::XlaOp lse_pos;  // [n, 2] in Tstate: the log-sum-exp as high + low
  xla::XlaOp lse_neg;  // [n, 2] in Tstate
};

struct CircleXlaBackward {
  xla::XlaOp grad_x;    // [n, dim] in T
  xla::XlaOp grad_ref;  // [m, dim] in T; zeros with self_reference
};

// Width B of the column tiles: a multiple of 128 (a TPU MXU side), the
// widest whose ~8 live [n, B] temporaries of `acc_bytes`-byte elements fit in
// `budget_bytes`, clamped to [128, 1024], and never wider than m rounded up
// to 128. The cap bounds the per-iteration working set when n is small; it
// also makes test-sized problems (m in the thousands) run several tiles.
int64_t CircleTileWidth(int64_t n, int64_t m, int64_t acc_bytes,
                        int64_t budget_bytes);

// loss, lse_pos and lse_neg of KerasMargin>CircleLoss.
CircleXlaForward EmitBlockedCircleForward(xla::XlaBuilder* builder,
                                          const CircleAttrs& attrs,
                                          const CircleXlaOperands& in);

// grad_embeddings and grad_ref_embeddings of KerasMargin>CircleLossGrad, from
// the upstream gradient [n] (T) and the forward's lse_pos / lse_neg [n, 2]
// (Tstate).
CircleXlaBackward EmitBlockedCircleBackward(xla::XlaBuilder* builder,
                                            const CircleAttrs& attrs,
                                            const CircleXlaOperands& in,
                                            xla::XlaOp grad_loss,
                                            xla::XlaOp lse_pos,
                                            xla::XlaOp lse_neg);

}  // namespace keras_margin

#endif  // KERAS_MARGIN_TF_OPS_XLA_CIRCLE_LOSS_BLOCKED_HLO_H_
