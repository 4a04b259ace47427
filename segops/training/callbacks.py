"""The Keras callbacks of a training run: at each epoch start the dropout masks are re-seeded
from (seed, epoch) (exact resume); at each epoch end the per-class validation IoU and the
learning rate go into the history and TensorBoard, and the run state checkpoints the epoch
(:class:`segops.training.state.RunState`); plus Keras' TensorBoard callback on the chief."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from typing import Any

from segops.core import labels, layout
from segops.core.formatting import is_missing
from segops.training.state import RunState, class_key

log = logging.getLogger(__name__)


def find_metric(model: Any, cls: type) -> Any:
    """The model's first metric of type ``cls`` (compiled metrics are nested), or None."""
    stack = list(model.metrics)
    while stack:
        m = stack.pop(0)
        if isinstance(m, cls):
            return m
        stack.extend(getattr(m, "metrics", []) or [])
    return None


def reseed_random_layers(model: Any, seed: int, epoch: int) -> None:
    """Set every SeedGenerator of the model (dropout masks) to a state derived from
    (seed, epoch, layer). Their state is not in the .keras checkpoint (a reloaded Dropout draws
    a fresh seed), so without this a resumed run would draw different masks."""
    import keras
    import numpy as np

    def walk(layer: Any) -> Iterator[Any]:
        for child in getattr(layer, "layers", []):
            yield child
            yield from walk(child)

    generators = []
    for layer in walk(model):
        generators.extend(v for v in vars(layer).values() if isinstance(v, keras.random.SeedGenerator))
    for i, gen in enumerate(generators):
        mixed = np.random.SeedSequence([seed, epoch, i]).generate_state(1)[0] & 0x7FFFFFFF
        gen.state.assign(keras.ops.cast(keras.ops.convert_to_tensor([int(mixed), 0]), gen.state.dtype))


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def make_callbacks(run: RunState, class_names: tuple[str, ...] = labels.CLASS_NAMES) -> list[Any]:
    """The built-in callbacks, in the order they must run (the epoch's checkpoint first);
    ``class_names``: the label set's, in train-id order."""
    import keras

    from segops.training.metrics import MeanIoU

    class EpochEnd(keras.callbacks.Callback):
        """Per-class val IoU and lr into the history (and TensorBoard), checkpoint, early stop.
        The logs dict is left alone so the progress bar stays one readable line."""

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            reseed_random_layers(self.model, run.opts.seed, epoch)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            metric = find_metric(self.model, MeanIoU)  # holds the validation matrix after evaluate()
            extra = {
                "val_" + class_key(name): float(value)
                for name, value in zip(class_names, metric.per_class_iou(), strict=True)
            }
            extra["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            if writer is not None:
                with writer.as_default(step=epoch):
                    for name, value in extra.items():
                        if name.startswith("val_iou_") and not is_missing(value):
                            tf.summary.scalar("val_iou/" + name[len("val_iou_") :], value)
                writer.flush()
            run.end_epoch(self.model, epoch, dict(logs or {}), extra)

    writer = None
    callbacks: list[Any] = [EpochEnd()]
    if run.is_chief and not tensorboard_available():
        log.warning("the tensorboard package is not installed: no TensorBoard logs (pip install tensorboard)")
    elif run.is_chief:
        import tensorflow as tf

        logs_dir = os.path.join(run.out, layout.LOGS_DIR)
        writer = tf.summary.create_file_writer(os.path.join(logs_dir, layout.PER_CLASS_LOGS_DIR))
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=logs_dir, write_graph=False, update_freq="epoch", profile_batch=0)
        )
    return callbacks
