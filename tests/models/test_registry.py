"""models/registry.py: the model facts each architecture file declares, collected in one place,
and load_model, which reads weights but never converts or downloads them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from mlx.utils import tree_flatten

import models
from models.registry import ARCHITECTURES, MODELS, build_model

ROOT = Path(__file__).resolve().parents[2]
NOT_ARCHITECTURES = {"__init__", "base", "registry", "weights"}


def test_every_architecture_file_is_listed_and_collected():
    """A new architecture file is listed in ARCHITECTURES, and its MODELS are all the registry needs."""
    files = {f"models.{p.stem}" for p in (ROOT / "models").glob("*.py") if p.stem not in NOT_ARCHITECTURES}
    assert files == set(ARCHITECTURES)
    declared = [facts.name for module in ARCHITECTURES for facts in importlib.import_module(module).MODELS]
    assert declared == list(MODELS)


@pytest.mark.parametrize("name", list(MODELS))
def test_facts_agree_with_the_model(name):
    facts = MODELS[name]
    model = build_model(name)       # lazily initialised: nothing is computed
    assert model.NAME == name
    stages = [stage for stage, _ in model.stages()]
    assert facts.freeze_to in stages and facts.freeze_to != "logits"
    params = [key for key, _ in tree_flatten(model.parameters())]
    assert [key for key in params if key.endswith(facts.classifier_weight)], facts.classifier_weight
    for preset, recipe in facts.recipes.items():
        model.check_layers(recipe.layers, allow_logits=False)
        assert recipe.description, preset
    assert (facts.torchvision is None) == (facts.torchvision_weights is None)
    assert sum(source is not None for source in (facts.torchvision, facts.package, facts.caffe)) == 1  # one source
    assert facts.package is None or facts.torch_reference is not None       # its --random-init
    assert facts.exporter.startswith("python export_")
    assert (ROOT / facts.exporter.split()[1]).is_file()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "googlenet"])
def test_load_model_names_the_exporter_and_writes_nothing(name, monkeypatch, tmp_path):
    """No default weights: one line naming the exporter, even where converting would work offline
    (the scripts decide that, ``convert.make_default_weights``); nothing is written."""
    monkeypatch.setenv("DEEPDREAM_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(models.WeightsError) as err:
        models.load_model(name)
    message = str(err.value)
    assert MODELS[name].exporter in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_an_empty_weights_file_says_so(tmp_path):
    (tmp_path / "mine.npz").write_bytes(b"")
    with pytest.raises(models.WeightsError, match=r"is an empty file \(0 bytes\)"):
        models.load_model(weights=tmp_path / "mine.npz")
