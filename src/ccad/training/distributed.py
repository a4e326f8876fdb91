"""Multi-worker training with ``tf.distribute.MultiWorkerMirroredStrategy`` (``ccad train --distributed``).

Workers are described by the ``TF_CONFIG`` environment variable, set by hand or
by a launcher (Ray Train's ``TensorflowTrainer`` sets it for each worker)::

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'

Every worker runs the same ``ccad train --distributed ...`` command on the same
data. Each epoch's global batch is ``--batch-size`` per worker x the number of
workers, and the learning rate is scaled linearly by the number of workers
(Goyal et al. 2017), so two workers take the same steps as one process with twice
the batch and twice the learning rate. Gradients are all-reduced every step.
The chief (worker 0, or a ``chief`` task) writes the run folder once, with a
checkpoint of the weights after every epoch in ``RUN/checkpoints/``; the others
write to a temporary folder that is removed. Multi-worker runs stream augmented
images through the backbone every epoch (the cached-views shortcut of the
single-machine default is not used), and ``--class-weight`` is not applied.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ccad.errors import ConfigError
from ccad.models.classifier import unfreeze_for_fine_tuning
from ccad.preprocessing.batches import image_batches
from ccad.training.fit import augmenter_for
from ccad.training.fit import optimizer as make_optimizer


@dataclass(frozen=True)
class Cluster:
    workers: int
    is_chief: bool
    task: str


def cluster_from_env() -> Cluster:
    """The cluster described by ``TF_CONFIG`` (one worker, chief, without it)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return Cluster(1, True, "single process (no TF_CONFIG)")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        kind, index = task["type"], int(task.get("index", 0))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"TF_CONFIG is not a valid cluster description ({e})") from e
    is_chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return Cluster(workers, is_chief, f"{kind} {index}")


def multi_worker_strategy():
    """The ``MultiWorkerMirroredStrategy`` of ``TF_CONFIG``. Call before any other TensorFlow op of the process."""
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def fit_distributed(
    model, strategy, cluster: Cluster, arrays, classes, config, checkpoint_dir
) -> list[dict[str, float]]:
    """The frozen phase and, when ``config`` asks, fine-tuning, on every worker: the global batch is
    ``batch_size`` x workers and the learning rates are scaled by the number of workers."""
    from dataclasses import replace

    scaled = replace(config, batch_size=config.batch_size * cluster.workers, lr=config.lr * cluster.workers)
    history = fit_multi_worker(model, strategy, arrays, classes, scaled, checkpoint_dir)
    if config.fine_tune_epochs:
        unfreeze_for_fine_tuning(model, config.fine_tune_from)
        history += fit_multi_worker(
            model,
            strategy,
            arrays,
            classes,
            scaled,
            checkpoint_dir,
            first_epoch=len(history),
            epochs=config.fine_tune_epochs,
            lr=config.fine_tune_lr * cluster.workers,
        )
    return history


def fit_multi_worker(
    model,
    strategy,
    arrays,
    classes,
    config,
    checkpoint_dir,
    first_epoch: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
) -> list[dict[str, float]]:
    """The streaming training loop, written out for ``MultiWorkerMirroredStrategy``.

    Keras 3's ``model.fit`` does not run under a multi-worker strategy (keras-team/keras#20585), so this is
    the custom loop of TensorFlow's distributed-training guide: ``experimental_distribute_dataset``,
    ``strategy.run`` of a gradient step, loss averaged over the *global* batch, gradients all-reduced by
    the optimizer. ``config`` holds the global batch size and the scaled learning rate. Like ``fit`` with
    ccad's callbacks, it keeps the weights of the epoch with the lowest validation loss, and it writes
    them after every epoch to ``checkpoint_dir`` (``epoch-N.weights.h5``).
    """
    import keras

    (x_train, y_train), (x_val, y_val) = arrays["train"], arrays["val"]
    k = len(classes)
    epochs = epochs or config.epochs
    with strategy.scope():
        optimizer = make_optimizer(config.optimizer, lr or config.lr)
    loss_fn = keras.losses.CategoricalCrossentropy(reduction="none")
    global_batch = config.batch_size
    train_ds = strategy.experimental_distribute_dataset(
        image_batches(x_train, y_train, global_batch, k, augmenter_for(config), config.seed)
    )
    val_ds = strategy.experimental_distribute_dataset(image_batches(x_val, y_val, global_batch, k))
    train_step, val_step = _steps(model, strategy, optimizer, loss_fn, global_batch)

    return _epochs(
        model, (train_ds, train_step, len(x_train)), (val_ds, val_step, len(x_val)), checkpoint_dir, first_epoch, epochs
    )


def _epochs(model, train, val, checkpoint_dir, first_epoch: int, epochs: int) -> list[dict[str, float]]:
    """The epochs: each (dataset, step, images) of ``train`` and ``val`` run once an epoch; the weights written
    after every epoch, the best validation loss's kept."""
    import numpy as np

    def run(dataset, step, n):
        loss = correct = 0.0
        for batch in dataset:
            batch_loss, batch_correct = step(batch)
            loss, correct = loss + float(batch_loss), correct + float(batch_correct)
        return loss / n, correct / n

    history, best, best_weights = [], np.inf, None
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(first_epoch, first_epoch + epochs):
        loss, accuracy = run(*train)
        val_loss, val_accuracy = run(*val)
        history.append(
            {
                "accuracy": accuracy,
                "loss": loss,
                "val_accuracy": val_accuracy,
                "val_loss": val_loss,
                "phase": "fine-tune" if first_epoch else "frozen",
            }
        )
        if val_loss < best:
            best, best_weights = val_loss, [np.array(w) for w in model.get_weights()]
        partial = checkpoint_dir / f"partial-epoch-{epoch + 1}.weights.h5"  # Keras needs this suffix
        model.save_weights(partial)
        os.replace(partial, checkpoint_dir / f"epoch-{epoch + 1}.weights.h5")
    if best_weights is not None:
        model.set_weights(best_weights)
    return history


def _steps(model, strategy, optimizer, loss_fn, global_batch: int):
    """(train step, validation step) as ``tf.function``s: each runs the replica step on every replica and sums
    (loss, correct) over them; the loss is averaged over the global batch, so the all-reduced gradients are
    the global batch's."""
    import tensorflow as tf

    def replica_step(images, labels, training: bool):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=training)
            per_example = loss_fn(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        if training:
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probabilities, 1), tf.argmax(labels, 1)), tf.float32))
        return tf.reduce_sum(per_example), correct

    @tf.function
    def train_step(batch):
        totals = strategy.run(replica_step, args=(*batch, True))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in totals]

    @tf.function
    def val_step(batch):
        totals = strategy.run(replica_step, args=(*batch, False))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in totals]

    return train_step, val_step
