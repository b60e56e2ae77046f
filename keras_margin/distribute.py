"""What the losses need from ``tf.distribute``: the replica context, global sums, gathers.

Keras reduces each replica's slice of the batch on its own and divides by the replica count,
which equals the single-device loss only when every replica sees as many counted samples as
the others, and which makes Circle form pairs only inside each slice. These helpers let the
losses use global counts and a global reference set instead. With no strategy, or a strategy
with one replica, every helper is a no-op.
"""

import warnings

from keras_margin import backend


def multi_replica_context():
    """The current ``tf.distribute`` replica context if it spans several replicas, else None.

    Returns None in a cross-replica context, on backends other than TensorFlow, and inside an
    XLA-compiled replica function of a non-TPU strategy: there, cross-replica collectives
    cannot run (TensorFlow raises a merge_call error), so the losses fall back to Keras's
    per-replica behaviour, and Circle warns once that it pairs within each replica only.
    """
    if not backend.is_tensorflow():
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    if in_xla_region() and not isinstance(context.strategy, tf.distribute.TPUStrategy):
        _warn_collectives_unavailable_once()
        return None
    return context


def replicas_in_sync():
    """The replica count of the current ``tf.distribute`` strategy; 1 on other backends."""
    if not backend.is_tensorflow():
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def in_xla_region():
    """Whether the current graph is being traced for XLA (``jit_compile`` or TPU).

    TensorFlow's own test, used by its array gradients; private API.
    """
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


_collectives_warned = False


def _warn_collectives_unavailable_once():
    global _collectives_warned
    if not _collectives_warned:
        _collectives_warned = True
        warnings.warn(
            "keras_margin: this replica function is compiled with XLA under a non-TPU "
            "tf.distribute strategy, where cross-replica collectives cannot run. Losses reduce "
            "each replica's slice as Keras does (exact only for equal slices), and Circle pairs "
            "embeddings within each replica only. Compile the whole step with the strategy "
            "(TPUStrategy) or leave the replica function uncompiled for global results.",
            RuntimeWarning,
            stacklevel=4,
        )


def sum_over_replicas(context, value):
    """Sum of ``value`` over all replicas (a constant: counts and weights carry no gradient)."""
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))


def replica_share(context, total, divisor, rows):
    """This replica's loss: its part of the single-device loss ``sum(total) / sum(divisor)``.

    Args:
        context: The multi-replica context.
        total: This replica's sum of weighted per-sample losses.
        divisor: This replica's part of the divisor (element count, valid rows or weights), or
            None for a plain sum.
        rows: This replica's batch rows.

    Its gradient is that of ``total / sum(divisor)``, so the replicas' summed gradients are the
    single-device ones. Its *value* also carries a constant correction, zero when every replica
    has as many rows, so that both ways of aggregating replica losses report the single-device
    loss ``L``, even and uneven slices alike:

    - a custom loop's ``strategy.reduce("sum", loss)``: the values sum to ``L``;
    - Keras's ``fit`` and ``evaluate``, which log the mean of ``R * loss`` weighted by each
      replica's rows (``R`` replicas, ``B`` rows in all): ``sum(R * loss * rows) / B = L``.

    The correction ``alpha * (rows - B / R)`` sums to zero over the replicas, and ``alpha`` is
    the one number that makes the second equation hold as well.
    """
    import tensorflow as tf

    dtype = total.dtype
    plain_sum = divisor is None
    # Counts and sums of squares must stay exact: bookkeeping in float32 at least.
    work = tf.float64 if dtype == tf.float64 else tf.float32
    total_w = tf.cast(tf.stop_gradient(total), work)
    rows = tf.cast(rows, work)
    divisor = tf.zeros((), work) if divisor is None else tf.cast(divisor, work)
    sums = sum_over_replicas(context, tf.stack([divisor, total_w, total_w * rows, rows, rows**2]))
    global_divisor, global_total, rows_weighted_total, global_rows, rows_squared = tf.unstack(sums)
    if plain_sum:
        share, global_divisor = total, tf.ones((), work)
    else:
        share = tf.math.divide_no_nan(total, tf.cast(global_divisor, dtype))
    replicas = tf.cast(context.num_replicas_in_sync, work)
    loss = tf.math.divide_no_nan(global_total, global_divisor)
    logged_by_keras = tf.math.divide_no_nan(rows_weighted_total, global_divisor)
    spread = rows_squared - global_rows * global_rows / replicas  # 0 for equal slices
    alpha = tf.math.divide_no_nan(loss * global_rows / replicas - logged_by_keras, spread)
    return share + tf.cast(alpha * (rows - global_rows / replicas), dtype)


def rows_before_this_replica(context, tensor):
    """How many rows of the global batch the replicas before this one hold (int64).

    Replicas may hold different numbers of rows.
    """
    import tensorflow as tf

    with tf.device(_replica_device(context, tensor)):
        rows_per_replica = context.all_gather(tf.shape(tensor, out_type=tf.int64)[:1], axis=0)
        return tf.reduce_sum(rows_per_replica[: context.replica_id_in_sync_group])


def gather_replicas(context, embeddings, labels):
    """Every replica's embeddings and labels, in replica order: the global batch.

    Gradients flow back to the replica that owns each row.
    """
    import tensorflow as tf

    with tf.device(_replica_device(context, embeddings)):
        # Gathered one by one: a batched gather concatenates its inputs, which needs one dtype.
        return (
            context.all_gather(tf.identity(embeddings), axis=0),
            context.all_gather(tf.identity(labels), axis=0),
        )


def _replica_device(context, tensor):
    # MultiWorkerMirroredStrategy with one device per worker traces replica code without a
    # device scope, and all_gather needs to know the device its inputs live on.
    return tensor.device or context.strategy.extended.worker_devices[0]
