"""Loading a model for a script, with its default weights converted on first use.

The one place a script's model load may convert weights: when the default weights file is
missing but can be made here without a download (a pip package's checkpoint), it is converted
first, with a notice (``convert.make_default_weights``, imported only then);
otherwise the error names the exporter command. ``models.load_model`` itself never converts.
"""

from __future__ import annotations

from models import DreamModel, default_weights_path, load_model, missing_weights_error, weights_available


def load_dream_model(name: str, weights: str | None = None) -> DreamModel:
    """Load a model; its default weights missing, convert them first when that needs no download
    (with a notice), else an error that names the exporter command (never a download mid-dream)."""
    if weights is None and not default_weights_path(name).exists():
        if not weights_available(name):
            raise missing_weights_error(name)
        from convert import make_default_weights  # only on a first run

        make_default_weights(name)
    return load_model(name, weights=weights)
