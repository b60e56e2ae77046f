// Op definitions for the fused Circle loss.
//
// The forward op returns, besides the per-row loss, the per-row log-sum-exp
// of the positive and of the negative logits. Those O(N) values are all the
// gradient op needs, so the N x M similarity matrix never has to be kept.

#include <cstdint>
#include <utility>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tf_ops/kernels/circle_loss_validation.h"

namespace keras_margin {
namespace {

using ::tensorflow::DataType;
using ::tensorflow::Status;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// InferenceContext::WithRank with the kernels' error message.
Status WithRank(InferenceContext* c, int input, const char* name, int rank,
                ShapeHandle* out) {
  if (c->WithRank(c->input(input), rank, out).ok()) return Status();
  return RankError(name, rank, c->DebugString(c->input(input)));
}

// Merges the lengths of two inputs that must agree; `error` builds the
// message from the two known values.
template <typename Error>
Status MergeDims(InferenceContext* c, DimensionHandle a, DimensionHandle b,
                 DimensionHandle* out, Error error) {
  if (c->Merge(a, b, out).ok()) return Status();
  return error(c->Value(a), c->Value(b));
}

// Checks embeddings [N, D], labels [N], ref_embeddings [M, D] and
// ref_labels [M] starting at input `first`, in the kernels' order and words;
// sets *n and the two embedding shapes.
Status CircleInputShapes(InferenceContext* c, int first, DimensionHandle* n,
                         ShapeHandle* x, ShapeHandle* ref) {
  ShapeHandle labels, ref_labels;
  TF_RETURN_IF_ERROR(WithRank(c, first, "embeddings", 2, x));
  if (c->ValueKnown(c->Dim(*x, 1)) && c->Value(c->Dim(*x, 1)) < 1) {
    return EmptyDimensionError(c->DebugString(*x));
  }
  TF_RETURN_IF_ERROR(WithRank(c, first + 2, "ref_embeddings", 2, ref));
  TF_RETURN_IF_ERROR(WithRank(c, first + 1, "labels", 1, &labels));
  TF_RETURN_IF_ERROR(MergeDims(
      c, c->Dim(*x, 0), c->Dim(labels, 0), n, [](int64_t want, int64_t got) {
        return LengthError("labels", want, "embeddings rows N", got);
      }));
  TF_RETURN_IF_ERROR(WithRank(c, first + 3, "ref_labels", 1, &ref_labels));
  DimensionHandle m, d;
  TF_RETURN_IF_ERROR(MergeDims(
      c, c->Dim(*ref, 0), c->Dim(ref_labels, 0), &m,
      [](int64_t want, int64_t got) {
        return LengthError("ref_labels", want, "ref_embeddings rows M", got);
      }));
  TF_RETURN_IF_ERROR(MergeDims(c, c->Dim(*x, 1), c->Dim(*ref, 1), &d,
                               [](int64_t dim, int64_t ref_dim) {
                                 return DimensionMismatchError(ref_dim, dim);
                               }));
  bool self_reference;
  TF_RETURN_IF_ERROR(c->GetAttr("self_reference", &self_reference));
  if (self_reference) {
    TF_RETURN_IF_ERROR(
        MergeDims(c, *n, m, n, [](int64_t rows, int64_t ref_rows) {
          return SelfReferenceRowsError(ref_rows, rows);
        }));
  }
  DataType t, tstate;
  TF_RETURN_IF_ERROR(c->GetAttr("T", &t));
  TF_RETURN_IF_ERROR(c->GetAttr("Tstate", &tstate));
  return CheckStateType(t, tstate);
}

Status ScalarOffset(InferenceContext* c, int input) {
  ShapeHandle unused;
  if (c->WithRank(c->input(input), 0, &unused).ok()) return Status();
  return RankError("diagonal_offset", 0, c->DebugString(c->input(input)));
}

}  // namespace

REGISTER_OP("KerasMargin>CircleLoss")
    .Input("embeddings: T")
    .Input("labels: Tlabel")
    .Input("ref_embeddings: T")
    .Input("ref_labels: Tlabel")
    .Input("diagonal_offset: int64")
    .Output("loss: T")
    .Output("lse_pos: Tstate")
    .Output("lse_neg: Tstate")
    .Attr("gamma: string")
    .Attr("margin: string")
    .Attr("remove_diagonal: bool")
    .Attr("self_reference: bool = false")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tlabel: {int32, int64} = DT_INT32")
    .Attr("Tstate: {float, double} = DT_FLOAT")
    .SetShapeFn([](InferenceContext* c) {
      DimensionHandle n;
      ShapeHandle x, ref;
      TF_RETURN_IF_ERROR(CircleInputShapes(c, 0, &n, &x, &ref));
      TF_RETURN_IF_ERROR(ScalarOffset(c, 4));
      c->set_output(0, c->Vector(n));
      c->set_output(1, c->Matrix(n, 2));
      c->set_output(2, c->Matrix(n, 2));
      return Status();
    })
    .Doc(R"doc(
Per-row Circle loss (Sun et al., 2020) with the exact semantics of
keras.losses.circle, computed block by block without materialising the N x M
similarity matrix.

embeddings: [N, D] query embeddings (expected L2-normalised), D >= 1.
labels: [N] integer class labels.
ref_embeddings: [M, D] reference embeddings.
ref_labels: [M] integer reference labels.
diagonal_offset: with remove_diagonal, row i's excluded positive is reference
  i + diagonal_offset (a scalar >= 0; 0 with self_reference).
loss: [N] softplus(lse_pos + lse_neg); 0 for rows without a positive or a
  negative.
lse_pos: [N, 2] log-sum-exp of the positive logits, as the unevaluated sum of
  each row's two entries (the value rounded to Tstate, then the rest, so that
  the gradient's softmax weights are not off by its rounding); (-inf, 0) if
  there are none.
lse_neg: [N, 2] the same for the negative logits.
gamma: scale, finite and > 0, as the decimal text of a double (a float
  attribute would round float64 hyper-parameters to float32).
margin: relaxation margin, finite, as the decimal text of a double.
remove_diagonal: exclude the (i, i + diagonal_offset) pair from the positives.
self_reference: ref_embeddings/ref_labels are the same tensors as
  embeddings/labels; only embeddings and labels are read.
Tstate: float for half, bfloat16 and float; double for double.
)doc");

REGISTER_OP("KerasMargin>CircleLossGrad")
    .Input("grad_loss: T")
    .Input("embeddings: T")
    .Input("labels: Tlabel")
    .Input("ref_embeddings: T")
    .Input("ref_labels: Tlabel")
    .Input("diagonal_offset: int64")
    .Input("lse_pos: Tstate")
    .Input("lse_neg: Tstate")
    .Output("grad_embeddings: T")
    .Output("grad_ref_embeddings: T")
    .Attr("gamma: string")
    .Attr("margin: string")
    .Attr("remove_diagonal: bool")
    .Attr("self_reference: bool = false")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tlabel: {int32, int64} = DT_INT32")
    .Attr("Tstate: {float, double} = DT_FLOAT")
    .SetShapeFn([](InferenceContext* c) {
      DimensionHandle n;
      ShapeHandle x, ref;
      TF_RETURN_IF_ERROR(CircleInputShapes(c, 1, &n, &x, &ref));
      TF_RETURN_IF_ERROR(ScalarOffset(c, 5));
      ShapeHandle grad_loss;
      DimensionHandle unused;
      TF_RETURN_IF_ERROR(WithRank(c, 0, "grad_loss", 1, &grad_loss));
      TF_RETURN_IF_ERROR(MergeDims(c, n, c->Dim(grad_loss, 0), &unused,
                                   [](int64_t want, int64_t got) {
                                     return LengthError("grad_loss", want, "N",
                                                        got);
                                   }));
      for (const auto& [input, name] :
           {std::pair{6, "lse_pos"}, std::pair{7, "lse_neg"}}) {
        ShapeHandle lse;
        if (!c->Merge(c->input(input), c->Matrix(n, 2), &lse).ok()) {
          return LseShapeError(name, c->Value(n),
                               c->DebugString(c->input(input)));
        }
      }
      c->set_output(0, x);
      c->set_output(1, ref);
      return Status();
    })
    .Doc(R"doc(
Gradient of KerasMargin>CircleLoss with respect to both embedding inputs,
recomputing the similarity tiles from the saved per-row log-sum-exps.

grad_embeddings: [N, D]. With self_reference it holds the whole gradient with
  respect to the shared tensor (as query and as reference).
grad_ref_embeddings: [M, D]; zeros with self_reference.
)doc");

}  // namespace keras_margin
