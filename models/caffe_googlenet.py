"""Caffe's GoogLeNet deploy graph in MLX, NHWC: the network of the 2015 DeepDream notebook.

One architecture, three models: ``bvlc_googlenet`` (BVLC model zoo, ImageNet, 1000 classes),
``googlenet_places205`` and ``googlenet_places365`` (MIT/CSAIL, scenes). It is not torchvision's
GoogLeNet (``models.googlenet``): no BatchNorm, LRN after the first two convolutions, 5x5 kernels
in the "5x5" branches, max pools with Caffe's rounding (output sizes round up), a 3x3/2 pool
before inception_5a.

Layer names are Caffe's blob names (``inception_4c/output``, ``inception_4d/3x3_reduce``), so
published recipes work as written; ``inception4c``-style aliases name the block outputs and
``logits`` is ``loss3/classifier``. Caffe runs every ReLU in place, so a convolution's blob is
its rectified output, and so is ours.

Parameter paths are the Caffe layer names with ``/`` as ``.`` (``inception_4c.3x3_reduce.weight``),
so the conversion from a caffemodel or neural-dream's ``.pth`` is a rename table, not code.

Input: Caffe's own, 0-255 with the training mean subtracted, in BGR order. ``mean``/``std``
(RGB, [0, 1] units) make ``preprocess`` produce 0-255 mean-subtracted values, and the first stage
(``data``) reverses the channels to BGR, so the engine steps and clamps in Caffe's units
exactly as the notebook did (a channel permutation changes neither ``mean|g|`` nor the clamp).

``pool5/7x7_s1`` is a global average: Caffe's 7x7/1 average at 224 px, the only input size
at which Caffe's deploy graph reaches the classifier, and its natural extension elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from fastlayers.concat import concat_channels
from fastlayers.conv import Conv2d
from fastlayers.pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d

from .base import IMAGENET_STD, CaffeWeights, DreamModel, ModelFacts, Recipe, Stage, UnknownLayerError

#: The auxiliary heads (Caffe's loss1/* and loss2/*): the dream files leave them out, and
#: fine-tuning starts them afresh, as for torchvision's GoogLeNet.
AUX_PREFIXES = ("loss1.", "loss2.")

#: Per model: class count and the BGR mean (0-255) its input had subtracted in training.
#: BVLC's deploy mean; the 2015 notebook used the ImageNet mean for the Places network too.
VARIANTS: dict[str, tuple[int, tuple[float, float, float]]] = {
    "bvlc_googlenet": (1000, (104.0, 117.0, 123.0)),
    "googlenet_places205": (205, (104.0, 117.0, 123.0)),
    "googlenet_places365": (365, (104.0, 117.0, 123.0)),
}

#: Each inception block's input channels and branch widths:
#: (in, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj).
INCEPTIONS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "inception_3a": (192, 64, 96, 128, 16, 32, 32),
    "inception_3b": (256, 128, 128, 192, 32, 96, 64),
    "inception_4a": (480, 192, 96, 208, 16, 48, 64),
    "inception_4b": (512, 160, 112, 224, 24, 64, 64),
    "inception_4c": (512, 128, 128, 256, 24, 64, 64),
    "inception_4d": (512, 112, 144, 288, 32, 64, 64),
    "inception_4e": (528, 256, 160, 320, 32, 128, 128),
    "inception_5a": (832, 256, 160, 320, 32, 128, 128),
    "inception_5b": (832, 384, 192, 384, 48, 128, 128),
}
#: The blobs of one inception block, in Caffe's order (the concat takes 1x1, 3x3, 5x5, pool_proj).
BRANCH_BLOBS = ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool", "pool_proj", "output")
#: The max pool (3x3/2, Caffe rounding) that follows these blocks.
POOL_AFTER = {"inception_3b": "pool3/3x3_s2", "inception_4e": "pool4/3x3_s2"}
#: The auxiliary heads: which block output each reads.
AUX_INPUTS = {"loss1": ("inception_4a", 512), "loss2": ("inception_4d", 528)}


def layer_names() -> tuple[str, ...]:
    """Every blob a dream can read, input to output (the classifier is ``logits``)."""
    names = ["conv1/7x7_s2", "pool1/3x3_s2", "pool1/norm1", "conv2/3x3_reduce", "conv2/3x3", "conv2/norm2",
             "pool2/3x3_s2"]
    for block in INCEPTIONS:
        names += [f"{block}/{blob}" for blob in BRANCH_BLOBS]
        if block in POOL_AFTER:
            names.append(POOL_AFTER[block])
    return (*names, "pool5/7x7_s1")


def caffe_layers(aux: bool = True) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Caffe layer name -> (kind, weight shape in Caffe's layout) for every layer with weights.

    Convolutions are (out, in, kh, kw) like torch's; InnerProducts (out, in). The Caffe side of
    the conversion and the tests' reference both read this table.
    """
    def conv(out: int, inp: int, k: int) -> tuple[str, tuple[int, ...]]:
        return "Convolution", (out, inp, k, k)

    table = {"conv1/7x7_s2": conv(64, 3, 7), "conv2/3x3_reduce": conv(64, 64, 1), "conv2/3x3": conv(192, 64, 3)}
    for block, (cin, c1, c3r, c3, c5r, c5, cp) in INCEPTIONS.items():
        table.update({f"{block}/1x1": conv(c1, cin, 1), f"{block}/3x3_reduce": conv(c3r, cin, 1),
                      f"{block}/3x3": conv(c3, c3r, 3), f"{block}/5x5_reduce": conv(c5r, cin, 1),
                      f"{block}/5x5": conv(c5, c5r, 5), f"{block}/pool_proj": conv(cp, cin, 1)})
    if aux:
        for head, (_, cin) in AUX_INPUTS.items():
            table.update({f"{head}/conv": conv(128, cin, 1), f"{head}/fc": ("InnerProduct", (1024, 2048)),
                          f"{head}/classifier": ("InnerProduct", (0, 1024))})  # 0: the class count
    table["loss3/classifier"] = ("InnerProduct", (0, 1024))
    return table


def parameter_key(caffe_layer: str) -> str:
    """Our parameter path prefix of a Caffe layer: ``inception_4c/3x3`` -> ``inception_4c.3x3``."""
    return caffe_layer.replace("/", ".")


# -- building blocks ---------------------------------------------------------------------------------

class ConvReLU(Conv2d):
    """A convolution and the ReLU Caffe runs in place on its output (one blob, one stage), the
    ReLU in the convolution's own pass (``fastlayers.activation``)."""

    def __call__(self, x: mx.array) -> mx.array:
        return super().__call__(x, activation="relu")


@lru_cache(maxsize=None)
def _channel_window(channels: int, size: int) -> mx.array:
    """(C, C) 0/1 band matrix: column c sums the ``size`` channels centred on c (zeros beyond the ends)."""
    idx = mx.arange(channels)
    return (mx.abs(idx[:, None] - idx[None, :]) <= size // 2).astype(mx.float32)


class LRN(nn.Module):
    """Caffe's LRN across channels: ``x / (k + alpha / size * sum of x^2 over size channels)^beta``.

    The windowed sum is one product with a banded (C, C) matrix: the channels are the last
    (contiguous) axis, where a matrix product is the fast path and shifted channel slices are
    strided views; its gradient is another product with the same (symmetric) matrix.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def __call__(self, x: mx.array) -> mx.array:
        window = _channel_window(x.shape[-1], self.size)
        sums = (x * x) @ window
        return x * mx.power(self.k + (self.alpha / self.size) * sums, -self.beta)


class Pool(nn.Module):
    """A parameter-free pooling stage (Caffe rounds output sizes up, as torch's ceil_mode)."""

    def __init__(self, kernel: int, stride: int, padding: int = 0) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def __call__(self, x: mx.array) -> mx.array:
        return max_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=True)


class Inception(nn.Module):
    """Four branches, concatenated as Caffe's ``output``: 1x1 | 3x3_reduce -> 3x3 | 5x5_reduce -> 5x5 |
    max pool 3x3/1 -> pool_proj. Children are keyed by Caffe's layer suffixes (``self["3x3"]``)."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self["1x1"] = ConvReLU(cin, c1, 1)
        self["3x3_reduce"] = ConvReLU(cin, c3r, 1)
        self["3x3"] = ConvReLU(c3r, c3, 3, padding=1)
        self["5x5_reduce"] = ConvReLU(cin, c5r, 1)
        self["5x5"] = ConvReLU(c5r, c5, 5, padding=2)
        self["pool_proj"] = ConvReLU(cin, cp, 1)
        self.pool = Pool(3, 1, 1)

    def blobs(self, x: mx.array) -> dict[str, mx.array]:
        """Every blob of the block, keyed by its suffix (``output`` is the concatenation)."""
        out = {"1x1": self["1x1"](x), "3x3_reduce": self["3x3_reduce"](x), "5x5_reduce": self["5x5_reduce"](x),
               "pool": self.pool(x)}
        out["3x3"] = self["3x3"](out["3x3_reduce"])
        out["5x5"] = self["5x5"](out["5x5_reduce"])
        out["pool_proj"] = self["pool_proj"](out["pool"])
        out["output"] = concat_channels([out["1x1"], out["3x3"], out["5x5"], out["pool_proj"]])
        return out

    def __call__(self, x: mx.array) -> mx.array:
        return self.blobs(x)["output"]


class AuxHead(nn.Module):
    """loss1/* or loss2/*: average pool 5x5/3, conv 1x1 (128) + ReLU, fc 1024 + ReLU, dropout 0.7, classifier.

    At 224 px the pool leaves 4x4 (the 2048 inputs of ``fc``); at other training sizes the pooled
    map is brought to 4x4 by adaptive pooling so the head still fits.
    """

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvReLU(cin, 128, 1)
        self.fc = nn.Linear(2048, 1024)
        self.classifier = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(0.7)

    def __call__(self, x: mx.array) -> mx.array:
        x = avg_pool2d(x, 5, 3, ceil_mode=True)
        if x.shape[1:3] != (4, 4):
            x = adaptive_avg_pool2d(x, 4)
        x = self.conv(x)
        # Caffe flattens (C, H, W); the converter reorders fc's columns to our (H, W, C) order.
        x = x.reshape(x.shape[0], -1)
        return self.classifier(self.dropout(nn.relu(self.fc(x))))


# -- the network ---------------------------------------------------------------------------------------

class CaffeGoogLeNet(DreamModel):
    """bvlc_googlenet / googlenet_places205 / googlenet_places365 (``variant``)."""

    NAME = "bvlc_googlenet"
    LAYER_NAMES = layer_names()
    DEFAULT_LAYERS = ("inception_4c/output",)
    LAYER_ALIASES = {**{block.replace("_", ""): f"{block}/output" for block in INCEPTIONS},
                     "loss3/classifier": "logits"}
    #: The smallest side for which every stage down to the logits has a non-empty output.
    MIN_INPUT_SIZE = 31

    def __init__(self, num_classes: int = 1000, variant: str = "bvlc_googlenet", aux_logits: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown Caffe GoogLeNet variant '{variant}'; one of {', '.join(VARIANTS)}")
        self.NAME = variant
        bgr_mean = VARIANTS[variant][1]
        # preprocess: (rgb - mean) / std = 255 * rgb - mean, in RGB order (the ``data`` stage flips it)
        self.mean = tuple(m / 255.0 for m in reversed(bgr_mean))
        self.std = (1.0 / 255.0,) * 3
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        self.conv1 = {"7x7_s2": ConvReLU(3, 64, 7, stride=2, padding=3)}
        self.conv2 = {"3x3_reduce": ConvReLU(64, 64, 1), "3x3": ConvReLU(64, 192, 3, padding=1)}
        for block, widths in INCEPTIONS.items():
            self[block] = Inception(*widths)
        if aux_logits:
            for head, (_, cin) in AUX_INPUTS.items():
                self[head] = AuxHead(cin, num_classes)
        # num_classes 0: a file without loss3/classifier (neural-dream's bvlc_googlenet.pth) dreams
        # on every other layer.
        if num_classes > 0:
            self.loss3 = {"classifier": nn.Linear(1024, num_classes)}
        self.dropout = nn.Dropout(0.4)
        self._pool = Pool(3, 2)
        self._norm = LRN()

    def _data(self, x: mx.array) -> mx.array:
        return x[..., ::-1]  # RGB -> BGR, Caffe's channel order

    def _pool5(self, x: mx.array) -> mx.array:
        return mx.mean(x, axis=(1, 2), keepdims=True)  # Caffe's blob is (N, C, 1, 1)

    def _classify(self, x: mx.array) -> mx.array:
        if self.num_classes <= 0:
            raise UnknownLayerError(self._no_classifier())
        return self.loss3["classifier"](self.dropout(x.reshape(x.shape[0], -1)))

    def _no_classifier(self) -> str:
        return (f"this {self.NAME} file has no loss3/classifier (neural-dream's converted files may lack it), so it "
                "has no logits; dream on any other layer, or convert the original .caffemodel with "
                f"`python export_googlenet.py --model {self.NAME} --from-caffemodel FILE`")

    def stages(self) -> list[Stage]:
        stages: list[Stage] = [
            ("data", self._data),
            ("conv1/7x7_s2", self.conv1["7x7_s2"]), ("pool1/3x3_s2", self._pool), ("pool1/norm1", self._norm),
            ("conv2/3x3_reduce", self.conv2["3x3_reduce"]), ("conv2/3x3", self.conv2["3x3"]),
            ("conv2/norm2", self._norm), ("pool2/3x3_s2", self._pool),
        ]
        for block in INCEPTIONS:
            stages.append((f"{block}/output", self[block]))
            if block in POOL_AFTER:
                stages.append((POOL_AFTER[block], self._pool))
        return [*stages, ("pool5/7x7_s1", self._pool5), ("logits", self._classify)]

    def resolve(self, layer: str) -> str:
        return self.LAYER_ALIASES.get(layer, layer)

    def check_layers(self, layers: Sequence[str], allow_logits: bool = True) -> None:
        resolved = [self.resolve(layer) for layer in layers]
        if allow_logits and self.num_classes <= 0 and "logits" in resolved:
            raise UnknownLayerError(self._no_classifier())
        unknown = [layer for layer, name in zip(layers, resolved) if name == layer]
        super().check_layers(unknown, allow_logits)

    def __call__(self, x: mx.array, outputs: Sequence[str] = ("logits",)) -> dict[str, mx.array]:
        """The requested blobs (aliases allowed), stopping after the block of the deepest one."""
        self.check_layers(outputs)
        wanted = {self.resolve(layer) for layer in outputs}
        found: dict[str, mx.array] = {}
        for name, stage in self.stages():
            if isinstance(stage, Inception):
                block = name.split("/")[0]
                blobs = stage.blobs(x)
                found.update({f"{block}/{k}": v for k, v in blobs.items() if f"{block}/{k}" in wanted})
                x = blobs["output"]
            else:
                x = stage(x)
                if name in wanted:
                    found[name] = x
            if len(found) == len(wanted):
                break
        return {layer: found[self.resolve(layer)] for layer in outputs}

    def forward_with_aux(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """(logits, loss1 classifier, loss2 classifier) for training with the auxiliary losses."""
        if not self.aux_logits:
            raise ValueError("forward_with_aux needs the auxiliary heads: build the model with aux_logits=True")
        heads = {f"{block}/output": head for head, (block, _) in AUX_INPUTS.items()}
        aux = []
        for name, stage in self.stages():
            x = stage(x)
            if name in heads:
                aux.append(self[heads[name]](x))
        return x, aux[0], aux[1]


def build(num_classes: int = 1000, **config: Any) -> CaffeGoogLeNet:
    """A freshly initialised network; ``config``: variant (the model name), aux_logits."""
    return CaffeGoogLeNet(num_classes=num_classes, **config)


# -- the models' facts ------------------------------------------------------------------------------

#: The 2015 Caffe notebook's step, ``1.5 / mean|g| * g`` in Caffe's 0-255 input units, as an ``lr``
#: (ImageNet-normalised units, which the engine scales to each model's input units).
NOTEBOOK_LR = 1.5 / (255.0 * sum(IMAGENET_STD) / 3)


def notebook_2015(layer: str, description: str) -> Recipe:
    """The 2015 DeepDream notebook's ``deepdream()``: 4 octaves at 1.4, 10 steps of ``1.5 / mean|g|``,
    jitter 32, no smoothing."""
    return Recipe((layer,), steps=10, lr=NOTEBOOK_LR, octaves=4, scale=1.4, jitter=32, smoothing=0.0,
                  grad_norm="mean-abs", smooth=False, description=description)


_WEIGHTS = {
    "bvlc_googlenet": CaffeWeights("http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel",
                                   "bvlc_googlenet.caffemodel", "405fc5acd08a3bb12de8ee5e23a96bec22f08204",
                                   "BVLC model zoo bvlc_googlenet.caffemodel (Caffe, 2014)"),
    "googlenet_places205": CaffeWeights("http://places.csail.mit.edu/model/googlenet_places205.tar.gz",
                                        "googlenet_places205.tar.gz", None,
                                        "MIT Places googlenet_places205 caffemodel (Caffe, 2014)"),
    "googlenet_places365": CaffeWeights("http://places2.csail.mit.edu/models_places365/googlenet_places365.caffemodel",
                                        "googlenet_places365.caffemodel", None,
                                        "CSAIL Places365 googlenet_places365.caffemodel (Caffe, 2016)"),
}
_RECIPES = {
    "bvlc_googlenet": notebook_2015("inception_4c/output", "the 2015 DeepDream notebook as published: eyes and dog faces"),
    # The notebook's step on the Places networks; the layer is a choice (no real Places weights
    # could be loaded where this was written).
    "googlenet_places205": notebook_2015("inception_4b/output", "the notebook's step on the Inceptionism post's "
                                         "Places network (layer not tuned on real weights here)"),
    "googlenet_places365": notebook_2015("inception_4b/output", "the same on CSAIL's Places365 GoogLeNet "
                                         "(not tuned on real weights here)"),
}

MODELS = tuple(
    ModelFacts(
        name, build, exporter=f"python export_googlenet.py --model {name}",
        classifier_weight="loss3.classifier.weight",
        # As for torchvision's GoogLeNet: edges, textures and simple parts stay as trained.
        freeze_to="inception_3b/output",
        config={"variant": name}, recipes={name: _RECIPES[name]}, caffe=_WEIGHTS[name], aux_prefixes=AUX_PREFIXES,
    )
    for name in VARIANTS
)
