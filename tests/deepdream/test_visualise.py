"""The render loop on efficientnet_lite0's real weights: plans from flags, seeded renders and snapshots, the
diversity term at work, and class renders that an independent torch implementation reads back as their class."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import models
from deepdream.classes import imagenet_class_names
from deepdream.errors import DreamError
from deepdream.image_io import save_image
from deepdream.objectives import Objective, diversity
from deepdream.visualise import Renderer, RenderSettings, plan_render, tile_targets

GOLDFISH, PIZZA = 1, 963

@pytest.fixture(scope="module")
def effnet(weights_dir):
    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    return models.load_model("efficientnet_lite0")


def test_plan_render_objectives_add_and_validate(effnet):
    plan = plan_render(effnet, class_spec="pizza", layers=["block10"])
    assert [t.kind for t in plan.objective.terms] == ["class", "layer"] and plan.label == "pizza_block10"
    sweep = plan_render(effnet, layers=["block5"], channels=[0, 1, 2], sweep=True)
    assert [v for _, v in sweep.items] == [0, 1, 2] and sweep.sweep_term == 0
    with pytest.raises(DreamError, match="has 80 channels"):
        plan_render(effnet, neuron="block5:80")
    with pytest.raises(DreamError, match="--sweep needs something"):
        plan_render(effnet, neuron="block5:3", sweep=True)
    # A class list sweeps its classes (one class too: an atlas's last batch may hold one); a single class
    # beside a channel sweep stays in every image's objective.
    assert [i for _, i in plan_render(effnet, class_spec=["pizza"], sweep=True).items] == [963]
    mixed = plan_render(effnet, class_spec=["pizza"], layers=["block5"], channels=[0, 1], sweep=True)
    assert [t.kind for t in mixed.objective.terms] == ["class", "channel"] and mixed.sweep_term == 1
    with pytest.raises(DreamError, match="--class 0-3 renders several classes: add --sweep"):
        plan_render(effnet, class_spec=["0-3"])


def test_render_is_seeded_and_snapshots(effnet):
    plan = plan_render(effnet, neuron="block5:3")
    settings = RenderSettings(height=64, width=64, steps=5, seed=0, save_every=2)
    renderer = Renderer(effnet, plan.objective, settings)
    shots = []
    a = renderer.render(1, plan.objective.targets(), np.random.default_rng(0), snapshot=shots.append, progress=False)
    b = renderer.render(1, plan.objective.targets(), np.random.default_rng(0), progress=False)
    np.testing.assert_array_equal(a, b)
    assert len(shots) == 2 and not np.array_equal(shots[0], shots[1]) and not np.array_equal(shots[1], a)


def test_diversity_pushes_a_batch_apart(effnet):
    """Same seeds and steps: with the diversity term the batch's Gram matrices are less alike."""
    plan = plan_render(effnet, neuron="block5:3", diversity=1.0)
    layer = plan.objective.diversity_layer
    similarity = {}
    for weight in (0.0, 100.0):
        objective = Objective(tile_targets(plan.objective, 3).terms).with_diversity(weight, layer)
        settings = RenderSettings(height=64, width=64, steps=8, batch=3, diversity=weight, seed=0)
        images = Renderer(effnet, objective, settings).render(3, objective.targets(), np.random.default_rng(0),
                                                              progress=False)
        acts = effnet(effnet.preprocess(mx.array(images)), outputs=[layer])[layer]
        similarity[weight] = float(diversity(acts))
    assert similarity[100.0] < similarity[0.0] - 0.05, similarity


#: The class proof's render: the defaults (256 px, fft), with 48 steps instead of 128 so the pair
#: fits CI's minute on 2 cores.
PROOF = RenderSettings(steps=48, seed=0)


def readback_top5(paths: list[Path]) -> list[tuple[list[int], np.ndarray]]:
    """The torch reference of efficientnet_lite0 with the package's weights, on each saved PNG rescaled
    to 300 px and cropped 240 px off-centre: (top-5 class indices, probabilities)."""
    import torch
    from PIL import Image

    from convert.torch_weights import package_state_dict
    from torchref.efficientnet_lite0 import EfficientNetLite0Torch

    net = EfficientNetLite0Torch()
    net.load_state_dict(package_state_dict("efficientnet_lite0")[0])
    net.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    results = []
    for path in paths:
        img = Image.open(path).convert("RGB").resize((300, 300), Image.Resampling.BICUBIC)
        crop = np.asarray(img, np.float32)[20:260, 40:280] / 255.0
        x = (torch.from_numpy(crop).permute(2, 0, 1)[None] - mean) / std
        with torch.no_grad():
            probs = torch.softmax(net(x), dim=-1)[0].numpy()
        results.append((list(np.argsort(-probs)[:5]), probs))
    return results


def test_class_renders_read_back_as_their_class(effnet, tmp_path):
    """--class goldfish / pizza with --param fft, from noise at 256 px: the saved 8-bit PNGs, re-read by
    the independent torch implementation at another scale and crop, have their class in the top 5; and
    their colours stay within the sigmoid's range instead of clipping."""
    plan = plan_render(effnet, class_spec="goldfish")
    renderer = Renderer(effnet, plan.objective, PROOF)
    both = plan.objective.with_targets(0, np.array([[GOLDFISH], [PIZZA]], np.int32))
    images = renderer.render(2, both.targets(), np.random.default_rng(0), progress=False)
    paths = [save_image(tmp_path / f"{name}.png", image) for name, image in zip(("goldfish", "pizza"), images)]
    for image in images:
        assert image.std() > 0.1              # not grey: the render has contrast and colour
        # Nor neon: hardly a pixel with a channel pinned at black or white by the sigmoid.
        assert ((image < 0.02) | (image > 0.98)).any(axis=-1).mean() < 0.02
    for (top5, probs), wanted in zip(readback_top5(paths), (GOLDFISH, PIZZA)):
        names = imagenet_class_names()
        assert wanted in top5, f"{names[wanted]}: top-5 {[names[i] for i in top5]}"
        print(f"{names[wanted]}: rank {top5.index(wanted) + 1}, p={probs[wanted]:.3f}")
