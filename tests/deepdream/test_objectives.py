"""Render objectives: --channels ranges, per-image terms, the diversity term."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from deepdream.errors import DreamError
from deepdream.objectives import KINDS, Objective, Term, diversity, parse_channels

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
    objective = Objective([Term("class", "logits", np.array([[1], [2]])),
                           Term("channel", "a", np.array([[0], [3]])),
                           Term("neuron", "a", np.array([[1], [1]]))])
    value = float(objective({"logits": logits, "a": act}, objective.targets()))
    a = np.array(act)
    expected = 5 + 7 + a[0, ..., 0].mean() + a[1, ..., 3].mean() + a[0, 1, 1, 1] + a[1, 1, 1, 1]
    assert value == pytest.approx(expected, rel=1e-6)


def test_terms_compose_with_plus_minus_and_times():
    """Lucid's algebra: a weighted sum of terms, each summed over the batch."""
    act = mx.array(np.random.default_rng(1).standard_normal((2, 3, 3, 4)).astype(np.float32))
    rows = np.array([[0], [3]])
    channel, layer, spread = Term("channel", "a", rows), Term("layer", "a"), Term("diversity", "a")
    objective = 2 * channel + layer / 4 - 0.5 * spread
    assert [t.kind for t in objective.terms] == ["channel", "layer", "diversity"]
    assert [t.weight for t in objective.terms] == [2.0, 0.25, -0.5]
    a = np.array(act)
    expected = (2 * (a[0, ..., 0].mean() + a[1, ..., 3].mean()) + np.mean(a * a, axis=(1, 2, 3)).sum() / 4
                - 0.5 * float(diversity(act)))
    assert float(objective({"a": act}, objective.targets())) == pytest.approx(expected, rel=1e-5)
    assert sum([channel, layer], Objective()).terms == (channel, layer)
    assert (-objective).terms[0].weight == -2.0 and objective.diversity_layer == "a"
    with pytest.raises(ValueError, match="unknown objective term 'colour'"):
        Term("colour", "a")


def test_the_kind_table_gives_every_term_its_value():
    assert set(KINDS) == {"layer", "class", "channel", "neuron", "guide", "diversity"}
    act = mx.array(np.arange(2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4))
    picked = Term("channel", "a", channels=(1, 3))
    assert picked.select(act).shape == (2, 3, 3, 2)
    values = np.array(Term("layer", "a", channels=(1, 3)).value(act, None))
    np.testing.assert_allclose(values, np.mean(np.array(act)[..., [1, 3]] ** 2, axis=(1, 2, 3)), rtol=1e-6)


def test_the_key_names_the_structure_not_the_targets():
    """The memory profile is keyed on it: other targets, weights or guides share a profile."""
    a = Term("channel", "a", np.array([[1]])) + Term("guide", "b", np.ones((4, 2), np.float32), channels=(0, 1))
    b = Term("channel", "a", np.array([[7]])) * 3 + Term("guide", "b", np.zeros((9, 2), np.float32), channels=(5, 6))
    assert a.key == b.key == "channel:a+guide:b[channels]"
    assert (Term("layer", "a") + Term("layer", "b")).key != Term("layer", "a").key


def test_targets_are_inputs_of_the_compiled_step():
    """One compiled function serves every target: the targets are arguments, not constants."""
    act = mx.array(np.random.default_rng(2).standard_normal((1, 2, 2, 5)).astype(np.float32))
    objective = Objective([Term("channel", "a", np.array([[0]]))])
    traces = []

    def value(targets):
        traces.append(1)
        return objective({"a": act}, targets)

    compiled = mx.compile(value)
    first = float(compiled(objective.targets()))
    second = float(compiled(objective.with_targets(0, np.array([[4]])).targets()))
    assert len(traces) == 1 and first != second
    assert second == pytest.approx(float(np.array(act)[..., 4].mean()), rel=1e-6)
