"""convert/cli.py: make_default_weights, the first-run conversion the scripts decide on."""

from __future__ import annotations

import pytest

import models
from convert import make_default_weights
from models.weights import read_metadata


def test_converts_the_installed_package_once_and_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DEEPDREAM_WEIGHTS_DIR", str(tmp_path))
    path = make_default_weights("efficientnet_lite0")
    assert path == tmp_path / "efficientnet_lite0_mlx.npz" and path.is_file()
    assert "converting the installed package weights (runs once)" in capsys.readouterr().err
    assert read_metadata(path)["architecture"] == "efficientnet_lite0"
    assert make_default_weights("efficientnet_lite0") == path          # present: nothing to do
    assert capsys.readouterr().err == ""
    assert models.load_model("efficientnet_lite0").class_names[281] == "tabby"


def test_a_download_is_never_started(monkeypatch, tmp_path):
    """A torchvision model's weights need a download: the error names the exporter, nothing is tried."""
    monkeypatch.setenv("DEEPDREAM_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(models.WeightsError) as err:
        make_default_weights("resnet50")
    assert "python export_resnet.py" in str(err.value) and "--from-pth" in str(err.value)
    assert list(tmp_path.iterdir()) == []
