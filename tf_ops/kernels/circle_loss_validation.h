// Argument checks shared by the CPU kernels and the XLA lowerings, so that
// both report the same InvalidArgument errors for the same bad inputs.

#ifndef KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_VALIDATION_H_
#define KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_VALIDATION_H_

#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <system_error>

#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/platform/errors.h"
#include "tensorflow/core/platform/status.h"

namespace keras_margin {

struct CircleAttrs {
  double gamma = 0.0;
  double margin = 0.0;
  bool remove_diagonal = false;
  bool self_reference = false;
};

// gamma and margin travel as the decimal text of a double (TensorFlow has no
// double attribute, a float one would round float64 hyper-parameters to
// float32, and eager execution does not take tensor attributes). The whole
// string must parse; std::from_chars is exact and locale-independent.
inline tensorflow::Status ParseDoubleAttr(const std::string& text,
                                          const char* name, double* value) {
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, *value);
  if (text.empty() || error != std::errc() || stop != end) {
    return tensorflow::errors::InvalidArgument(
        name, " must be the decimal text of a number, got \"", text, "\"");
  }
  return tensorflow::Status();
}

// The saved per-row state is accumulated in float for half, bfloat16 and float
// inputs, and in double for double inputs.
inline tensorflow::Status CheckStateType(tensorflow::DataType t,
                                         tensorflow::DataType tstate) {
  const tensorflow::DataType expected = t == tensorflow::DT_DOUBLE
                                            ? tensorflow::DT_DOUBLE
                                            : tensorflow::DT_FLOAT;
  if (tstate != expected) {
    return tensorflow::errors::InvalidArgument(
        "Tstate must be ", tensorflow::DataTypeString(expected), " when T is ",
        tensorflow::DataTypeString(t), ", got ",
        tensorflow::DataTypeString(tstate));
  }
  return tensorflow::Status();
}

// Reads and checks the attributes common to both ops; `ctx` is an
// OpKernelConstruction or an XlaOpKernelContext's construction.
template <typename Ctx>
tensorflow::Status ReadCircleAttrs(Ctx* ctx, CircleAttrs* attrs) {
  std::string gamma, margin;
  TF_RETURN_IF_ERROR(ctx->GetAttr("gamma", &gamma));
  TF_RETURN_IF_ERROR(ctx->GetAttr("margin", &margin));
  TF_RETURN_IF_ERROR(ParseDoubleAttr(gamma, "gamma", &attrs->gamma));
  TF_RETURN_IF_ERROR(ParseDoubleAttr(margin, "margin", &attrs->margin));
  TF_RETURN_IF_ERROR(ctx->GetAttr("remove_diagonal", &attrs->remove_diagonal));
  TF_RETURN_IF_ERROR(ctx->GetAttr("self_reference", &attrs->self_reference));
  if (!std::isfinite(attrs->gamma) || !(attrs->gamma > 0.0)) {
    return tensorflow::errors::InvalidArgument(
        "gamma must be finite and > 0, got ", attrs->gamma);
  }
  if (!std::isfinite(attrs->margin)) {
    return tensorflow::errors::InvalidArgument("margin must be finite, got ",
                                               attrs->margin);
  }
  tensorflow::DataType t, tstate;
  TF_RETURN_IF_ERROR(ctx->GetAttr("T", &t));
  TF_RETURN_IF_ERROR(ctx->GetAttr("Tstate", &tstate));
  return CheckStateType(t, tstate);
}

// The errors below are shared with the shape functions, so that a bad input
// gets the same message whether graph construction or a kernel catches it.
inline tensorflow::Status RankError(const char* name, int rank,
                                    const std::string& shape) {
  return tensorflow::errors::InvalidArgument(name, " must have rank ", rank,
                                             ", got shape ", shape);
}

inline tensorflow::Status LengthError(const char* name, int64_t expected,
                                      const char* what, int64_t got) {
  return tensorflow::errors::InvalidArgument(name, " must have length ",
                                             expected, " (", what, "), got ",
                                             got);
}

// D = 0 is rejected rather than given the meaning "every similarity is 0":
// an embedding without coordinates is a caller's bug, not a batch to score.
inline tensorflow::Status EmptyDimensionError(const std::string& shape) {
  return tensorflow::errors::InvalidArgument(
      "embeddings must have at least one column (D >= 1), got shape ", shape);
}

inline tensorflow::Status DimensionMismatchError(int64_t ref_dim,
                                                 int64_t dim) {
  return tensorflow::errors::InvalidArgument(
      "ref_embeddings must have the same dimension D as embeddings: ", ref_dim,
      " vs ", dim);
}

inline tensorflow::Status SelfReferenceRowsError(int64_t m, int64_t n) {
  return tensorflow::errors::InvalidArgument(
      "self_reference requires ref_embeddings to have as many rows as "
      "embeddings: M=",
      m, " vs N=", n);
}

inline tensorflow::Status CheckRank(const char* name,
                                    const tensorflow::TensorShape& shape,
                                    int rank) {
  if (shape.dims() != rank) return RankError(name, rank, shape.DebugString());
  return tensorflow::Status();
}

inline tensorflow::Status CheckLength(const char* name,
                                      const tensorflow::TensorShape& shape,
                                      int64_t expected, const char* what) {
  TF_RETURN_IF_ERROR(CheckRank(name, shape, 1));
  if (shape.dim_size(0) != expected) {
    return LengthError(name, expected, what, shape.dim_size(0));
  }
  return tensorflow::Status();
}

// embeddings [N, D], labels [N], ref_embeddings [M, D] and ref_labels [M],
// D >= 1; self_reference additionally requires M == N.
inline tensorflow::Status ValidateCircleInputs(
    const tensorflow::TensorShape& x, const tensorflow::TensorShape& labels,
    const tensorflow::TensorShape& ref,
    const tensorflow::TensorShape& ref_labels, bool self_reference) {
  TF_RETURN_IF_ERROR(CheckRank("embeddings", x, 2));
  if (x.dim_size(1) < 1) return EmptyDimensionError(x.DebugString());
  TF_RETURN_IF_ERROR(CheckRank("ref_embeddings", ref, 2));
  TF_RETURN_IF_ERROR(
      CheckLength("labels", labels, x.dim_size(0), "embeddings rows N"));
  TF_RETURN_IF_ERROR(CheckLength("ref_labels", ref_labels, ref.dim_size(0),
                                 "ref_embeddings rows M"));
  if (ref.dim_size(1) != x.dim_size(1)) {
    return DimensionMismatchError(ref.dim_size(1), x.dim_size(1));
  }
  if (self_reference && ref.dim_size(0) != x.dim_size(0)) {
    return SelfReferenceRowsError(ref.dim_size(0), x.dim_size(0));
  }
  return tensorflow::Status();
}

// diagonal_offset: a scalar >= 0, and 0 with self_reference (the symmetric
// tiles pair row i with column i).
inline tensorflow::Status ValidateDiagonalOffset(
    const tensorflow::TensorShape& shape) {
  if (shape.dims() != 0) {
    return tensorflow::errors::InvalidArgument(
        "diagonal_offset must be a scalar, got shape ", shape.DebugString());
  }
  return tensorflow::Status();
}

inline tensorflow::Status ValidateDiagonalOffsetValue(int64_t offset,
                                                      bool self_reference) {
  if (offset < 0 || (self_reference && offset != 0)) {
    return tensorflow::errors::InvalidArgument(
        "diagonal_offset must be >= 0, and 0 with self_reference; got ",
        offset);
  }
  return tensorflow::Status();
}

// A log-sum-exp state of the forward op: [N, 2], each row's value as the
// unevaluated sum of its two entries.
inline tensorflow::Status LseShapeError(const char* name, int64_t n,
                                        const std::string& shape) {
  return tensorflow::errors::InvalidArgument(
      name, " must have shape [N, 2] = [", n,
      ", 2] (the forward op's output), got shape ", shape);
}

inline tensorflow::Status CheckLseShape(const char* name,
                                        const tensorflow::TensorShape& shape,
                                        int64_t n) {
  if (shape.dims() != 2 || shape.dim_size(0) != n || shape.dim_size(1) != 2) {
    return LseShapeError(name, n, shape.DebugString());
  }
  return tensorflow::Status();
}

// The extra inputs of the gradient op: grad_loss [N], lse_pos and lse_neg
// [N, 2].
inline tensorflow::Status ValidateCircleGradInputs(
    const tensorflow::TensorShape& grad_loss,
    const tensorflow::TensorShape& lse_pos,
    const tensorflow::TensorShape& lse_neg, int64_t n) {
  TF_RETURN_IF_ERROR(CheckLength("grad_loss", grad_loss, n, "N"));
  TF_RETURN_IF_ERROR(CheckLseShape("lse_pos", lse_pos, n));
  return CheckLseShape("lse_neg", lse_neg, n);
}

}  // namespace keras_margin

#endif  // KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_VALIDATION_H_
