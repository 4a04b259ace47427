"""Where and in which precision training runs: the precision ``auto`` resolves to, the dtype
policy while the model is built, the tf.distribute strategy, and this worker's place in a
multi-worker job (TF_CONFIG)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any


def resolve_precision(precision: str) -> str:
    """auto: mixed_bfloat16 on GPUs with compute capability >= 8 (Ampere+), mixed_float16 on
    7.x (Volta/Turing), float32 otherwise and on CPU."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "float32"
    cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
    if tuple(cc) >= (8, 0):
        return "mixed_bfloat16"
    return "mixed_float16" if tuple(cc) >= (7, 0) else "float32"


def worker_info() -> tuple[int, int, bool]:
    """(this worker's index, number of workers, is chief) from TF_CONFIG (1 worker without it)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    cluster = config.get("cluster", {})
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    total = chiefs + workers
    if total <= 1:
        return 0, 1, True
    task = config.get("task", {})
    task_type, task_id = task.get("type", "worker"), int(task.get("index", 0))
    index = task_id if task_type == "chief" else chiefs + task_id
    return index, total, index == 0


def select_strategy() -> Any:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several tasks, MirroredStrategy over all
    visible GPUs when there are more than one, else the default strategy."""
    import tensorflow as tf

    if worker_info()[1] > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy set to ``name`` inside the block, restored after it."""
    import keras

    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
