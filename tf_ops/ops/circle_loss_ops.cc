// Op definitions for the fused Circle loss.
//
// The forward op returns, besides the per-row loss, the per-row log-sum-exp
// of the positive and of the negative logits. Those O(N) values are all the
// gradient op needs, so the N x M similarity matrix never has to be kept.

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

// Checks embeddings [N, D], labels [N], ref_embeddings [M, D] and
// ref_labels [M] starting at input `first`; sets *n, *m and the two
// embedding shapes.
Status CircleInputShapes(InferenceContext* c, int first, DimensionHandle* n,
                         ShapeHandle* x, ShapeHandle* ref) {
  ShapeHandle labels, ref_labels;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(first), 2, x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(first + 1), 1, &labels));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(first + 2), 2, ref));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(first + 3), 1, &ref_labels));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*x, 0), c->Dim(labels, 0), n));
  DimensionHandle m, d;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*ref, 0), c->Dim(ref_labels, 0), &m));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(*x, 1), c->Dim(*ref, 1), &d));
  bool self_reference;
  TF_RETURN_IF_ERROR(c->GetAttr("self_reference", &self_reference));
  if (self_reference) TF_RETURN_IF_ERROR(c->Merge(*n, m, n));
  DataType t, tstate;
  TF_RETURN_IF_ERROR(c->GetAttr("T", &t));
  TF_RETURN_IF_ERROR(c->GetAttr("Tstate", &tstate));
  return CheckStateType(t, tstate);
}

}  // namespace

REGISTER_OP("KerasMargin>CircleLoss")
    .Input("embeddings: T")
    .Input("labels: Tlabel")
    .Input("ref_embeddings: T")
    .Input("ref_labels: Tlabel")
    .Output("loss: T")
    .Output("lse_pos: Tstate")
    .Output("lse_neg: Tstate")
    .Attr("gamma: float")
    .Attr("margin: float")
    .Attr("remove_diagonal: bool")
    .Attr("self_reference: bool = false")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tlabel: {int32, int64} = DT_INT32")
    .Attr("Tstate: {float, double} = DT_FLOAT")
    .SetShapeFn([](InferenceContext* c) {
      DimensionHandle n;
      ShapeHandle x, ref;
      TF_RETURN_IF_ERROR(CircleInputShapes(c, 0, &n, &x, &ref));
      const ShapeHandle rows = c->Vector(n);
      c->set_output(0, rows);
      c->set_output(1, rows);
      c->set_output(2, rows);
      return Status();
    })
    .Doc(R"doc(
Per-row Circle loss (Sun et al., 2020) with the exact semantics of
keras.losses.circle, computed block by block without materialising the N x M
similarity matrix.

embeddings: [N, D] query embeddings (expected L2-normalised).
labels: [N] integer class labels.
ref_embeddings: [M, D] reference embeddings.
ref_labels: [M] integer reference labels.
loss: [N] softplus(lse_pos + lse_neg); 0 for rows without a positive or a
  negative.
lse_pos: [N] log-sum-exp of the positive logits, -inf if there are none.
lse_neg: [N] log-sum-exp of the negative logits, -inf if there are none.
gamma: scale, finite and > 0.
margin: relaxation margin.
remove_diagonal: exclude the (i, i) pair from the positives.
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
    .Input("lse_pos: Tstate")
    .Input("lse_neg: Tstate")
    .Output("grad_embeddings: T")
    .Output("grad_ref_embeddings: T")
    .Attr("gamma: float")
    .Attr("margin: float")
    .Attr("remove_diagonal: bool")
    .Attr("self_reference: bool = false")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tlabel: {int32, int64} = DT_INT32")
    .Attr("Tstate: {float, double} = DT_FLOAT")
    .SetShapeFn([](InferenceContext* c) {
      DimensionHandle n;
      ShapeHandle x, ref, unused;
      TF_RETURN_IF_ERROR(CircleInputShapes(c, 1, &n, &x, &ref));
      for (int input : {0, 5, 6}) {
        ShapeHandle v;
        TF_RETURN_IF_ERROR(c->WithRank(c->input(input), 1, &v));
        TF_RETURN_IF_ERROR(c->Merge(v, c->Vector(n), &unused));
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
