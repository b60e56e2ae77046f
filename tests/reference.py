"""Independent float64 numpy references of the losses, written from the formulas."""

import numpy as np


def circle(labels, x, ref_labels=None, ref=None, gamma=80.0, margin=0.4, remove_diagonal=True):
    ref = x if ref is None else ref
    ref_labels = labels if ref_labels is None else ref_labels
    d = np.maximum(1.0 - x.astype(np.float64) @ ref.astype(np.float64).T, 0.0)
    same = labels[:, None] == ref_labels[None, :]
    pos = same.copy()
    if remove_diagonal:
        n, m = pos.shape
        pos[np.arange(min(n, m)), np.arange(min(n, m))] = False
    neg = ~same
    pos_logits = -gamma * np.maximum(margin + d, 0.0) * (margin - d)
    neg_logits = gamma * np.maximum(1.0 + margin - d, 0.0) * (1.0 - margin - d)

    def lse(logits, mask):
        out = np.full(logits.shape[0], -np.inf)
        for i in range(logits.shape[0]):
            row = logits[i][mask[i]]
            if row.size:
                top = row.max()
                out[i] = top + np.log(np.exp(row - top).sum())
        return out

    z = lse(pos_logits, pos) + lse(neg_logits, neg)
    return np.logaddexp(0.0, z)


def gce(labels, probs, q):
    p = np.maximum(np.take_along_axis(probs, labels[..., None], axis=-1)[..., 0], 1e-7)
    return (1.0 - p**q) / q
