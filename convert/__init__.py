"""Weight conversion into the zoo's ``.npz`` format, and the exporters' shared command line.

Imports torch (and, for later sources, their own libraries) inside its functions; dreaming never
imports this package. It reads what it needs about each model from ``models.registry``'s facts;
``models`` never imports it back.

- ``torch_weights``: torch / torchvision state dicts -> ``weights/<name>_mlx.npz``.
- ``cli``: ``export_main`` (every ``export_*.py`` script) and ``make_default_weights`` (what a
  script runs, with a notice, when a model's weights can be made here without a download).
"""

from .cli import export_main, make_default_weights
from .torch_weights import export_model

__all__ = ["export_main", "export_model", "make_default_weights"]
