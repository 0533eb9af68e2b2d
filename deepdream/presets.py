"""Named recipes: a model plus the step settings that make it dream well.

The googlenet, vgg16, vgg16_relu5, vgg19 and resnet50 recipes are the published settings of a
tool built on pytorch-deepdream's step (``--smoothing`` is its "smoothing coefficient"), run
here unchanged. The efficientnet_lite0 ones were tuned by looking at dreams of
assets/chelsea.png and assets/coffee.png with its real weights (blocks 9-10 grow eyes and dog
snouts; block 5-7 give woven textures, 12-14 busy small patterns); inception_v3's is chosen by analogy with
googlenet (no real weights could be loaded here to look at).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.base import did_you_mean

from .errors import DreamError


@dataclass(frozen=True)
class Preset:
    model: str
    layers: tuple[str, ...]
    steps: int
    lr: float
    octaves: int
    scale: float
    jitter: int
    smoothing: float
    decorrelate: str | None = None
    description: str = ""

    def values(self) -> dict[str, object]:
        """The settings this preset fixes (``DreamSettings`` field names)."""
        values: dict[str, object] = {"layers": self.layers, "steps": self.steps, "lr": self.lr,
                                     "octaves": self.octaves, "scale": self.scale, "jitter": self.jitter,
                                     "smoothing": self.smoothing}
        if self.decorrelate is not None:
            values["decorrelate"] = self.decorrelate
        return values


PRESETS: dict[str, Preset] = {
    "googlenet": Preset("googlenet", ("inception3a", "inception4e", "inception5b"), steps=22, lr=0.061,
                        octaves=4, scale=1.8, jitter=26, smoothing=0.08,
                        description="classic GoogLeNet mix: eyes, dogs, pagodas"),
    "vgg16": Preset("vgg16", ("relu4_2",), steps=24, lr=0.07, octaves=4, scale=1.8, jitter=36, smoothing=0.19,
                    description="VGG16 mid layer: dense fur and eye textures"),
    "vgg16_relu5": Preset("vgg16", ("relu5_1",), steps=24, lr=0.069, octaves=4, scale=1.8, jitter=10,
                          smoothing=0.41, description="VGG16 deep layer: animal heads and objects"),
    "vgg19": Preset("vgg19", ("relu5_2",), steps=14, lr=0.045, octaves=2, scale=1.5, jitter=27, smoothing=0.41,
                    description="VGG19 deep layer, gentle: objects emerge from the photo"),
    "resnet50": Preset("resnet50", ("layer3_2", "layer3_5"), steps=22, lr=0.13, octaves=4, scale=2.0, jitter=83,
                       smoothing=0.47, description="ResNet50 stage 3: swirling animal parts"),
    "efficientnet_lite0": Preset("efficientnet_lite0", ("block9", "block10"), steps=12, lr=0.07,
                                 octaves=4, scale=1.5, jitter=32, smoothing=0.3,
                                 description="the offline model: eyes, snouts and fur in psychedelic colours"),
    "efficientnet_lite0_natural": Preset("efficientnet_lite0", ("block10",), steps=12, lr=0.07, octaves=4,
                                         scale=1.5, jitter=32, smoothing=0.3, decorrelate="imagenet",
                                         description="the same in decorrelated colour: dogs in natural fur tones"),
    "inception_v3": Preset("inception_v3", ("Mixed_5d", "Mixed_6b"), steps=20, lr=0.065, octaves=4, scale=1.6,
                           jitter=30, smoothing=0.2,
                           description="by analogy with googlenet (not tuned on real weights)"),
}

def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise DreamError(f"unknown preset '{name}'.{did_you_mean(name, PRESETS)} "
                         f"Available presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def recipe_for_model(model_name: str) -> Preset | None:
    """The preset named after a model (its default recipe), if there is one."""
    return PRESETS.get(model_name)
