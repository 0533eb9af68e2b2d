"""Fixtures of the engine's tests."""

from __future__ import annotations

import pytest

import models


@pytest.fixture(scope="module")
def effnet(weights_dir) -> models.DreamModel:
    """efficientnet_lite0 with its real weights (converted from the pip package, as a first run would)."""
    from convert import make_default_weights  # the scripts' first-run conversion

    make_default_weights("efficientnet_lite0")
    return models.load_model("efficientnet_lite0")
