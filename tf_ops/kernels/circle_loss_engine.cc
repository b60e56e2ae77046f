#include "tf_ops/kernels/circle_loss_engine.h"
#include "tf_ops/kernels/circle_loss_engine_table.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "Eigen/Core"

namespace keras_margin {
namespace {

// The element-wise work is written once as templates over a "lane" type V,
// which is either a scalar (float or double) or a SIMD vector of floats from
// the GCC/Clang vector extension, as wide as the build's instruction set
// allows: 16 lanes with AVX-512, which halves the element-wise instruction
// count, and 8 otherwise. Masks are bool for scalars and all-ones / all-zeros
// int32 lanes for vectors; the helpers below hide the difference.
#if defined(__AVX512F__)
constexpr int kFloatLanes = 16;
#else
constexpr int kFloatLanes = 8;
#endif
typedef float FVec __attribute__((vector_size(4 * kFloatLanes)));
typedef int32_t IVec __attribute__((vector_size(4 * kFloatLanes)));

template <typename V>
struct LaneTraits {
  using Int = int32_t;
};
template <>
struct LaneTraits<FVec> {
  using Int = IVec;
};
template <typename V>
using LaneInt = typename LaneTraits<V>::Int;

// Widest lane type for an accumulation type. Double is only used for
// reference-quality results, so it stays scalar.
template <typename Acc>
struct Wide {
  using type = Acc;
  static constexpr int kWidth = 1;
};
template <>
struct Wide<float> {
  using type = FVec;
  static constexpr int kWidth = kFloatLanes;
};

template <typename V, typename S>
inline V Load(const S* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename S>
inline void Store(S* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename V, typename S>
inline V Splat(S s) {
  return static_cast<V>(s);
}
template <>
inline FVec Splat<FVec, float>(float s) {
  return FVec{} + s;
}
template <>
inline IVec Splat<IVec, int32_t>(int32_t s) {
  return IVec{} + s;
}
template <typename I>
inline I Iota(int32_t start) {
  return start;
}
template <>
inline IVec Iota<IVec>(int32_t start) {
  IVec v;
  for (int k = 0; k < kFloatLanes; ++k) v[k] = k;
  return v + start;
}

inline bool MaskAnd(bool a, bool b) { return a && b; }
inline IVec MaskAnd(IVec a, IVec b) { return a & b; }
inline bool MaskOr(bool a, bool b) { return a || b; }
inline IVec MaskOr(IVec a, IVec b) { return a | b; }
inline bool MaskNot(bool a) { return !a; }
inline IVec MaskNot(IVec a) { return ~a; }

template <typename V>
inline V Select(bool m, V a, V b) {
  return m ? a : b;
}
inline FVec Select(IVec m, FVec a, FVec b) { return m ? a : b; }
template <typename V>
inline V Max(V a, V b) {
  return Select(a > b, a, b);
}
template <typename V>
inline V Min(V a, V b) {
  return Select(a < b, a, b);
}

inline float HMax(float v) { return v; }
inline double HMax(double v) { return v; }
inline float HMax(FVec v) {
  float m = v[0];
  for (int k = 1; k < kFloatLanes; ++k) m = std::max(m, v[k]);
  return m;
}
inline float HSum(float v) { return v; }
inline double HSum(double v) { return v; }
// A fixed pairwise tree, so that the order of the sum depends only on the
// build's lane count.
inline float HSum(FVec v) {
  float lanes[kFloatLanes];
  std::memcpy(lanes, &v, sizeof v);
  for (int width = kFloatLanes / 2; width >= 1; width /= 2) {
    for (int k = 0; k < width; ++k) lanes[k] += lanes[k + width];
  }
  return lanes[0];
}

inline int32_t FloatBits(float v) {
  int32_t i;
  std::memcpy(&i, &v, sizeof i);
  return i;
}
inline IVec FloatBits(FVec v) { return reinterpret_cast<IVec>(v); }
inline float BitsFloat(int32_t i) {
  float v;
  std::memcpy(&v, &i, sizeof v);
  return v;
}
inline FVec BitsFloat(IVec i) { return reinterpret_cast<FVec>(i); }

// Single-precision exp usable on scalars and vectors alike, so that the
// vector body and the scalar tail of a row agree bit for bit. Reduction
// x = n*ln2 + r with |r| <= ln2/2 (ln2 split in two so n*ln2_hi is exact),
// a degree-7 Taylor polynomial (truncation error ~5e-9 relative) and an
// exponent-field shift for 2^n. Inputs below -87 return exactly 0; inputs
// above 88 saturate at e^88, which callers only ever discard.
template <typename V>
inline V ExpFloat(V x) {
  using I = LaneInt<V>;
  const V lo = Splat<V>(-87.0f);
  const V xc = Min(Max(x, lo), Splat<V>(88.0f));
  const V magic = Splat<V>(12582912.0f);  // 1.5 * 2^23: rounds to integer.
  const V t = xc * Splat<V>(1.44269504088896341f) + magic;
  const V n = t - magic;
  const I ni = FloatBits(t) - Splat<I>(FloatBits(12582912.0f));
  V r = xc - n * Splat<V>(0.693359375f);
  r = r - n * Splat<V>(-2.12194440e-4f);
  V p = Splat<V>(1.0f / 5040.0f);
  p = p * r + Splat<V>(1.0f / 720.0f);
  p = p * r + Splat<V>(1.0f / 120.0f);
  p = p * r + Splat<V>(1.0f / 24.0f);
  p = p * r + Splat<V>(1.0f / 6.0f);
  p = p * r + Splat<V>(0.5f);
  p = p * r + Splat<V>(1.0f);
  p = p * r + Splat<V>(1.0f);
  const V scale = BitsFloat((ni + Splat<I>(127)) << 23);
  return Select(x < lo, Splat<V>(0.0f), p * scale);
}
inline float Exp(float x) { return ExpFloat(x); }
inline FVec Exp(FVec x) { return ExpFloat(x); }
inline double Exp(double x) { return std::exp(x); }

template <typename Acc>
constexpr Acc kNegInf = -std::numeric_limits<Acc>::infinity();
template <typename Acc>
constexpr Acc kPosInf = std::numeric_limits<Acc>::infinity();

// v rounded to its type at this point. GCC contracts a product and a later
// subtraction into one FMA (-ffp-contract=fast, its default) even across
// statements and inlined calls, which skips the product's rounding. The
// empty asm makes v opaque, so nothing can be fused through it. "+v" keeps v
// in a vector register where the build has AVX; elsewhere it goes through
// memory, which rounds as well.
template <typename V>
inline V Rounded(V v) {
#if defined(__AVX__)
  asm("" : "+v"(v));
#else
  asm("" : "+m"(v));
#endif
  return v;
}

// The constants of keras.losses.circle, rounded to Acc the way Keras rounds
// its Python-float constants when they meet a tensor, arranged so that one
// expression gives either set's logit from the distance d:
//   l = (scale * max(optim + sign * d, 0)) * (delta - d),
// positives: scale -gamma, optim m, sign +1, delta m; negatives: scale gamma,
// optim 1 + m, sign -1, delta 1 - m. Each lane picks its set's constants,
// which costs less than evaluating both sets' logits; the logit's products
// and sums are Keras's own, in the same order (sign * d is exact).
template <typename Acc>
struct SetConsts {
  Acc scale, optim, sign, delta;
};
template <typename Acc>
struct Consts {
  SetConsts<Acc> pos, neg;
  Acc gamma;
  Consts(double g, double m)
      : pos{static_cast<Acc>(-g), static_cast<Acc>(m), Acc(1),
            static_cast<Acc>(m)},
        neg{static_cast<Acc>(g), static_cast<Acc>(1.0 + m), Acc(-1),
            static_cast<Acc>(1.0 - m)},
        gamma(static_cast<Acc>(g)) {}
};

// Membership of one lane set in the positive / negative sets. With
// remove_diagonal, the row's excluded pair is not a positive (as in Keras, a
// different label still makes it a negative); `diag` is the tile column
// holding it, or -1.
template <typename V>
struct Membership {
  decltype(Splat<LaneInt<V>>(0) == Splat<LaneInt<V>>(0)) pos, neg;
};
template <typename V>
inline Membership<V> Classify(const int32_t* ref_labels, int64_t c,
                              int32_t label, int32_t diag) {
  using I = LaneInt<V>;
  const auto same = Splat<I>(label) == Load<I>(ref_labels + c);
  return {MaskAnd(same, Iota<I>(static_cast<int32_t>(c)) != Splat<I>(diag)),
          MaskNot(same)};
}

template <typename V, typename Acc>
inline V Distance(V s) {
  return Max(Splat<V>(Acc(1)) - s, Splat<V>(Acc(0)));
}

template <typename V, typename Acc, typename M>
inline V Pick(M pos, Acc if_pos, Acc if_neg) {
  return Select(pos, Splat<V>(if_pos), Splat<V>(if_neg));
}

// A lane's logit and what its derivative needs.
template <typename V>
struct LaneLogit {
  V value;
  V weight_arg;  // optim + sign * d
  V delta_gap;   // delta - d
};
template <typename V, typename Acc, typename M>
inline LaneLogit<V> Logit(const Consts<Acc>& k, V d, M pos) {
  const V arg = Pick<V>(pos, k.pos.optim, k.neg.optim) +
                Pick<V>(pos, k.pos.sign, k.neg.sign) * d;
  const V gap = Pick<V>(pos, k.pos.delta, k.neg.delta) - d;
  // Rounded, as Keras rounds it: the forward pass stores the logit, so the
  // backward pass must subtract the row's log-sum-exp from the same rounded
  // value. Fused into that subtraction instead, l - lse of a row's dominant
  // pair is the logit's rounding error rather than 0, and its softmax weight
  // e^0 is off by that much: 3% at l = 4e5 (rows of norm 10, gamma 80).
  const V value = Rounded(
      (Pick<V>(pos, k.pos.scale, k.neg.scale) * Max(arg, Splat<V>(Acc(0)))) *
      gap);
  return {value, arg, gap};
}

// d(logit)/d(similarity) = -d(logit)/d(distance) where the distance is
// 1 - s; gamma ((arg >= 0 ? delta - d : 0) - sign * max(arg, 0)). The clamped
// weights are not stop-gradient in Keras, and tf.maximum sends the gradient
// to its first argument on ties.
template <typename V, typename Acc, typename M>
inline V LogitSlope(const Consts<Acc>& k, const LaneLogit<V>& l, M pos) {
  const V zero = Splat<V>(Acc(0));
  const V clamped = Max(l.weight_arg, zero);
  const V signed_clamped = Select(pos, clamped, -clamped);
  return Splat<V>(k.gamma) *
         (Select(l.weight_arg >= zero, l.delta_gap, zero) - signed_clamped);
}

// Forward pass 1 on lanes [c, c + width): similarity -> logit in place, and
// running maxima per set for the row (vmp, vmn) and, with kCols, per column.
template <typename V, typename Acc, bool kCols>
inline void LogitLanes(const Consts<Acc>& k, Acc* row, const int32_t* rl,
                       int64_t c, int32_t label, int32_t diag, V& vmp, V& vmn,
                       Acc* cmp, Acc* cmn) {
  const Membership<V> mb = Classify<V>(rl, c, label, diag);
  const V l = Logit(k, Distance<V, Acc>(Load<V>(row + c)), mb.pos).value;
  Store(row + c, l);
  const V ninf = Splat<V>(kNegInf<Acc>);
  const V lp = Select(mb.pos, l, ninf);
  const V ln = Select(mb.neg, l, ninf);
  vmp = Max(vmp, lp);
  vmn = Max(vmn, ln);
  if (kCols) {
    Store(cmp + c, Max(Load<V>(cmp + c), lp));
    Store(cmn + c, Max(Load<V>(cmn + c), ln));
  }
}

// Forward pass 2: exp(logit - running max) summed per set, for the row and,
// with kCols, per column. A -inf maximum only occurs for a set with no member
// so far, whose lanes the selects discard.
template <typename V, typename Acc, bool kCols>
inline void ExpSumLanes(const Acc* row, const int32_t* rl, int64_t c,
                        int32_t label, int32_t diag, Acc rmp, Acc rmn, V& vsp,
                        V& vsn, const Acc* cmp, const Acc* cmn, Acc* csp,
                        Acc* csn) {
  const Membership<V> mb = Classify<V>(rl, c, label, diag);
  const V l = Load<V>(row + c);
  const V zero = Splat<V>(Acc(0));
  const V e = Exp(l - Select(mb.pos, Splat<V>(rmp), Splat<V>(rmn)));
  vsp = vsp + Select(mb.pos, e, zero);
  vsn = vsn + Select(mb.neg, e, zero);
  if (kCols) {
    const V ec =
        Exp(l - Select(mb.pos, Load<V>(cmp + c), Load<V>(cmn + c)));
    Store(csp + c, Load<V>(csp + c) + Select(mb.pos, ec, zero));
    Store(csn + c, Load<V>(csn + c) + Select(mb.neg, ec, zero));
  }
}

// Forward pass 2 with one exponential per pair: exp(logit - ref), ref the
// tile-wide reference of the pair's set, summed per set for the row and per
// column.
template <typename V, typename Acc>
inline void SharedExpLanes(const Acc* row, const int32_t* rl, int64_t c,
                           int32_t label, int32_t diag, Acc tp, Acc tn, V& vsp,
                           V& vsn, Acc* csp, Acc* csn) {
  const Membership<V> mb = Classify<V>(rl, c, label, diag);
  const V zero = Splat<V>(Acc(0));
  const V e =
      Exp(Load<V>(row + c) - Select(mb.pos, Splat<V>(tp), Splat<V>(tn)));
  const V ep = Select(mb.pos, e, zero);
  const V en = Select(mb.neg, e, zero);
  vsp = vsp + ep;
  vsn = vsn + en;
  Store(csp + c, Load<V>(csp + c) + ep);
  Store(csn + c, Load<V>(csn + c) + en);
}

// A row's (or column's) share of the backward: `g` its upstream gradient
// times sigmoid(lse_pos + lse_neg), and per set the two parts of its
// log-sum-exp (high +inf and low 0 for an empty set, so that the weight is 0
// rather than NaN).
template <typename V>
struct RowShare {
  V g, pos_high, pos_low, neg_high, neg_low;
};
template <typename V, typename Acc>
inline RowShare<V> RowShareOf(const Acc* g, const Acc* ph, const Acc* pl,
                              const Acc* nh, const Acc* nl) {
  return {Load<V>(g), Load<V>(ph), Load<V>(pl), Load<V>(nh), Load<V>(nl)};
}
template <typename V, typename Acc>
inline RowShare<V> SplatShare(Acc g, Acc ph, Acc pl, Acc nh, Acc nl) {
  return {Splat<V>(g), Splat<V>(ph), Splat<V>(pl), Splat<V>(nh), Splat<V>(nl)};
}
// g exp(l - lse): l minus the high part is exact for a row's dominant pairs,
// and the low part then corrects it.
template <typename V, typename M>
inline V SoftmaxWeight(V l, M pos, const RowShare<V>& r) {
  return r.g * Exp((l - Select(pos, r.pos_high, r.neg_high)) -
                   Select(pos, r.pos_low, r.neg_low));
}

// Backward: similarity -> dloss/ds in place, for the row's share `row_share`.
// With kCols the transposed pair (j, i) is added with the columns' shares,
// giving the (G + G^T) tile directly.
template <typename V, typename Acc, bool kCols>
inline void GradLanes(const Consts<Acc>& k, Acc* row, const int32_t* rl,
                      int64_t c, int32_t label, int32_t diag,
                      const RowShare<V>& row_share, const Acc* gc,
                      const Acc* phc, const Acc* plc, const Acc* nhc,
                      const Acc* nlc) {
  const Membership<V> mb = Classify<V>(rl, c, label, diag);
  const V zero = Splat<V>(Acc(0));
  const V u = Splat<V>(Acc(1)) - Load<V>(row + c);
  const V d = Max(u, zero);
  const LaneLogit<V> l = Logit(k, d, mb.pos);
  V w = SoftmaxWeight(l.value, mb.pos, row_share);
  if (kCols) {
    w = w + SoftmaxWeight(l.value, mb.pos,
                          RowShareOf<V>(gc + c, phc + c, plc + c, nhc + c,
                                        nlc + c));
  }
  const auto active = MaskAnd(MaskOr(mb.pos, mb.neg), u >= zero);
  Store(row + c, Select(active, w * LogitSlope(k, l, mb.pos), zero));
}

// Backward with one exponential per pair for the (G + G^T) tile: the weight
// g_i exp(l - lse_i) + g_j exp(l - lse_j) as exp(l - ref) (p_i + q_j), with
// p_i = g_i exp(ref - lse_i) and q_j = g_j exp(ref - lse_j) per set.
template <typename V, typename Acc>
inline void SharedGradLanes(const Consts<Acc>& k, Acc* row, const int32_t* rl,
                            int64_t c, int32_t label, int32_t diag, Acc tp,
                            Acc tn, Acc pp, Acc pn, const Acc* qp,
                            const Acc* qn) {
  const Membership<V> mb = Classify<V>(rl, c, label, diag);
  const V zero = Splat<V>(Acc(0));
  const V u = Splat<V>(Acc(1)) - Load<V>(row + c);
  const V d = Max(u, zero);
  const LaneLogit<V> l = Logit(k, d, mb.pos);
  const V e = Exp(l.value - Select(mb.pos, Splat<V>(tp), Splat<V>(tn)));
  const V w = e * Select(mb.pos, Splat<V>(pp) + Load<V>(qp + c),
                         Splat<V>(pn) + Load<V>(qn + c));
  const auto active = MaskAnd(MaskOr(mb.pos, mb.neg), u >= zero);
  Store(row + c, Select(active, w * LogitSlope(k, l, mb.pos), zero));
}

template <typename Acc>
using RowMatrix =
    Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename Acc>
using ConstMap = Eigen::Map<const RowMatrix<Acc>>;
template <typename Acc>
using MutMap = Eigen::Map<RowMatrix<Acc>>;

// The three tile products of the engine, on Eigen's blocked GEMM. (A
// hand-written 6x16 AVX2 register-blocked kernel on pre-packed operands was
// measured: equal on the similarities, 15% slower on the gradient products.)
template <typename Acc>
class TileProducts {
 public:
  TileProducts(const Acc* x, const Acc* ref, int64_t dim)
      : x_(x), ref_(ref), dim_(dim) {}

  // s[bi, bj] = x[i0 : i0 + bi] . ref[j0 : j0 + bj]^T
  void Similarity(int64_t i0, int64_t bi, int64_t j0, int64_t bj,
                  Acc* s) const {
    MutMap<Acc>(s, bi, bj).noalias() =
        ConstMap<Acc>(x_ + i0 * dim_, bi, dim_) *
        ConstMap<Acc>(ref_ + j0 * dim_, bj, dim_).transpose();
  }

  // out[bi, :] += g[bi, bj] . ref[j0 : j0 + bj]
  void AddTimesRef(const Acc* g, int64_t bi, int64_t j0, int64_t bj,
                   Acc* out) const {
    MutMap<Acc>(out, bi, dim_).noalias() +=
        ConstMap<Acc>(g, bi, bj) * ConstMap<Acc>(ref_ + j0 * dim_, bj, dim_);
  }

  // out[bj, :] += g[bi, bj]^T . x[i0 : i0 + bi]
  void AddTransposedTimesX(const Acc* g, int64_t i0, int64_t bi, int64_t bj,
                           Acc* out) const {
    MutMap<Acc>(out, bj, dim_).noalias() +=
        ConstMap<Acc>(g, bi, bj).transpose() *
        ConstMap<Acc>(x_ + i0 * dim_, bi, dim_);
  }

 private:
  const Acc* x_;
  const Acc* ref_;
  int64_t dim_;
};

// A 384 x 384 float tile (576 KiB) stays in a 1 MiB per-core L2 next to its
// operands; measured 10-15% faster than 256 on the backward pass.
constexpr int64_t kMaxBlock = 384;
constexpr int64_t kMinBlock = 64;
// Block starts stay on 64-byte lines and vector lanes: only the last block of
// a row can have a scalar tail.
constexpr int64_t kAlign = 16;

inline int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Largest block whose tile and two b x dim operands fit in ~1 MiB (a per-core
// L2): 384 up to dim ~ 140, 208 at dim = 512.
int64_t MaxBlock(int64_t dim) {
  constexpr int64_t kFloats = (1 << 20) / 4;
  int64_t b = kMaxBlock;
  while (b > kMinBlock && b * b + 2 * b * dim > kFloats) b -= kAlign;
  return b;
}

// Block size for a row or column extent n processed by independent tasks
// (one per block): at least 2 blocks per thread when n allows.
int64_t ChooseBlock(int64_t n, int64_t dim, int threads) {
  const int64_t share = RoundUp((n + 2 * threads - 1) / (2 * threads), kAlign);
  return std::clamp<int64_t>(share, kAlign, MaxBlock(dim));
}

// Block size for the symmetric schedule, whose rounds of n/(2*block) tile
// pairs are separated by barriers: minimises rounds x (pairs per thread) x
// tile cost. The 64/b term models the GEMM's lower efficiency on smaller
// tiles (384 beat 256 by ~10% at N = 16384; 256 wins at N = 4096, where 384
// leaves a thread idle in every round).
int64_t ChooseSymmetricBlock(int64_t n, int64_t dim, int threads) {
  if (n <= 2 * kMinBlock) return ChooseBlock(n, dim, threads);
  const int64_t max_block = MaxBlock(dim);
  int64_t best = max_block;
  double best_cost = std::numeric_limits<double>::infinity();
  for (int64_t b = kMinBlock; b <= max_block; b += kAlign) {
    const int64_t blocks = (n + b - 1) / b;
    const int64_t teams = blocks + blocks % 2;
    const int64_t waves = (teams / 2 + threads - 1) / threads;
    const double tile = static_cast<double>(b) * b * (1.0 + 64.0 / b);
    const double cost = ((teams - 1) * waves + 0.5) * tile;
    if (cost < best_cost) {
      best_cost = cost;
      best = b;
    }
  }
  return best;
}

struct TilePair {
  int64_t row_block;
  int64_t col_block;
};
using Schedule = std::vector<std::vector<TilePair>>;

// Rounds of pairwise-disjoint block pairs covering every unordered pair once
// (round-robin "circle" method), preceded by a round of the diagonal tiles.
// Tasks of a round touch disjoint rows, so they need no locks.
Schedule SymmetricSchedule(int64_t blocks) {
  Schedule rounds;
  rounds.emplace_back();
  for (int64_t b = 0; b < blocks; ++b) rounds.back().push_back({b, b});
  const int64_t teams = blocks + (blocks % 2);
  for (int64_t r = 0; r + 1 < teams; ++r) {
    std::vector<TilePair> round;
    if (teams - 1 < blocks) round.push_back({r, teams - 1});
    for (int64_t k = 1; k < teams / 2; ++k) {
      const int64_t a = (r + k) % (teams - 1);
      const int64_t b = (r - k + (teams - 1)) % (teams - 1);
      round.push_back({std::min(a, b), std::max(a, b)});
    }
    if (!round.empty()) rounds.push_back(std::move(round));
  }
  return rounds;
}

// Rounds in which no two tiles share a row block or a column block: round r
// holds the tiles (I, (I + r) mod K), K = max(row_blocks, col_blocks).
Schedule LatinSchedule(int64_t row_blocks, int64_t col_blocks) {
  Schedule rounds;
  const int64_t k = std::max(row_blocks, col_blocks);
  for (int64_t r = 0; r < k; ++r) {
    std::vector<TilePair> round;
    for (int64_t i = 0; i < row_blocks; ++i) {
      const int64_t j = (i + r) % k;
      if (j < col_blocks) round.push_back({i, j});
    }
    if (!round.empty()) rounds.push_back(std::move(round));
  }
  return rounds;
}

template <typename Acc>
class CircleEngine {
 public:
  CircleEngine(const CircleProblem<Acc>& p, int threads)
      : p_(p),
        k_(p.gamma, p.margin),
        ref_(p.self_reference ? p.x : p.ref),
        ref_labels_(p.self_reference ? p.labels : p.ref_labels),
        m_(p.self_reference ? p.n : p.m),
        row_block_(p.self_reference ? ChooseSymmetricBlock(p.n, p.dim, threads)
                                    : ChooseBlock(p.n, p.dim, threads)),
        col_block_(p.self_reference ? row_block_
                                    : ChooseBlock(m_, p.dim, threads)),
        products_(p.x, ref_, p.dim) {}

  void Forward(const TaskRunner& run, Acc* loss, Acc* lse_pos, Acc* lse_neg) {
    const int64_t n = p_.n;
    max_pos_.assign(n, kNegInf<Acc>);
    max_neg_.assign(n, kNegInf<Acc>);
    sum_pos_.assign(n, Acc(0));
    sum_neg_.assign(n, Acc(0));
    if (p_.self_reference) {
      for (const auto& round : SymmetricSchedule(Blocks(n, row_block_))) {
        run.run(round.size(), [&](int64_t t) {
          const TilePair& tp = round[t];
          if (tp.row_block == tp.col_block) {
            ForwardTile<false>(tp.row_block, tp.col_block);
          } else {
            ForwardTile<true>(tp.row_block, tp.col_block);
          }
        });
      }
    } else {
      const int64_t col_blocks = Blocks(m_, col_block_);
      run.run(Blocks(n, row_block_), [&](int64_t i) {
        for (int64_t j = 0; j < col_blocks; ++j) ForwardTile<false>(i, j);
      });
    }
    for (int64_t i = 0; i < n; ++i) {
      const double lp = Lse(max_pos_[i], sum_pos_[i], lse_pos + 2 * i);
      const double ln = Lse(max_neg_[i], sum_neg_[i], lse_neg + 2 * i);
      loss[i] = static_cast<Acc>(Softplus(lp + ln));
    }
  }

  void Backward(const TaskRunner& run, const Acc* grad_loss,
                const Acc* lse_pos, const Acc* lse_neg, Acc* grad_x,
                Acc* grad_ref) {
    const int64_t n = p_.n;
    const int64_t dim = p_.dim;
    grad_x_ = grad_x;
    grad_ref_ = grad_ref;
    std::fill(grad_x, grad_x + n * dim, Acc(0));
    if (!p_.self_reference) std::fill(grad_ref, grad_ref + m_ * dim, Acc(0));
    scale_.resize(n);
    pos_high_.resize(n);
    neg_high_.resize(n);
    pos_low_.resize(n);
    neg_low_.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const double z = static_cast<double>(lse_pos[2 * i]) + lse_pos[2 * i + 1] +
                       lse_neg[2 * i] + lse_neg[2 * i + 1];
      scale_[i] = grad_loss[i] * static_cast<Acc>(Sigmoid(z));
      Unpack(lse_pos + 2 * i, pos_high_[i], pos_low_[i]);
      Unpack(lse_neg + 2 * i, neg_high_[i], neg_low_[i]);
    }
    const Schedule rounds =
        p_.self_reference
            ? SymmetricSchedule(Blocks(n, row_block_))
            : LatinSchedule(Blocks(n, row_block_), Blocks(m_, col_block_));
    for (const auto& round : rounds) {
      run.run(round.size(), [&](int64_t t) {
        BackwardTile(round[t].row_block, round[t].col_block);
      });
    }
  }

 private:
  struct Span {
    int64_t begin;
    int64_t size;
  };
  static int64_t Blocks(int64_t n, int64_t block) {
    return (n + block - 1) / block;
  }
  Span RowSpan(int64_t b) const {
    return {b * row_block_, std::min(row_block_, p_.n - b * row_block_)};
  }
  Span ColSpan(int64_t b) const {
    return {b * col_block_, std::min(col_block_, m_ - b * col_block_)};
  }
  // Column of row i's excluded pair (i, i + diagonal_offset) inside a tile
  // starting at column j0, or -1.
  int32_t DiagColumn(int64_t i, int64_t j0, int64_t cols) const {
    if (!p_.remove_diagonal || p_.diagonal_offset >= m_) return -1;
    const int64_t c = i - j0 + p_.diagonal_offset;
    return (c >= 0 && c < cols) ? static_cast<int32_t>(c) : -1;
  }

  // Writes a set's log-sum-exp max + log(sum) as the unevaluated sum of two
  // Acc values, out[0] (the sum rounded) + out[1] (what rounding left out),
  // and returns it in double. One float would round it to ulp(lse) / 2, and a
  // weight exp(l - lse) inherits that as its relative error: 1e-4 at
  // lse = 3,000, which a row's dominant pair (l ~ lse) would carry whole.
  // Keras's own softmax weights, exp(l - max) / sum, never round the lse.
  static double Lse(Acc max, Acc sum, Acc* out) {
    if (!(sum > Acc(0))) {
      out[0] = kNegInf<Acc>;
      out[1] = Acc(0);
      return -std::numeric_limits<double>::infinity();
    }
    const double lse = Wider(max) + std::log(Wider(sum));
    out[0] = static_cast<Acc>(lse);
    out[1] = static_cast<Acc>(lse - Wider(out[0]));
    return lse;
  }
  // The backward's reference for a set: the log-sum-exp's two parts, or +inf
  // (and 0) for an empty set, so that exp(l - ref) is 0 rather than NaN.
  static void Unpack(const Acc* lse, Acc& high, Acc& low) {
    const bool finite = std::isfinite(lse[0]);
    high = finite ? lse[0] : kPosInf<Acc>;
    low = finite ? lse[1] : Acc(0);
  }
  // Double for float; double itself is rounded as before (float64 results
  // need no more than float64).
  static double Wider(Acc v) { return static_cast<double>(v); }
  static double Softplus(double z) {
    return z > 0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z));
  }
  static double Sigmoid(double z) {
    if (z >= 0) return 1 / (1 + std::exp(-z));
    const double e = std::exp(z);
    return e / (1 + e);
  }
  // Folds a tile's maximum into a running (max, sum) log-sum-exp state and
  // returns the new maximum, the reference for this tile's exponentials.
  static Acc Rebase(Acc tile_max, Acc& max, Acc& sum) {
    if (tile_max > max) {
      if (sum > Acc(0)) sum *= std::exp(max - tile_max);
      max = tile_max;
    }
    return max;
  }

  // Span of the maxima within which one reference serves a whole tile.
  static constexpr Acc kSharedSpan = Acc(100);
  // Middle of the values of a[0:na] and b[0:nb], skipping those equal to
  // `empty` (the marker of an empty set), when they span at most kSharedSpan
  // (0 when all are skipped); false otherwise.
  static bool SharedReference(const Acc* a, int64_t na, const Acc* b,
                              int64_t nb, Acc empty, Acc& ref) {
    Acc lo = kPosInf<Acc>, hi = kNegInf<Acc>;
    for (const auto& [values, count] : {std::pair{a, na}, std::pair{b, nb}}) {
      for (int64_t k = 0; k < count; ++k) {
        if (std::isnan(values[k])) return false;  // The exact path propagates it.
        if (values[k] != empty) {
          lo = std::min(lo, values[k]);
          hi = std::max(hi, values[k]);
        }
      }
    }
    if (hi < lo) {
      ref = Acc(0);
      return true;
    }
    if (!(hi - lo <= kSharedSpan)) return false;
    ref = lo + (hi - lo) / Acc(2);
    return true;
  }
  // Adds a tile's sum of exp(l - ref), whose largest l is tile_max, to a
  // running (max, sum) log-sum-exp state.
  static void Fold(Acc tile_max, Acc ref, Acc tile_sum, Acc& max, Acc& sum) {
    if (tile_max == kNegInf<Acc>) return;
    if (tile_max > max) {
      if (sum > Acc(0)) sum *= std::exp(max - tile_max);
      max = tile_max;
    }
    sum += tile_sum * std::exp(ref - max);
  }

  // The tile's similarities. On a diagonal tile of the symmetric kernel the
  // backward takes both directions of a pair from entry (i, j), but the GEMM
  // may round x_i . x_j and x_j . x_i differently (Eigen sums row panels of
  // different heights in different orders), so the forward would give row j
  // a log-sum-exp of a logit the backward never sees. With logits near 1e6
  // (rows of norm 50) one ulp of a similarity moves a dominant pair's weight
  // by 25%. Both passes therefore read the lower triangle from the upper one.
  void TileSimilarity(const Span& rs, const Span& cs, Acc* s) const {
    products_.Similarity(rs.begin, rs.size, cs.begin, cs.size, s);
    if (!p_.self_reference || rs.begin != cs.begin) return;
    for (int64_t r = 1; r < rs.size; ++r) {
      for (int64_t c = 0; c < r; ++c) s[r * cs.size + c] = s[c * cs.size + r];
    }
  }

  template <bool kCols>
  void ForwardTile(int64_t row_block, int64_t col_block) {
    using W = typename Wide<Acc>::type;
    constexpr int64_t kWidth = Wide<Acc>::kWidth;
    const Span rs = RowSpan(row_block);
    const Span cs = ColSpan(col_block);
    const int64_t cols = cs.size;
    const int64_t vec_end = cols / kWidth * kWidth;
    std::unique_ptr<Acc[]> buf(new Acc[rs.size * cols + 2 * rs.size + 4 * cols]);
    Acc* s = buf.get();
    Acc* rmp = s + rs.size * cols;
    Acc* rmn = rmp + rs.size;
    Acc* cmp = rmn + rs.size;
    Acc* cmn = cmp + cols;
    Acc* csp = cmn + cols;
    Acc* csn = csp + cols;
    std::fill(cmp, cmp + 2 * cols, kNegInf<Acc>);
    std::fill(csp, csp + 2 * cols, Acc(0));
    TileSimilarity(rs, cs, s);
    const int32_t* rl = ref_labels_ + cs.begin;

    for (int64_t r = 0; r < rs.size; ++r) {
      const int64_t i = rs.begin + r;
      const int32_t label = p_.labels[i];
      const int32_t diag = DiagColumn(i, cs.begin, cols);
      Acc* row = s + r * cols;
      W vmp = Splat<W>(kNegInf<Acc>), vmn = vmp;
      Acc smp = kNegInf<Acc>, smn = kNegInf<Acc>;
      int64_t c = 0;
      for (; c < vec_end; c += kWidth) {
        LogitLanes<W, Acc, kCols>(k_, row, rl, c, label, diag, vmp, vmn, cmp, cmn);
      }
      for (; c < cols; ++c) {
        LogitLanes<Acc, Acc, kCols>(k_, row, rl, c, label, diag, smp, smn, cmp, cmn);
      }
      rmp[r] = std::max<Acc>(HMax(vmp), smp);
      rmn[r] = std::max<Acc>(HMax(vmn), smn);
      if (!kCols) {
        rmp[r] = Rebase(rmp[r], max_pos_[i], sum_pos_[i]);
        rmn[r] = Rebase(rmn[r], max_neg_[i], sum_neg_[i]);
        ExpSumRow<false>(r, rs, cs, s, rmp, rmn, cmp, cmn, csp, csn);
      }
    }
    if (!kCols) return;
    // One exponential per pair serves both directions when the tile's row
    // and column maxima of each set lie within kSharedSpan of each other:
    // e = exp(l - T) with T the middle of that range, and every row's and
    // column's own maximum then has |max - T| <= kSharedSpan / 2, far from
    // overflow, while the terms that underflow are below e^-(87 - 50)
    // relative to their row's and column's maxima.
    Acc tp, tn;
    // A -inf maximum marks a set with no member in that row or column.
    if (SharedReference(rmp, rs.size, cmp, cols, kNegInf<Acc>, tp) &&
        SharedReference(rmn, rs.size, cmn, cols, kNegInf<Acc>, tn)) {
      for (int64_t r = 0; r < rs.size; ++r) {
        const int64_t i = rs.begin + r;
        const int32_t label = p_.labels[i];
        const int32_t diag = DiagColumn(i, cs.begin, cols);
        const Acc* row = s + r * cols;
        W vsp = Splat<W>(Acc(0)), vsn = vsp;
        Acc ssp = 0, ssn = 0;
        int64_t c = 0;
        for (; c < vec_end; c += kWidth) {
          SharedExpLanes<W, Acc>(row, rl, c, label, diag, tp, tn, vsp, vsn,
                                 csp, csn);
        }
        for (; c < cols; ++c) {
          SharedExpLanes<Acc, Acc>(row, rl, c, label, diag, tp, tn, ssp, ssn,
                                   csp, csn);
        }
        Fold(rmp[r], tp, HSum(vsp) + ssp, max_pos_[i], sum_pos_[i]);
        Fold(rmn[r], tn, HSum(vsn) + ssn, max_neg_[i], sum_neg_[i]);
      }
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t j = cs.begin + c;
        Fold(cmp[c], tp, csp[c], max_pos_[j], sum_pos_[j]);
        Fold(cmn[c], tn, csn[c], max_neg_[j], sum_neg_[j]);
      }
      return;
    }
    for (int64_t r = 0; r < rs.size; ++r) {
      const int64_t i = rs.begin + r;
      rmp[r] = Rebase(rmp[r], max_pos_[i], sum_pos_[i]);
      rmn[r] = Rebase(rmn[r], max_neg_[i], sum_neg_[i]);
    }
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t j = cs.begin + c;
      cmp[c] = Rebase(cmp[c], max_pos_[j], sum_pos_[j]);
      cmn[c] = Rebase(cmn[c], max_neg_[j], sum_neg_[j]);
    }
    for (int64_t r = 0; r < rs.size; ++r) {
      ExpSumRow<true>(r, rs, cs, s, rmp, rmn, cmp, cmn, csp, csn);
    }
    for (int64_t c = 0; c < cols; ++c) {
      sum_pos_[cs.begin + c] += csp[c];
      sum_neg_[cs.begin + c] += csn[c];
    }
  }

  template <bool kCols>
  void ExpSumRow(int64_t r, const Span& rs, const Span& cs, const Acc* s,
                 const Acc* rmp, const Acc* rmn, const Acc* cmp,
                 const Acc* cmn, Acc* csp, Acc* csn) {
    using W = typename Wide<Acc>::type;
    constexpr int64_t kWidth = Wide<Acc>::kWidth;
    const int64_t cols = cs.size;
    const int64_t vec_end = cols / kWidth * kWidth;
    const int64_t i = rs.begin + r;
    const int32_t label = p_.labels[i];
    const int32_t diag = DiagColumn(i, cs.begin, cols);
    const int32_t* rl = ref_labels_ + cs.begin;
    const Acc* row = s + r * cols;
    W vsp = Splat<W>(Acc(0)), vsn = vsp;
    Acc ssp = 0, ssn = 0;
    int64_t c = 0;
    for (; c < vec_end; c += kWidth) {
      ExpSumLanes<W, Acc, kCols>(row, rl, c, label, diag, rmp[r], rmn[r], vsp,
                                 vsn, cmp, cmn, csp, csn);
    }
    for (; c < cols; ++c) {
      ExpSumLanes<Acc, Acc, kCols>(row, rl, c, label, diag, rmp[r], rmn[r],
                                   ssp, ssn, cmp, cmn, csp, csn);
    }
    sum_pos_[i] += HSum(vsp) + ssp;
    sum_neg_[i] += HSum(vsn) + ssn;
  }

  template <bool kCols>
  void GradTile(const Span& rs, const Span& cs, Acc* s) const {
    using W = typename Wide<Acc>::type;
    constexpr int64_t kWidth = Wide<Acc>::kWidth;
    const int64_t cols = cs.size;
    const int64_t vec_end = cols / kWidth * kWidth;
    const int32_t* rl = ref_labels_ + cs.begin;
    const int64_t j = cs.begin;
    const Acc *gc = scale_.data() + j, *phc = pos_high_.data() + j,
              *plc = pos_low_.data() + j, *nhc = neg_high_.data() + j,
              *nlc = neg_low_.data() + j;
    for (int64_t r = 0; r < rs.size; ++r) {
      const int64_t i = rs.begin + r;
      const int32_t label = p_.labels[i];
      const int32_t diag = DiagColumn(i, cs.begin, cols);
      Acc* row = s + r * cols;
      const auto wide = SplatShare<W>(scale_[i], pos_high_[i], pos_low_[i],
                                      neg_high_[i], neg_low_[i]);
      const auto narrow = SplatShare<Acc>(scale_[i], pos_high_[i], pos_low_[i],
                                          neg_high_[i], neg_low_[i]);
      int64_t c = 0;
      for (; c < vec_end; c += kWidth) {
        GradLanes<W, Acc, kCols>(k_, row, rl, c, label, diag, wide, gc, phc,
                                 plc, nhc, nlc);
      }
      for (; c < cols; ++c) {
        GradLanes<Acc, Acc, kCols>(k_, row, rl, c, label, diag, narrow, gc,
                                   phc, plc, nhc, nlc);
      }
    }
  }

  // scale * exp(ref - lse) for items [begin, begin + n): each one's weight
  // relative to the tile's reference. False when one that matters (a
  // non-empty set, a non-zero scale) is not a normal float: with a tiny or
  // huge upstream gradient it can underflow or overflow while every true
  // weight scale * exp(l - lse) is representable.
  // Taken in double, where ref - lse is exact, so that each weight is
  // rounded once.
  bool RelativeWeights(const std::vector<Acc>& high,
                       const std::vector<Acc>& low, int64_t begin, int64_t n,
                       Acc ref, Acc* out) const {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t i = begin + k;
      out[k] = static_cast<Acc>(
          Wider(scale_[i]) *
          std::exp((Wider(ref) - Wider(high[i])) - Wider(low[i])));
      if (!std::isnormal(out[k]) && scale_[i] != Acc(0) &&
          high[i] != kPosInf<Acc>) {
        return false;
      }
    }
    return true;
  }

  // GradTile<true> with one exponential per pair; false (tile untouched)
  // when the tile's finite log-sum-exps of a set span more than kSharedSpan,
  // or a relative weight leaves the normal range (RelativeWeights). Then every
  // active pair has l <= lse <= ref + kSharedSpan / 2, and the terms that
  // underflow are below e^-(87 - 50) of their row's weight.
  bool SharedGradTile(const Span& rs, const Span& cs, Acc* s) const {
    using W = typename Wide<Acc>::type;
    constexpr int64_t kWidth = Wide<Acc>::kWidth;
    const int64_t cols = cs.size;
    const int64_t vec_end = cols / kWidth * kWidth;
    Acc tp, tn;
    // Here +inf marks an empty set.
    if (!SharedReference(pos_high_.data() + rs.begin, rs.size,
                         pos_high_.data() + cs.begin, cols, kPosInf<Acc>, tp) ||
        !SharedReference(neg_high_.data() + rs.begin, rs.size,
                         neg_high_.data() + cs.begin, cols, kPosInf<Acc>, tn)) {
      return false;
    }
    std::unique_ptr<Acc[]> buf(new Acc[2 * (cols + rs.size)]);
    Acc* qp = buf.get();
    Acc* qn = qp + cols;
    Acc* pp = qn + cols;
    Acc* pn = pp + rs.size;
    if (!RelativeWeights(pos_high_, pos_low_, cs.begin, cols, tp, qp) ||
        !RelativeWeights(neg_high_, neg_low_, cs.begin, cols, tn, qn) ||
        !RelativeWeights(pos_high_, pos_low_, rs.begin, rs.size, tp, pp) ||
        !RelativeWeights(neg_high_, neg_low_, rs.begin, rs.size, tn, pn)) {
      return false;
    }
    const int32_t* rl = ref_labels_ + cs.begin;
    for (int64_t r = 0; r < rs.size; ++r) {
      const int64_t i = rs.begin + r;
      const int32_t label = p_.labels[i];
      const int32_t diag = DiagColumn(i, cs.begin, cols);
      Acc* row = s + r * cols;
      int64_t c = 0;
      for (; c < vec_end; c += kWidth) {
        SharedGradLanes<W, Acc>(k_, row, rl, c, label, diag, tp, tn, pp[r],
                                pn[r], qp, qn);
      }
      for (; c < cols; ++c) {
        SharedGradLanes<Acc, Acc>(k_, row, rl, c, label, diag, tp, tn, pp[r],
                                  pn[r], qp, qn);
      }
    }
    return true;
  }

  void BackwardTile(int64_t row_block, int64_t col_block) {
    const Span rs = RowSpan(row_block);
    const Span cs = ColSpan(col_block);
    const int64_t dim = p_.dim;
    std::unique_ptr<Acc[]> buf(new Acc[rs.size * cs.size]);
    Acc* g = buf.get();
    TileSimilarity(rs, cs, g);
    Acc* gx_rows = grad_x_ + rs.begin * dim;
    if (!p_.self_reference) {
      GradTile<false>(rs, cs, g);
      products_.AddTimesRef(g, rs.size, cs.begin, cs.size, gx_rows);
      products_.AddTransposedTimesX(g, rs.begin, rs.size, cs.size,
                                    grad_ref_ + cs.begin * dim);
    } else {
      // x plays both roles, so a tile contributes (G + G^T) to the gradient,
      // and the tile of G + G^T comes out of one pass: pair (i, j) holds both
      // directions. A diagonal tile is that whole symmetric matrix for its
      // rows; an off-diagonal one also gives its columns their rows' share.
      if (!SharedGradTile(rs, cs, g)) GradTile<true>(rs, cs, g);
      products_.AddTimesRef(g, rs.size, cs.begin, cs.size, gx_rows);
      if (row_block != col_block) {
        products_.AddTransposedTimesX(g, rs.begin, rs.size, cs.size,
                                      grad_x_ + cs.begin * dim);
      }
    }
  }

  const CircleProblem<Acc>& p_;
  const Consts<Acc> k_;
  const Acc* const ref_;
  const int32_t* const ref_labels_;
  const int64_t m_;
  const int64_t row_block_;
  const int64_t col_block_;
  const TileProducts<Acc> products_;
  std::vector<Acc> max_pos_, max_neg_, sum_pos_, sum_neg_;
  std::vector<Acc> scale_, pos_high_, neg_high_, pos_low_, neg_low_;
  Acc* grad_x_ = nullptr;
  Acc* grad_ref_ = nullptr;
};

template <typename Acc>
void Forward(const CircleProblem<Acc>& problem, const TaskRunner& run,
             Acc* loss, Acc* lse_pos, Acc* lse_neg) {
  CircleEngine<Acc>(problem, run.threads).Forward(run, loss, lse_pos, lse_neg);
}

template <typename Acc>
void Backward(const CircleProblem<Acc>& problem, const TaskRunner& run,
              const Acc* grad_loss, const Acc* lse_pos, const Acc* lse_neg,
              Acc* grad_x, Acc* grad_ref) {
  CircleEngine<Acc>(problem, run.threads)
      .Backward(run, grad_loss, lse_pos, lse_neg, grad_x, grad_ref);
}

}  // namespace

const EngineTable& ThisIsaEngine() {
  static const EngineTable table = {
      kEngineAbi,
      KERAS_MARGIN_ENGINE_ISA_NAME,
      &Forward<float>,
      &Forward<double>,
      &Backward<float>,
      &Backward<double>,
  };
  return table;
}

}  // namespace keras_margin
