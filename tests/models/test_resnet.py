"""ResNet50 port against torchvision with random weights (BatchNorm's four tensors randomised),
through our exporter script. The parity recipe and its bounds: tests/parity.py."""

from __future__ import annotations

import numpy as np
import pytest

import models  # noqa: F401  (fast BLAS before mlx)
import mlx.core as mx

torch = pytest.importorskip("torch")

from models import UnknownLayerError  # noqa: E402
from tests.parity import (  # noqa: E402
    Port, check_export_refused, check_layer_names, check_parameter_stages_are_modules, check_parity,
    pair_fixture, random_batchnorm, recorded_stage_names,
)

PORT = Port("resnet50", "export_resnet.py", size=(96, 128),  # non-square; layer4 is 3x4
            init=random_batchnorm, torch_stage=lambda tv, layer: tv.get_submodule(layer.replace("_", ".")))
pair = pair_fixture(PORT)
# The recipe layers (resnet50 --layers layer3_2 layer3_5), the stem's padded max pool and the
# first, strided block of layer2 (projection shortcut); the defaults are added in the test.
CHECKED_LAYERS = ["maxpool", "layer2_0", "layer3_2", "layer3_5"]


def test_weights_keep_torchvision_keys(pair) -> None:
    from mlx.utils import tree_flatten

    ours = dict(tree_flatten(pair.model.parameters()))
    theirs = {k: v for k, v in pair.tv.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours.keys() == theirs.keys()
    assert "layer1.0.downsample.0.weight" in ours and "layer1.1.downsample.0.weight" not in ours
    assert ours["layer2.0.conv2.weight"].shape == (128, 3, 3, 128)  # OHWI
    np.testing.assert_array_equal(np.array(ours["layer3.4.bn2.running_var"]),
                                  theirs["layer3.4.bn2.running_var"].numpy())


def test_logits_and_input_gradient_match_torchvision(pair) -> None:
    check_parity(pair, ["logits"], seed=1)


def test_dream_layers_match_torchvision(pair) -> None:
    check_parity(pair, sorted({*CHECKED_LAYERS, *pair.model.default_layers}), seed=2)


def test_layer_names_and_errors(pair) -> None:
    model = pair.model
    names = model.layer_names
    assert names[:5] == ["conv1", "bn1", "relu", "maxpool", "layer1_0"]
    assert names[-1] == "layer4_2" and len(names) == 4 + 3 + 4 + 6 + 3
    check_layer_names(model)
    with pytest.raises(UnknownLayerError, match="Did you mean 'layer3_5'.*layer4_2"):
        model(mx.zeros((1, 64, 64, 3)), outputs=["layer3.5"])
    with pytest.raises(UnknownLayerError, match="layer1_0"):
        model.check_layers(["layer3_6"])


def test_forward_stops_at_the_deepest_requested_layer(pair) -> None:
    out, ran = recorded_stage_names(pair.model, mx.zeros((1, 64, 64, 3)), ["layer1_0", "bn1"])
    assert set(out) == {"layer1_0", "bn1"}
    assert ran == ["conv1", "bn1", "relu", "maxpool", "layer1_0"]


def test_parameter_stages_are_modules(pair) -> None:
    check_parameter_stages_are_modules(pair.model, ("conv", "bn", "layer"))


def test_min_input_size(pair) -> None:
    model, size = pair.model, pair.model.MIN_INPUT_SIZE
    out = model(mx.zeros((1, size, size, 3)), outputs=["layer4_2", "logits"])
    assert out["layer4_2"].shape == (1, 1, 1, 2048)  # the smallest size that still has a full layer4 cell
    assert out["logits"].shape == (1, 1000) and bool(mx.isfinite(out["logits"]).all())


def test_exporter_refuses_another_architecture(tmp_path) -> None:
    check_export_refused(PORT.script, [], {"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path,
                         "not a resnet50 state dict")
