"""VGG16/VGG19 ports against torchvision with random weights (random biases too), through our
exporter script. The parity recipe and its bounds: tests/parity.py."""

from __future__ import annotations

import pytest

import models  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx

torch = pytest.importorskip("torch")

from models import UnknownLayerError  # noqa: E402
from models.vgg import VGG16, VGG19, WIDTHS, feature_keys, torch_keys  # noqa: E402
from tests.parity import (  # noqa: E402
    Port, check_export_refused, check_layer_names, check_min_input_size,
    check_parameter_stages_are_modules, check_parity, features_stage, pair_fixture, random_biases,
    recorded_stage_names, renamed_anchors,
)


def vgg_port(arch: type) -> Port:
    return Port(arch.NAME, "export_vgg.py", script_args=("--model", arch.NAME),
                size=(96, 128),  # non-square, and pool5 (3x4) must be adaptively pooled up to 7x7
                init=random_biases, anchors=renamed_anchors(torch_keys(arch.DEPTH)),
                torch_stage=features_stage(arch.LAYER_NAMES))


pair = pair_fixture(vgg_port(VGG16), vgg_port(VGG19))
# Recipe layers (vgg16 --layers relu4_2 / relu5_1, vgg19 --layers relu5_2) plus pool5, the
# input of the adaptive pooling; the default layers are added in the test.
CHECKED_LAYERS = {"vgg16": ["relu4_2", "relu5_1", "pool5"], "vgg19": ["relu5_2"]}


def test_logits_and_input_gradient_match_torchvision(pair) -> None:
    check_parity(pair, ["logits"], seed=1)


def test_dream_layers_match_torchvision(pair) -> None:
    check_parity(pair, sorted(set(CHECKED_LAYERS[pair.port.name]) | set(pair.model.default_layers)), seed=2)


def test_layer_names_and_errors(pair) -> None:
    model = pair.model
    last = "relu5_3" if pair.port.name == "vgg16" else "relu5_4"
    assert model.layer_names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert model.layer_names[-2:] == [last, "pool5"]
    check_layer_names(model)
    with pytest.raises(UnknownLayerError, match=f"Did you mean 'relu4_2'.*{last}"):
        model(mx.zeros((1, 64, 64, 3)), outputs=["relu4-2"])
    with pytest.raises(UnknownLayerError, match="conv1_1"):
        model.check_layers(["inception4c"])


def test_forward_stops_at_the_deepest_requested_layer(pair) -> None:
    # 8 px: later stages could not even run (pool4 of 8 px is empty).
    out, ran = recorded_stage_names(pair.model, mx.zeros((1, 8, 8, 3)), ["relu1_2", "conv2_1"])
    assert set(out) == {"relu1_2", "conv2_1"}
    assert ran == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1"]


def test_parameter_stages_are_modules(pair) -> None:
    check_parameter_stages_are_modules(pair.model, ("conv", "fc"))


def test_min_input_size(pair) -> None:
    check_min_input_size(pair, empty_below="pool5")


def test_exporter_refuses_a_checkpoint_of_the_other_depth(tmp_path) -> None:
    # VGG16's conv layers (zeros: cheap to write) offered as VGG19: refused, nothing written.
    state_dict, in_channels = {}, 3
    for key, name in feature_keys(16).items():
        width = WIDTHS[int(name[4]) - 1]
        state_dict[f"{key}.weight"], state_dict[f"{key}.bias"] = torch.zeros(width, in_channels, 3, 3), torch.zeros(width)
        in_channels = width
    check_export_refused("export_vgg.py", ["--model", "vgg19"], state_dict, tmp_path, "not a vgg19 state dict")
