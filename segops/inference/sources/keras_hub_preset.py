"""A keras-hub ``ImageSegmenter`` preset saved on local disk (``save_to_preset`` or a Kaggle
download): SegFormer, DeepLabV3 and the like, with the preset's own preprocessing.

The preprocessing is read from the preset's ``preprocessor.json`` (its image converter: image
size, ``scale``, ``offset``, interpolation) and applied by segops, except the converter's crop to
the aspect ratio: the whole image is resized to the converter's size (a crop would leave pixels
without a prediction), and the probabilities are resized back to the input. The network's output
is logits unless the task's config says ``activation: softmax``. The preset is untrusted: its
JSON configs may only name Keras and keras-hub classes (no Lambda), no file may lead out of the
directory, and it is deserialised in Keras' safe mode. An optional ``card.json`` may name its
classes; a preset's classes default to the 19 Cityscapes trainIds when it predicts 19.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from segops.core import labels
from segops.inference.sources import card as cards
from segops.inference.sources.base import (
    ModelSource,
    PreparedModel,
    digest,
    files_inside,
    refuse_class_count,
    set_tf_threads,
)
from segops.inference.sources.preprocessing import Preprocessing
from segops.models import export_dir
from segops.models.export_dir import ModelError, ModelInfo

METADATA = "metadata.json"
TASK = "task.json"
PREPROCESSOR = "preprocessor.json"
ALLOWED_MODULES = ("keras", "keras_hub")
UNSIZED_STRIDE = 32  # a converter without a fixed size: SegFormer's and DeepLabV3's coarsest stride
PRESET_CARD_FIELDS = ("card_version", "name", "classes", "label_set", "class_map")


def _read(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelError(f"{path} is missing: not a complete keras-hub preset") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})") from exc


def _check_config(path: str, config: Any) -> None:
    export_dir.check_keras_config(config, path)
    modules = export_dir.config_values(config, "module")  # deserialisation imports each of them
    foreign = sorted(m for m in modules if m.split(".")[0] not in ALLOWED_MODULES)
    if foreign:
        raise ModelError(f"{path} names module(s) {', '.join(foreign)}: a keras-hub preset names only keras and "
                         f"keras_hub classes; refusing to load it")  # fmt: skip


def _per_channel(path: str, field: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if len(values) not in (1, 3) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ModelError(f"{path}: image converter {field} is {value!r}; expected a number or 3 numbers")
    return tuple(float(v) for v in values)


def preset_preprocessing(directory: str) -> Preprocessing:
    """The preset's image converter as segops' :class:`Preprocessing`."""
    path = os.path.join(directory, PREPROCESSOR)
    config = _read(path).get("config", {})
    converter = config.get("image_converter")
    if not isinstance(converter, dict) or not isinstance(converter.get("config"), dict):
        raise ModelError(f"{path} has no image converter: segops needs the preset's preprocessing")
    conv = converter["config"]
    size = conv.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ModelError(f"{path}: image converter image_size is {size!r}; expected [height, width]")
    if conv.get("pad_to_aspect_ratio"):
        raise ModelError(f"{path}: the image converter pads to the aspect ratio; segops runs converters that resize")
    return Preprocessing(
        scale=_per_channel(path, "scale", conv.get("scale")),
        offset=_per_channel(path, "offset", conv.get("offset")),
        size=(size[0], size[1]) if size is not None else None,
        stride=1 if size is not None else UNSIZED_STRIDE,
        interpolation=str(conv.get("interpolation", "bilinear")),
        antialias=bool(conv.get("antialias", False)),
    )


@dataclass(frozen=True)
class KerasHubPreset(ModelSource):
    kind: ClassVar[str] = "keras-hub"
    preprocessing: Preprocessing | None = None

    @classmethod
    def claims(cls, path: str) -> bool:
        return os.path.isfile(os.path.join(path, METADATA)) and os.path.isfile(os.path.join(path, TASK))

    @classmethod
    def open(cls, directory: str) -> KerasHubPreset:
        files = files_inside(directory)
        metadata = _read(os.path.join(directory, METADATA))
        if "keras_hub_version" not in metadata:
            raise ModelError(f"{directory}/{METADATA} names no keras_hub_version: not a keras-hub preset")
        for path in files:
            if path.endswith(".json") and os.path.basename(path) != cards.CARD_FILE:
                _check_config(path, _read(path))
        task = _read(os.path.join(directory, TASK))
        task_config = task.get("config", {})
        num_classes = task_config.get("num_classes")
        if not isinstance(num_classes, int):
            raise ModelError(f"{directory}/{TASK} has no num_classes: not a keras-hub ImageSegmenter preset")
        card_file = cards.card_path(directory)
        card = cards.read_card(card_file, PRESET_CARD_FIELDS) if card_file else None
        refuse_class_count(directory, "the preset predicts", num_classes,
                           len(card.class_names) if card else labels.NUM_CLASSES)  # fmt: skip
        activation = task_config.get("activation")
        prep = replace(preset_preprocessing(directory), output_kind="probabilities" if activation == "softmax" else "logits")
        if card is not None:  # its class map, if any
            prep = replace(prep, class_map=card.preprocessing.class_map, mapped_classes=card.preprocessing.mapped_classes)
        architecture = (card.name if card and card.name else "") or str(task.get("class_name", cls.kind))
        classes = card.info_fields() if card else {"num_classes": num_classes, "class_names": list(labels.CLASS_NAMES)}
        info = ModelInfo(architecture=architecture, input_size=prep.size or (0, 0), stride=prep.stride, **classes,
                         model_id=f"{cls.kind}-{digest(files, directory)}")  # fmt: skip
        return cls(directory, info, prep)

    def load(self, threads: int = 0) -> PreparedModel:
        import keras
        import keras_hub
        from keras.src.saving.serialization_lib import SafeModeScope

        assert self.preprocessing is not None
        set_tf_threads(threads)
        with SafeModeScope(True):
            segmenter = keras_hub.models.ImageSegmenter.from_preset(self.path)
        # the network alone: segops applies the converter itself (without its crop)
        return PreparedModel(lambda x: keras.ops.convert_to_numpy(segmenter(x, training=False)), self.preprocessing)
