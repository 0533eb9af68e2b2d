"""Render objectives: --channels ranges, per-image terms, the diversity term."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from deepdream.errors import DreamError
from deepdream.objectives import RenderObjective, Term, diversity, parse_channels

def test_parse_channels():
    assert parse_channels(["0-3", "7", "2"]) == [0, 1, 2, 3, 7]
    assert parse_channels(["ALL"]) == "all"
    for bad in (["3-1"], ["x"], ["1-"]):
        with pytest.raises(DreamError):
            parse_channels(bad)


def test_diversity_is_highest_for_identical_images():
    same = mx.ones((3, 4, 4, 5))
    assert float(diversity(same)) == pytest.approx(2.0, rel=1e-5)    # N - 1 pairs per image, cosine 1
    varied = mx.array(np.random.default_rng(0).standard_normal((3, 4, 4, 5)).astype(np.float32))
    assert float(diversity(varied)) < 2.0


def test_objective_terms_pick_each_images_target():
    act = mx.array(np.arange(2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4))
    logits = mx.array([[0.0, 5.0, 1.0], [2.0, 0.0, 7.0]])
    objective = RenderObjective([Term("class", "logits", np.array([[1], [2]])),
                                 Term("channel", "a", np.array([[0], [3]])),
                                 Term("neuron", "a", np.array([[1], [1]]))])
    value = float(objective({"logits": logits, "a": act}, objective.targets()))
    a = np.array(act)
    expected = 5 + 7 + a[0, ..., 0].mean() + a[1, ..., 3].mean() + a[0, 1, 1, 1] + a[1, 1, 1, 1]
    assert value == pytest.approx(expected, rel=1e-6)
