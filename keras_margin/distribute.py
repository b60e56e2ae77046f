"""What the losses need from ``tf.distribute``: the replica context, global sums, gathers.

Keras reduces each replica's slice of the batch on its own and divides by the replica count,
which equals the single-device loss only when every replica sees as many counted samples as
the others, and which makes Circle form pairs only inside each slice. These helpers let the
losses use global counts and a global reference set instead. With no strategy, or a strategy
with one replica, every helper is a no-op.
"""

import keras


def multi_replica_context():
    """The current ``tf.distribute`` replica context if it spans several replicas, else None.

    Returns None in a cross-replica context and on backends other than TensorFlow.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def sum_over_replicas(context, value):
    """Sum of ``value`` over all replicas (a constant: counts and weights carry no gradient)."""
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(value))


def gather_with_local_rows_first(context, embeddings, labels):
    """All replicas' embeddings and labels, rotated so that this replica's rows come first.

    Row ``i`` of the result is then this replica's row ``i``, so the (i, i) diagonal that
    Circle removes from the positives is still the pair of each anchor with itself. Replicas
    may hold different numbers of rows. Gradients flow back to the replica that owns each row.
    """
    import tensorflow as tf

    # MultiWorkerMirroredStrategy with one device per worker traces replica code without a
    # device scope, and all_gather needs to know the device its inputs live on.
    device = embeddings.device or context.strategy.extended.worker_devices[0]
    with tf.device(device):
        # Gathered one by one: a batched gather concatenates its inputs, which needs one dtype.
        all_embeddings = context.all_gather(tf.identity(embeddings), axis=0)
        all_labels = context.all_gather(tf.identity(labels), axis=0)
        rows_per_replica = context.all_gather(tf.shape(embeddings)[:1], axis=0)
        rows_before = tf.reduce_sum(rows_per_replica[: context.replica_id_in_sync_group])
        return (
            tf.roll(all_embeddings, shift=-rows_before, axis=0),
            tf.roll(all_labels, shift=-rows_before, axis=0),
        )
