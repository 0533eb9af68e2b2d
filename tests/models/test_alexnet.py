"""AlexNet port against torchvision with random weights (torch's default init: random biases
already), through our exporter script. The parity recipe and its bounds: tests/parity.py."""

from __future__ import annotations

import pytest

import models  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx

torch = pytest.importorskip("torch")

from models import UnknownLayerError  # noqa: E402
from models.alexnet import TORCH_KEYS, AlexNet  # noqa: E402
from tests.parity import (  # noqa: E402
    Port, check_export_refused, check_layer_names, check_min_input_size,
    check_parameter_stages_are_modules, check_parity, features_stage, pair_fixture,
    recorded_stage_names, renamed_anchors,
)

PORT = Port("alexnet", "export_alexnet.py", size=(100, 131),  # non-square; pool5 is 2x3, adaptively pooled to 6x6
            anchors=renamed_anchors(TORCH_KEYS), torch_stage=features_stage(AlexNet.LAYER_NAMES))
pair = pair_fixture(PORT)


def test_logits_and_input_gradient_match_torchvision(pair) -> None:
    check_parity(pair, ["logits"], seed=1)


def test_dream_layers_match_torchvision(pair) -> None:
    # relu4 (the alternative classic choice), the defaults and pool5 (adaptive pooling's input).
    check_parity(pair, sorted({"relu4", "pool5", *pair.model.default_layers}), seed=2)


def test_layer_names_and_errors(pair) -> None:
    model = pair.model
    assert model.layer_names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3",
                                 "conv4", "relu4", "conv5", "relu5", "pool5"]
    check_layer_names(model)
    with pytest.raises(UnknownLayerError, match="Did you mean 'relu5'.*conv1, relu1"):
        model(mx.zeros((1, 64, 64, 3)), outputs=["relu_5"])
    with pytest.raises(UnknownLayerError, match="pool5"):
        model.check_layers(["relu4_2"])


def test_forward_stops_at_the_deepest_requested_layer(pair) -> None:
    # 20 px: pool2 and later could not even run (pool1 of 20 px is 2x2).
    out, ran = recorded_stage_names(pair.model, mx.zeros((1, 20, 20, 3)), ["relu1", "conv2"])
    assert set(out) == {"relu1", "conv2"}
    assert ran == ["conv1", "relu1", "pool1", "conv2"]


def test_parameter_stages_are_modules(pair) -> None:
    check_parameter_stages_are_modules(pair.model, ("conv", "fc"))


def test_min_input_size(pair) -> None:
    check_min_input_size(pair, empty_below="pool5")


def test_exporter_refuses_another_architecture(tmp_path) -> None:
    resnet_keys = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}
    check_export_refused(PORT.script, [], resnet_keys, tmp_path, "conv1.weight")
