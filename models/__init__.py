"""The MLX model zoo. Importing it first puts a fast BLAS under MLX on Linux (see _blas.py).

    from models import list_models, load_model
    model = load_model("googlenet")
    out = model(model.preprocess(rgb), outputs=["inception4c", "logits"])
"""

from ._blas import ensure_fast_blas

ensure_fast_blas()  # must run before mlx.core is imported anywhere

from .base import DreamModel, UnknownLayerError  # noqa: E402
from .registry import (  # noqa: E402
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
