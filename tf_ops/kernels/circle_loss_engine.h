// Blocked CPU implementation of the Circle loss (forward and gradient).
//
// The N x M similarity matrix is never materialised: it is produced one tile at
// a time by a small GEMM, consumed, and dropped. Between the forward and the
// backward pass only per-row log-sum-exp values survive (O(N) memory); the
// backward pass recomputes the tiles.
//
// This header has no TensorFlow dependency so that the same engine can serve
// the TF CPU kernels and, potentially, other runtimes.

#ifndef KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_ENGINE_H_
#define KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_ENGINE_H_

#include <cstdint>
#include <functional>

namespace keras_margin {

// Parallel execution provided by the caller: run(n, body) calls body(t) for
// every t in [0, n), possibly concurrently, and returns once all have
// finished. The block sizes are planned for `threads` concurrent tasks. They
// alone fix the order of every floating-point sum, so results are bitwise
// reproducible for a given value of `threads`, whatever `run` actually does.
struct TaskRunner {
  int threads = 1;
  std::function<void(int64_t num_tasks,
                     const std::function<void(int64_t)>& body)>
      run;
};

// Labels are dense int32 ids: only equality between them matters.
template <typename Acc>
struct CircleProblem {
  const Acc* x = nullptr;  // [n, dim], row-major.
  const int32_t* labels = nullptr;  // [n]
  const Acc* ref = nullptr;  // [m, dim]; ignored when self_reference.
  const int32_t* ref_labels = nullptr;  // [m]; ignored when self_reference.
  int64_t n = 0;
  int64_t m = 0;
  int64_t dim = 0;  // >= 1
  // The reference set is x itself: the similarity matrix and both masks are
  // symmetric, so every off-diagonal tile serves two row blocks.
  bool self_reference = false;
  double gamma = 1.0;
  double margin = 0.0;
  // With remove_diagonal, row i's excluded positive is reference
  // i + diagonal_offset (0 with self_reference): the anchors may be a slice of
  // a larger batch whose row index the reference set is aligned with. A row
  // for which i + diagonal_offset is no reference excludes nothing (every row
  // for an offset >= m). A negative offset must be > -n, where it still
  // excludes something, so that the index arithmetic cannot overflow.
  bool remove_diagonal = false;
  int64_t diagonal_offset = 0;
};

// Writes loss[n] and the per-row log-sum-exp of the positive and negative
// logits, which is all the backward pass needs: lse_pos and lse_neg are
// [n, 2], each row's log-sum-exp as the unevaluated sum of its two entries
// (the value rounded to Acc, then the rest), so that the backward's softmax
// weights exp(l - lse) are not off by the rounding of lse. An empty set is
// (-inf, 0).
template <typename Acc>
void CircleForward(const CircleProblem<Acc>& problem, const TaskRunner& run,
                   Acc* loss, Acc* lse_pos, Acc* lse_neg);

// Overwrites grad_x[n, dim] and, unless self_reference, grad_ref[m, dim].
// With self_reference the full gradient with respect to x (as query and as
// reference) goes to grad_x and grad_ref is not touched.
template <typename Acc>
void CircleBackward(const CircleProblem<Acc>& problem, const TaskRunner& run,
                    const Acc* grad_loss, const Acc* lse_pos,
                    const Acc* lse_neg, Acc* grad_x, Acc* grad_ref);

// Why the build that KERAS_MARGIN_ENGINE_ISA names cannot run (an unknown name,
// or a build this CPU or this library lacks), or nullptr when the engine can
// run. Callers check it before CircleForward and CircleBackward, which have no
// engine to call otherwise.
const char* EngineSelectionError();

extern template void CircleForward<float>(const CircleProblem<float>&,
                                          const TaskRunner&, float*, float*,
                                          float*);
extern template void CircleForward<double>(const CircleProblem<double>&,
                                           const TaskRunner&, double*, double*,
                                           double*);
extern template void CircleBackward<float>(const CircleProblem<float>&,
                                           const TaskRunner&, const float*,
                                           const float*, const float*, float*,
                                           float*);
extern template void CircleBackward<double>(const CircleProblem<double>&,
                                            const TaskRunner&, const double*,
                                            const double*, const double*,
                                            double*, double*);

}  // namespace keras_margin

#endif  // KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_ENGINE_H_
