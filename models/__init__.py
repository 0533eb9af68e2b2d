"""The MLX model zoo. Importing it first puts a fast BLAS under MLX on Linux (``fastlayers._blas``).

    from models import list_models, load_model
    model = load_model("googlenet")
    out = model(model.preprocess(rgb), outputs=["inception4c", "logits"])
"""

from fastlayers import ensure_fast_blas  # first: the fast BLAS must load before mlx.core

from .base import DreamModel, UnknownLayerError  
from .registry import (  
    MODELS,
    WeightsError,
    build_model,
    default_weights_path,
    get_spec,
    list_models,
    load_model,
    weights_available,
)

__all__ = [
    "DreamModel", "UnknownLayerError", "MODELS", "WeightsError", "build_model", "default_weights_path",
    "get_spec", "list_models", "load_model", "weights_available", "ensure_fast_blas",
]
