"""The MLX model zoo. Importing it first puts a fast BLAS under MLX on Linux (``fastlayers._blas``).

    from models import list_models, load_model
    model = load_model("googlenet")
    out = model(model.preprocess(rgb), outputs=["inception4c", "logits"])
"""

from fastlayers import ensure_fast_blas  # first: the fast BLAS must load before mlx.core

from .base import DreamModel, ModelFacts, Recipe, UnknownLayerError
from .registry import (
    MODELS,
    WeightsError,
    build_model,
    default_weights_path,
    get_facts,
    list_models,
    load_model,
    missing_weights_error,
    weights_available,
)

__all__ = [
    "DreamModel", "ModelFacts", "Recipe", "UnknownLayerError", "MODELS", "WeightsError", "build_model",
    "default_weights_path", "get_facts", "list_models", "load_model", "missing_weights_error",
    "weights_available", "ensure_fast_blas",
]
