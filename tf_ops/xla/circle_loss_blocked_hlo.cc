#include "tf_ops/xla/circle_loss_blocked_hlo.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "xla/hlo/builder/lib/arithmetic.h"
#include "xla/hlo/builder/lib/constants.h"
#include "xla/shape_util.h"

namespace keras_margin {
namespace {

using ::xla::XlaBuilder;
using ::xla::XlaOp;

constexpr int64_t kTileQuantum = 128;
constexpr int64_t kMaxTileWidth = 1024;
// Live [n, B] values per iteration in the accumulation type: the similarity
// tile, the fused element-wise results XLA may materialise (logits, exp,
// grad_s) and their layout copies for the transposed dot, with headroom.
constexpr int64_t kLiveTileTemporaries = 8;

constexpr double kInf = std::numeric_limits<double>::infinity();

int64_t RoundUp(int64_t v, int64_t q) { return (v + q - 1) / q * q; }

// Sizes of one problem's tiling, fixed at compile time.
struct Plan {
  Plan(const CircleAttrs& attrs, const CircleXlaOperands& in)
      : attrs(attrs),
        n(in.n),
        m(in.m),
        dim(in.dim),
        acc(in.type == xla::F64 ? xla::F64 : xla::F32),
        label_type(in.label_type),
        width(CircleTileWidth(in.n, in.m, acc == xla::F64 ? 8 : 4,
                              in.tile_budget_bytes)),
        m_pad(RoundUp(in.m, width)),
        tiles(m_pad / width),
        dynamic_n(in.n_rows.valid()),
        dynamic_m(in.m_rows.valid()) {}

  bool empty() const { return n == 0 || m == 0; }

  CircleAttrs attrs;
  int64_t n, m, dim;
  xla::PrimitiveType acc, label_type;
  int64_t width, m_pad, tiles;
  bool dynamic_n, dynamic_m;  // see CircleXlaOperands::n_rows
};

// A bounded-dynamic output's run-time size, `rows` (s64), on dimension 0.
XlaOp WithRows(XlaOp op, XlaOp rows) {
  if (!rows.valid()) return op;
  return xla::SetDimensionSize(op, xla::ConvertElementType(rows, xla::S32), 0);
}

// `matrix` [rows, cols] with the rows at or past `count` (s64) set to zero.
XlaOp ZeroRowsFrom(XlaOp matrix, XlaOp count, int64_t rows, int64_t cols) {
  XlaBuilder* b = matrix.builder();
  const XlaOp keep = xla::Lt(
      xla::Iota(b, xla::ShapeUtil::MakeShape(xla::S64, {rows, cols}), 0),
      xla::Broadcast(count, {rows, cols}));
  return xla::Select(keep, matrix, xla::ZerosLike(matrix));
}

XlaOp Scalar(XlaBuilder* b, const Plan& p, double v) {
  return xla::ConstantR0WithType(b, p.acc, v);
}

// What stays the same in every iteration. A While body sees nothing but its
// state tuple, so these travel in it, ahead of the per-pass carries.
struct Invariants {
  XlaOp x;           // [n, dim] in acc
  XlaOp labels;      // [n]
  XlaOp ref;         // [m_pad, dim] in acc, zero rows past m
  XlaOp ref_labels;  // [m_pad], zeros past m
  XlaOp offset;      // s64 scalar
  XlaOp n_rows;      // s64 scalar: the rows of x in use (n unless dynamic)
  XlaOp m_rows;      // s64 scalar: the rows of ref in use (m unless dynamic)

  static constexpr int kCount = 7;
  std::vector<XlaOp> List() const {
    return {x, labels, ref, ref_labels, offset, n_rows, m_rows};
  }
  static Invariants From(absl::Span<const XlaOp> v) {
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
  }
};

// Padding the reference set to whole tiles keeps every DynamicSlice in
// bounds: XLA clamps an out-of-range start, so a short last slice would
// silently re-read earlier columns instead.
Invariants MakeInvariants(XlaBuilder* b, const Plan& p,
                          const CircleXlaOperands& in) {
  Invariants v;
  v.n_rows = p.dynamic_n ? in.n_rows : xla::ConstantR0<int64_t>(b, p.n);
  v.m_rows = p.dynamic_m ? in.m_rows : xla::ConstantR0<int64_t>(b, p.m);
  // Rows past a dynamic size are unspecified and may be NaN: they are zeroed,
  // since their zero weights would not cancel a NaN in the backward's dots.
  v.x = xla::ConvertElementType(in.x, p.acc);
  if (p.dynamic_n) v.x = ZeroRowsFrom(v.x, v.n_rows, p.n, p.dim);
  v.labels = in.labels;
  XlaOp ref = p.attrs.self_reference ? v.x
                                     : xla::ConvertElementType(in.ref, p.acc);
  if (p.dynamic_m && !p.attrs.self_reference) {
    ref = ZeroRowsFrom(ref, v.m_rows, p.m, p.dim);
  }
  XlaOp ref_labels = p.attrs.self_reference ? in.labels : in.ref_labels;
  if (p.m_pad != p.m) {
    ref = xla::PadInDim(ref, Scalar(b, p, 0.0), 0, 0, p.m_pad - p.m);
    ref_labels = xla::PadInDim(ref_labels, xla::Zero(b, p.label_type), 0, 0,
                               p.m_pad - p.m);
  }
  v.ref = ref;
  v.ref_labels = ref_labels;
  v.offset = in.diagonal_offset;
  return v;
}

// The logits of one [n, B] tile (columns j0 .. j0 + B of the padded
// reference set) and the masks they were selected with. Same constants and
// evaluation order as keras.losses.circle and the CPU engine.
struct Tile {
  Tile(XlaBuilder* b, const Plan& p, const Invariants& v, XlaOp j0)
      : j0(j0) {
    const int64_t n = p.n, w = p.width;
    const XlaOp zero64 = xla::ConstantR0<int64_t>(b, 0);
    ref = xla::DynamicSlice(v.ref, {j0, zero64}, {w, p.dim});
    const XlaOp ref_labels = xla::DynamicSlice(v.ref_labels, {j0}, {w});
    xla::DotDimensionNumbers dims;
    dims.add_lhs_contracting_dimensions(1);
    dims.add_rhs_contracting_dimensions(1);
    const XlaOp s = xla::DotGeneral(v.x, ref, dims, nullptr, p.acc);
    const XlaOp zero = Scalar(b, p, 0.0);
    u = xla::Sub(Scalar(b, p, 1.0), s);
    d = xla::Max(u, zero);
    const XlaOp same =
        xla::Eq(xla::BroadcastInDim(v.labels, {n, w}, {0}),
                xla::BroadcastInDim(ref_labels, {n, w}, {1}));
    pos = same;
    neg = xla::Not(same);
    // Padding columns, and rows past a dynamic row count, belong to neither
    // set.
    XlaOp real;
    if (p.m_pad != p.m || p.dynamic_m) {
      real = xla::BroadcastInDim(
          xla::Lt(xla::Add(xla::Iota(b, xla::S64, w), j0), v.m_rows), {n, w},
          {1});
    }
    if (p.dynamic_n) {
      const XlaOp rows = xla::BroadcastInDim(
          xla::Lt(xla::Iota(b, xla::S64, n), v.n_rows), {n, w}, {0});
      real = real.valid() ? xla::And(real, rows) : rows;
    }
    if (real.valid()) {
      pos = xla::And(pos, real);
      neg = xla::And(neg, real);
    }
    if (p.attrs.remove_diagonal) {
      // Row i drops reference i + offset, here tile column i + offset - j0;
      // an offset beyond the references drops nothing.
      const XlaOp excluded =
          xla::Sub(xla::Add(xla::Iota(b, xla::S64, n), v.offset), j0);
      const XlaOp column =
          xla::Iota(b, xla::ShapeUtil::MakeShape(xla::S64, {n, w}), 1);
      pos = xla::And(pos, xla::Ne(xla::BroadcastInDim(excluded, {n, w}, {0}),
                                  column));
    }
    const double g = p.attrs.gamma;
    const double mg = p.attrs.margin;
    up = xla::Add(Scalar(b, p, mg), d);
    un = xla::Sub(Scalar(b, p, 1.0 + mg), d);
    dp = xla::Sub(Scalar(b, p, mg), d);
    dn = xla::Sub(Scalar(b, p, 1.0 - mg), d);
    const XlaOp lp =
        xla::Mul(xla::Mul(Scalar(b, p, -g), xla::Max(up, zero)), dp);
    const XlaOp ln =
        xla::Mul(xla::Mul(Scalar(b, p, g), xla::Max(un, zero)), dn);
    logits = xla::Select(pos, lp, ln);
  }

  XlaOp j0;   // s64 scalar
  XlaOp ref;  // [B, dim], this tile's reference rows
  XlaOp u, d, pos, neg, up, un, dp, dn, logits;
};

// Row-wise reduction of an [n, B] tile.
XlaOp ReduceRows(XlaBuilder* b, const Plan& p, XlaOp tile, double init,
                 const xla::XlaComputation& combiner) {
  return xla::Reduce(tile, Scalar(b, p, init), combiner, {1});
}

using TileBody = std::function<std::vector<XlaOp>(
    XlaBuilder* b, const Tile& tile, const Invariants& v,
    absl::Span<const XlaOp> carries)>;

// for t in [0, tiles): carries = body(tile t, carries). Returns the final
// carries. The loop order is fixed, so results are reproducible.
std::vector<XlaOp> ForEachTile(XlaBuilder* b, const Plan& p,
                               const Invariants& invariants,
                               const std::vector<XlaOp>& init,
                               const std::string& name, const TileBody& body) {
  std::vector<XlaOp> state = {xla::ConstantR0<int64_t>(b, 0)};
  for (const XlaOp& op : invariants.List()) state.push_back(op);
  state.insert(state.end(), init.begin(), init.end());
  const XlaOp initial = xla::Tuple(b, state);
  const absl::StatusOr<xla::Shape> shape = b->GetShape(initial);
  if (!shape.ok()) {
    b->ReportError(shape.status());
    return init;
  }
  constexpr int kFirstCarry = 1 + Invariants::kCount;
  const int carries = static_cast<int>(init.size());

  auto cb = b->CreateSubBuilder(name + "_cond");
  {
    const XlaOp s = xla::Parameter(cb.get(), 0, *shape, "state");
    xla::Lt(xla::GetTupleElement(s, 0),
            xla::ConstantR0<int64_t>(cb.get(), p.tiles));
  }
  const xla::XlaComputation cond = cb->BuildAndNoteError();

  auto bb = b->CreateSubBuilder(name + "_body");
  {
    XlaBuilder* sb = bb.get();
    const XlaOp s = xla::Parameter(sb, 0, *shape, "state");
    std::vector<XlaOp> in(state.size());
    for (int k = 0; k < static_cast<int>(state.size()); ++k) {
      in[k] = xla::GetTupleElement(s, k);
    }
    const Invariants v = Invariants::From(absl::MakeSpan(in).subspan(1));
    const XlaOp t = in[0];
    const Tile tile(sb, p, v,
                    xla::Mul(t, xla::ConstantR0<int64_t>(sb, p.width)));
    const std::vector<XlaOp> next = body(
        sb, tile, v, absl::MakeSpan(in).subspan(kFirstCarry, carries));
    std::vector<XlaOp> out = {xla::Add(t, xla::ConstantR0<int64_t>(sb, 1))};
    out.insert(out.end(), in.begin() + 1, in.begin() + kFirstCarry);
    out.insert(out.end(), next.begin(), next.end());
    xla::Tuple(sb, out);
  }
  const xla::XlaComputation body_computation = bb->BuildAndNoteError();

  const XlaOp result = xla::While(cond, body_computation, initial);
  std::vector<XlaOp> final_carries(carries);
  for (int k = 0; k < carries; ++k) {
    final_carries[k] = xla::GetTupleElement(result, kFirstCarry + k);
  }
  return final_carries;
}

// Online log-sum-exp of both sets: per row, the running maximum and the sum
// of exp(logit - shift) with shift = that maximum (0 while the set is empty).
// A tile with a larger maximum rescales the sum by exp(old - new).
std::vector<XlaOp> ForwardTile(XlaBuilder* b, const Plan& p, const Tile& t,
                               absl::Span<const XlaOp> c) {
  const int64_t n = p.n, w = p.width;
  const XlaOp max_pos = c[0], sum_pos = c[1], max_neg = c[2], sum_neg = c[3];
  const XlaOp ninf = xla::Broadcast(Scalar(b, p, -kInf), {n, w});
  // One plain Reduce per set: a variadic Reduce of both sets was ~10% slower
  // on the whole step under XLA:CPU, which fuses sibling reductions itself.
  const xla::XlaComputation max_op = xla::CreateScalarMaxComputation(p.acc, b);
  const xla::XlaComputation add_op = xla::CreateScalarAddComputation(p.acc, b);
  const XlaOp tile_max_pos =
      ReduceRows(b, p, xla::Select(t.pos, t.logits, ninf), -kInf, max_op);
  const XlaOp tile_max_neg =
      ReduceRows(b, p, xla::Select(t.neg, t.logits, ninf), -kInf, max_op);
  const XlaOp new_max_pos = xla::Max(max_pos, tile_max_pos);
  const XlaOp new_max_neg = xla::Max(max_neg, tile_max_neg);
  auto shift = [](XlaOp max) {
    return xla::Select(xla::IsFinite(max), max, xla::ZerosLike(max));
  };
  const XlaOp shift_pos = shift(new_max_pos);
  const XlaOp shift_neg = shift(new_max_neg);
  // One exponential per pair: a pair is in at most one set, so it is
  // shifted by its own set's reference and summed into that set alone.
  const XlaOp e = xla::Exp(xla::Sub(
      t.logits, xla::Select(t.pos, xla::BroadcastInDim(shift_pos, {n, w}, {0}),
                            xla::BroadcastInDim(shift_neg, {n, w}, {0}))));
  const XlaOp zeros = xla::Broadcast(Scalar(b, p, 0.0), {n, w});
  const XlaOp tile_sum_pos =
      ReduceRows(b, p, xla::Select(t.pos, e, zeros), 0.0, add_op);
  const XlaOp tile_sum_neg =
      ReduceRows(b, p, xla::Select(t.neg, e, zeros), 0.0, add_op);
  // exp(-inf - shift) = 0 while a set is still empty (its sum is 0 too).
  auto rescale = [](XlaOp sum, XlaOp old_max, XlaOp new_shift) {
    return xla::Mul(sum, xla::Exp(xla::Sub(old_max, new_shift)));
  };
  return {new_max_pos,
          xla::Add(rescale(sum_pos, max_pos, shift_pos), tile_sum_pos),
          new_max_neg,
          xla::Add(rescale(sum_neg, max_neg, shift_neg), tile_sum_neg)};
}

std::vector<XlaOp> BackwardTile(XlaBuilder* b, const Plan& p, const Tile& t,
                                const Invariants& v,
                                absl::Span<const XlaOp> c) {
  const int64_t n = p.n, w = p.width;
  const XlaOp scale = c[0], high_pos = c[1], low_pos = c[2], high_neg = c[3],
              low_neg = c[4];
  XlaOp grad_x = c[5], grad_ref = c[6];
  const XlaOp zero = Scalar(b, p, 0.0);
  const XlaOp zeros = xla::Broadcast(zero, {n, w});
  auto per_set = [&](XlaOp pos, XlaOp neg) {
    return xla::Select(t.pos, xla::BroadcastInDim(pos, {n, w}, {0}),
                       xla::BroadcastInDim(neg, {n, w}, {0}));
  };
  // exp(l - lse): l minus the high part is exact for a row's dominant pairs.
  // Capped at l - lse = 0, as no weight exceeds 1: XLA compiles this loop
  // apart from the forward's and may round a recomputed logit an ulp higher,
  // which at logits of 1e11 (norms of 100, gamma 1024) is 8e3 and would
  // overflow the weight.
  const XlaOp softmax = xla::Exp(xla::Min(
      xla::Sub(xla::Sub(t.logits, per_set(high_pos, high_neg)),
               per_set(low_pos, low_neg)),
      zero));
  const XlaOp weight = xla::Mul(softmax, scale, {0});
  // d(logit)/d(distance): the clamped weights are differentiated too, and
  // max() sends the gradient to its first argument on ties, as in Keras.
  const XlaOp slope_pos = xla::Sub(
      xla::Select(xla::Ge(t.up, zero), t.dp, zeros), xla::Max(t.up, zero));
  const XlaOp slope_neg = xla::Add(
      xla::Select(xla::Ge(t.un, zero), t.dn, zeros), xla::Max(t.un, zero));
  const XlaOp slope = xla::Mul(Scalar(b, p, -p.attrs.gamma),
                               xla::Select(t.pos, slope_pos, slope_neg));
  const XlaOp active = xla::And(xla::Or(t.pos, t.neg), xla::Ge(t.u, zero));
  const XlaOp grad_s =
      xla::Select(active, xla::Neg(xla::Mul(weight, slope)), zeros);

  xla::DotDimensionNumbers rows;
  rows.add_lhs_contracting_dimensions(1);
  rows.add_rhs_contracting_dimensions(0);
  xla::DotDimensionNumbers cols;
  cols.add_lhs_contracting_dimensions(0);
  cols.add_rhs_contracting_dimensions(0);
  grad_x = xla::Add(grad_x,
                    xla::DotGeneral(grad_s, t.ref, rows, nullptr, p.acc));
  grad_ref = xla::DynamicUpdateSlice(
      grad_ref, xla::DotGeneral(grad_s, v.x, cols, nullptr, p.acc),
      {t.j0, xla::ConstantR0<int64_t>(b, 0)});
  return {scale, high_pos, low_pos, high_neg, low_neg, grad_x, grad_ref};
}

// A set's log-sum-exp max + log(sum) as [n, 2]: the sum rounded, then the
// rounding error, found exactly by Knuth's TwoSum (XLA does not reassociate
// floating-point sums). (-inf, 0) for an empty set.
XlaOp LseParts(XlaBuilder* b, const Plan& p, XlaOp max, XlaOp sum) {
  const XlaOp a = xla::Select(xla::IsFinite(max), max, xla::ZerosLike(max));
  const XlaOp log_sum = xla::Log(sum);
  const XlaOp high = xla::Add(a, log_sum);
  const XlaOp b_part = xla::Sub(high, a);
  const XlaOp low = xla::Add(xla::Sub(a, xla::Sub(high, b_part)),
                             xla::Sub(log_sum, b_part));
  const XlaOp finite_low =
      xla::Select(xla::IsFinite(high), low, xla::ZerosLike(low));
  return xla::ConcatInDim(b,
                          {xla::Reshape(high, {p.n, 1}),
                           xla::Reshape(finite_low, {p.n, 1})},
                          1);
}

// Column `k` of an [n, 2] log-sum-exp state.
XlaOp LsePart(const Plan& p, XlaOp lse, int64_t k) {
  return xla::Reshape(xla::SliceInDim(lse, k, k + 1, 1, 1), {p.n});
}

// lse_pos + lse_neg, high parts first.
XlaOp LseSum(const Plan& p, XlaOp lse_pos, XlaOp lse_neg) {
  return xla::Add(xla::Add(LsePart(p, lse_pos, 0), LsePart(p, lse_neg, 0)),
                  xla::Add(LsePart(p, lse_pos, 1), LsePart(p, lse_neg, 1)));
}

}  // namespace

int64_t CircleTileWidth(int64_t n, int64_t m, int64_t acc_bytes,
                        int64_t budget_bytes) {
  const int64_t column_bytes =
      kLiveTileTemporaries * acc_bytes * std::max<int64_t>(n, 1);
  const int64_t fit = budget_bytes / column_bytes / kTileQuantum * kTileQuantum;
  const int64_t width = std::clamp(fit, kTileQuantum, kMaxTileWidth);
  return std::min(width, RoundUp(std::max<int64_t>(m, 1), kTileQuantum));
}

CircleXlaForward EmitBlockedCircleForward(XlaBuilder* b,
                                          const CircleAttrs& attrs,
                                          const CircleXlaOperands& in) {
  const Plan p(attrs, in);
  const XlaOp ninf = xla::Broadcast(Scalar(b, p, -kInf), {p.n});
  const XlaOp zeros = xla::Broadcast(Scalar(b, p, 0.0), {p.n});
  if (p.empty()) {
    // No pair at all: both sets empty, loss 0.
    const XlaOp empty = LseParts(b, p, ninf, zeros);
    return {WithRows(xla::Broadcast(xla::Zero(b, in.type), {p.n}), in.n_rows),
            WithRows(empty, in.n_rows), WithRows(empty, in.n_rows)};
  }
  const std::vector<XlaOp> state = ForEachTile(
      b, p, MakeInvariants(b, p, in), {ninf, zeros, ninf, zeros},
      "circle_forward",
      [&p](XlaBuilder* sb, const Tile& t, const Invariants&,
           absl::Span<const XlaOp> c) { return ForwardTile(sb, p, t, c); });
  const XlaOp lse_pos = LseParts(b, p, state[0], state[1]);
  const XlaOp lse_neg = LseParts(b, p, state[2], state[3]);
  const XlaOp z = LseSum(p, lse_pos, lse_neg);
  // Stable softplus; z = -inf (an empty set) gives exactly 0.
  const XlaOp loss = xla::Add(xla::Max(z, Scalar(b, p, 0.0)),
                              xla::Log1p(xla::Exp(xla::Neg(xla::Abs(z)))));
  return {WithRows(xla::ConvertElementType(loss, in.type), in.n_rows),
          WithRows(lse_pos, in.n_rows), WithRows(lse_neg, in.n_rows)};
}

CircleXlaBackward EmitBlockedCircleBackward(XlaBuilder* b,
                                            const CircleAttrs& attrs,
                                            const CircleXlaOperands& in,
                                            XlaOp grad_loss, XlaOp lse_pos,
                                            XlaOp lse_neg) {
  const Plan p(attrs, in);
  const XlaOp grad_ref_zeros =
      WithRows(xla::Broadcast(xla::Zero(b, in.type), {p.m, p.dim}), in.m_rows);
  if (p.empty()) {
    return {WithRows(xla::Broadcast(xla::Zero(b, in.type), {p.n, p.dim}),
                     in.n_rows),
            grad_ref_zeros};
  }
  const XlaOp scale =
      xla::Mul(xla::ConvertElementType(grad_loss, p.acc),
               xla::Logistic(LseSum(p, lse_pos, lse_neg)));
  // +inf for an empty set, so exp(logit - high) is 0 instead of NaN.
  auto high = [&](XlaOp lse) {
    const XlaOp part = LsePart(p, lse, 0);
    return xla::Select(xla::IsFinite(part), part,
                       xla::Broadcast(Scalar(b, p, kInf), {p.n}));
  };
  const std::vector<XlaOp> state = ForEachTile(
      b, p, MakeInvariants(b, p, in),
      {scale, high(lse_pos), LsePart(p, lse_pos, 1), high(lse_neg),
       LsePart(p, lse_neg, 1), xla::Broadcast(Scalar(b, p, 0.0), {p.n, p.dim}),
       xla::Broadcast(Scalar(b, p, 0.0), {p.m_pad, p.dim})},
      "circle_backward",
      [&p](XlaBuilder* sb, const Tile& t, const Invariants& v,
           absl::Span<const XlaOp> c) { return BackwardTile(sb, p, t, v, c); });
  XlaOp grad_x = state[5];
  XlaOp grad_ref = xla::SliceInDim(state[6], 0, p.m, 1, 0);
  if (attrs.self_reference) {
    // x is also the reference set: both roles' gradients belong to it.
    return {WithRows(xla::ConvertElementType(xla::Add(grad_x, grad_ref),
                                             in.type),
                     in.n_rows),
            grad_ref_zeros};
  }
  return {WithRows(xla::ConvertElementType(grad_x, in.type), in.n_rows),
          WithRows(xla::ConvertElementType(grad_ref, in.type), in.m_rows)};
}

}  // namespace keras_margin
