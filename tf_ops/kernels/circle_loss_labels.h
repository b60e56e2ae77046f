// Label compaction for the blocked engine, shared by the TF CPU kernels and
// the XLA:CPU custom call (so it has no TensorFlow dependency).

#ifndef KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_LABELS_H_
#define KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_LABELS_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace keras_margin {

// The engine compares labels only for equality, through dense int32 ids.
// int32 labels already are such ids and are used in place; int64 labels are
// ranked among the distinct values of both sets, which keeps ids that differ
// beyond 32 bits distinct. `ref` is ignored with self_reference.
template <typename Tlabel>
struct CompactLabels {
  static_assert(std::is_same_v<Tlabel, int32_t> ||
                std::is_same_v<Tlabel, int64_t>);

  CompactLabels(const Tlabel* labels, int64_t n, const Tlabel* ref_labels,
                int64_t m, bool self_reference) {
    if constexpr (std::is_same_v<Tlabel, int32_t>) {
      query = labels;
      ref = self_reference ? labels : ref_labels;
    } else {
      std::vector<Tlabel> keys(labels, labels + n);
      if (!self_reference) keys.insert(keys.end(), ref_labels, ref_labels + m);
      std::sort(keys.begin(), keys.end());
      keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
      auto to_ids = [&keys](const Tlabel* v, int64_t count) {
        std::vector<int32_t> ids(count);
        for (int64_t i = 0; i < count; ++i) {
          ids[i] = static_cast<int32_t>(
              std::lower_bound(keys.begin(), keys.end(), v[i]) - keys.begin());
        }
        return ids;
      };
      query_ids = to_ids(labels, n);
      query = query_ids.data();
      if (self_reference) {
        ref = query;
      } else {
        ref_ids = to_ids(ref_labels, m);
        ref = ref_ids.data();
      }
    }
  }

  // Not copyable: query/ref may point into the vectors below.
  CompactLabels(const CompactLabels&) = delete;
  CompactLabels& operator=(const CompactLabels&) = delete;

  const int32_t* query = nullptr;
  const int32_t* ref = nullptr;
  std::vector<int32_t> query_ids, ref_ids;
};

}  // namespace keras_margin

#endif  // KERAS_MARGIN_TF_OPS_KERNELS_CIRCLE_LOSS_LABELS_H_
