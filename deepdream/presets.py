"""Named recipes: a model plus the step settings that make it dream well.

Each architecture file declares its models' recipes (``ModelFacts.recipes``, with where their
settings come from); this module collects them from the registry, in the registry's order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from models import MODELS, Recipe
from models.base import did_you_mean

from .errors import DreamError
from .settings import DreamSettings

SETTINGS = {f.name for f in fields(DreamSettings)}


@dataclass(frozen=True)
class Preset(Recipe):
    """A recipe and the model it is for."""

    model: str = ""

    def values(self) -> dict[str, object]:
        """The settings this preset fixes: its fields named like ``DreamSettings``' (None: not fixed)."""
        return {f.name: getattr(self, f.name) for f in fields(Recipe)
                if f.name in SETTINGS and getattr(self, f.name) is not None}


PRESETS: dict[str, Preset] = {
    preset: Preset(**{f.name: getattr(recipe, f.name) for f in fields(Recipe)}, model=facts.name)
    for facts in MODELS.values()
    for preset, recipe in facts.recipes.items()
}

def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise DreamError(f"unknown preset '{name}'.{did_you_mean(name, PRESETS)} "
                         f"Available presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def recipe_for_model(model_name: str) -> Preset | None:
    """The preset named after a model (its default recipe), if there is one."""
    return PRESETS.get(model_name)
