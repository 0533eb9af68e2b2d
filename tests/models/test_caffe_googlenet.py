"""The 2015 models (bvlc_googlenet, googlenet_places205/365): Caffe files in, parity with an
independent torch implementation of Caffe's graph, the notebook's step, errors a user meets.

The reference (``torchref.caffe_googlenet``) gets random He-initialised weights, so
activations keep a trained network's scale and the LRNs really divide. Its weights travel the
way users' files do: a ``.caffemodel`` written in both encodings by ``tests/caffe_files.py``
(independently of the reader), and neural-dream's ``.pth`` layout; every file goes through
``export_googlenet.py`` as a user runs it.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

import models
import mlx.core as mx
from mlx.utils import tree_flatten

torch = pytest.importorskip("torch")
pytest.importorskip("google.protobuf")

from convert import caffe  # noqa: E402
from models import caffe_googlenet as arch  # noqa: E402
from torchref.caffe_googlenet import CaffeGoogLeNetTorch  # noqa: E402
from tests.caffe_files import caffe_layers_from_neural_dream, vgg_like_layers, write_caffemodel  # noqa: E402
from tests.parity import offline_env, rel_err, run_script  # noqa: E402

SCRIPT = "export_googlenet.py"
ODD = (201, 157)  # odd and non-square: every max pool rounds up somewhere
#: A random input at Caffe's scale (0-255 units, mean subtracted).
INPUT_STD = 60.0


def reference(num_classes: int = 1000, seed: int = 0, aux: bool = False) -> CaffeGoogLeNetTorch:
    return CaffeGoogLeNetTorch(num_classes, aux=aux).randomise(seed).requires_grad_(False)


def export(model: str, *args: str, out: Path) -> tuple[int, str]:
    return run_script(SCRIPT, "--model", model, *args, "--out", str(out))


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k != "__metadata__"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """The reference, its weights as a V2 and a V1 caffemodel and a neural-dream .pth, each exported."""
    tmp = tmp_path_factory.mktemp("caffe")
    ref = reference()
    state = ref.neural_dream_state_dict()
    layers = caffe_layers_from_neural_dream({k: v.numpy() for k, v in state.items()})
    out = {"ref": ref, "layers": layers, "tmp": tmp}
    for encoding in ("v2", "v1"):
        src = write_caffemodel(tmp / f"bvlc_{encoding}.caffemodel", layers, encoding)
        code, err = export("bvlc_googlenet", "--from-caffemodel", str(src), out=tmp / f"{encoding}.npz")
        assert code == 0, err
        out[encoding] = tmp / f"{encoding}.npz"
    torch.save(state, tmp / "bvlc_googlenet.pth")
    code, err = export("bvlc_googlenet", "--from-pth", str(tmp / "bvlc_googlenet.pth"), out=tmp / "nd.npz")
    assert code == 0, err
    out["nd"] = tmp / "nd.npz"
    out["model"] = models.load_model("bvlc_googlenet", weights=out["v2"])
    return out


def torch_blobs(ref: CaffeGoogLeNetTorch, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every blob of the reference for the Caffe input ``x`` (NCHW, BGR)."""
    got, hooks = {}, []
    for name, module in ref.blob_modules().items():
        hooks.append(module.register_forward_hook(lambda m, i, o, name=name: got.__setitem__(name, o.numpy())))
    try:
        with torch.no_grad():
            ref(torch.from_numpy(x))
    finally:
        for hook in hooks:
            hook.remove()
    return got


def ours_input(x_bgr: np.ndarray) -> mx.array:
    """Caffe's BGR blob as our model's input (the same units, RGB order: the model flips it back)."""
    return mx.array(np.ascontiguousarray(x_bgr[:, ::-1].transpose(0, 2, 3, 1)))


def nchw(a: mx.array) -> np.ndarray:
    a = np.array(a)
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


# -- the files -------------------------------------------------------------------------------------

def test_both_encodings_and_neural_dream_give_the_same_file(files):
    v2, v1, nd = arrays_of(files["v2"]), arrays_of(files["v1"]), arrays_of(files["nd"])
    assert sorted(v2) == sorted(v1) == sorted(nd)
    for key in v2:
        np.testing.assert_array_equal(v2[key], v1[key], err_msg=key)
        np.testing.assert_array_equal(v2[key], nd[key], err_msg=key)
    meta = files["model"].metadata
    assert meta["architecture"] == "bvlc_googlenet" and meta["num_classes"] == 1000
    assert len(files["model"].class_names) == 1000
    assert not any(k.startswith(arch.AUX_PREFIXES) for k in v2)  # the dream file leaves the aux heads out


# -- parity ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(224, 224), ODD], ids=["224", "odd"])
def test_every_layer_and_the_logits_match_caffe_graph(files, size):
    x = (np.random.default_rng(1).standard_normal((1, 3, *size)) * INPUT_STD).astype(np.float32)
    ref_blobs = torch_blobs(files["ref"], x)
    names = [*arch.CaffeGoogLeNet.LAYER_NAMES, "logits"]
    assert set(ref_blobs) == set(names)
    ours = files["model"](ours_input(x), outputs=names)
    errors = {}
    for name in names:
        mine, theirs = nchw(ours[name]), ref_blobs[name]
        assert mine.shape == theirs.shape, name
        assert np.abs(theirs).max() > 1e-3, name  # a meaningful scale
        errors[name] = rel_err(mine, theirs)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, (worst, errors[worst])
    # The LRN really normalises at this scale (a missing alpha / size would show).
    pooled = ref_blobs["pool1/3x3_s2"]
    assert np.abs(ref_blobs["pool1/norm1"] - pooled).max() > 0.05 * np.abs(pooled).max()


def _pool_inputs() -> dict[str, str]:
    """Each max pool of the graph -> the blob it reads."""
    inputs = {"pool1/3x3_s2": "conv1/7x7_s2", "pool2/3x3_s2": "conv2/norm2", "pool3/3x3_s2": "inception_3b/output",
              "pool4/3x3_s2": "inception_4e/output"}
    previous = "pool2/3x3_s2"
    for block in arch.INCEPTIONS:
        inputs[f"{block}/pool"] = previous
        previous = arch.POOL_AFTER.get(block, f"{block}/output")
    return inputs


def _grads(ref: CaffeGoogLeNetTorch, model, layer: str, x: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Input gradients of ``sum(w * blob)``: ours, and torch's in float32 and float64 linearised where
    we are: every ReLU takes our decision (``relu(v)`` as ``v * mask``) and every max pool reads our
    values (``v + (ours - v).detach()``), so it picks the same window maxima.

    A ReLU input or a pool window's runner-up within float32 rounding of the decision goes either
    way (seen: one conv1 unit at 2.4e-6 of a 504 maximum), and each such flip moves the gradient
    locally by percents; ``tests/parity.py`` anchors the torchvision ports likewise. What remains is
    rounding, and all derivatives are still torch's own.
    """
    convs = [name for name, (kind, _) in arch.caffe_layers(aux=False).items() if kind == "Convolution"]
    pools = _pool_inputs()
    blobs = model(ours_input(x), outputs=list(dict.fromkeys([*convs, *pools.values()])))
    masks = {name: nchw(blobs[name]) > 0 for name in convs}
    values = {pool: nchw(blobs[source]) for pool, source in pools.items()}
    modules = ref.blob_modules()
    out = {}
    for name, dtype in (("torch32", torch.float32), ("torch64", torch.float64)):
        net = ref.to(dtype)
        hooks = [modules[conv].relu.register_forward_hook(
            lambda m, i, o, mask=torch.from_numpy(masks[conv]): i[0] * mask.to(i[0].dtype)) for conv in convs]
        hooks += [modules[pool].register_forward_pre_hook(
            lambda m, i, v=torch.from_numpy(values[pool]): (i[0] + (v.to(i[0].dtype) - i[0]).detach(),))
            for pool in pools]
        captured = {}
        hooks.append(modules[layer].register_forward_hook(lambda m, i, o: captured.setdefault("a", o)))
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        try:
            net(xt)
        finally:
            for hook in hooks:
                hook.remove()
        (captured["a"] * torch.tensor(w, dtype=dtype)).sum().backward()
        out[name] = xt.grad.double().numpy()
    ref.to(torch.float32)
    wm = mx.array(np.ascontiguousarray(w.transpose(0, 2, 3, 1)) if w.ndim == 4 else w)
    grad = mx.grad(lambda inp: (model(inp, outputs=[layer])[layer] * wm).sum())(ours_input(x))
    out["ours"] = nchw(grad)[:, ::-1].astype(np.float64)  # back to BGR order
    return out


@pytest.mark.parametrize("size", [(224, 224), ODD], ids=["224", "odd"])
@pytest.mark.parametrize("layer", ["pool1/norm1", "conv2/norm2", "inception_4c/output", "inception_4d/3x3_reduce",
                                   "logits"])
def test_input_gradient_is_as_close_to_float64_as_torch_float32(files, size, layer):
    """Float32 rounding only: within 10x of torch float32's own distance to float64 (measured: ours
    1e-7 to 4e-6, torch float32 1.5e-7 to 8e-7, relative L2), with both linearised where we are (``_grads``)."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((1, 3, *size)) * INPUT_STD).astype(np.float32)
    shape = torch_blobs(files["ref"], x)[layer].shape
    w = rng.standard_normal(shape).astype(np.float32)
    g = _grads(files["ref"], files["model"], layer, x, w)

    def l2(a: np.ndarray) -> float:
        return float(np.linalg.norm(a - g["torch64"]) / np.linalg.norm(g["torch64"]))

    ours, torch32 = l2(g["ours"]), l2(g["torch32"])
    assert ours <= max(10.0 * torch32, 1e-5), (layer, ours, torch32)


def test_aux_heads_match_caffe_graph(files):
    """loss1/loss2 (kept with keep_aux, for fine-tuning) at 224 px, Caffe's size for them."""
    ref = reference(aux=True, seed=3)
    layers = caffe_layers_from_neural_dream({k: v.numpy() for k, v in ref.neural_dream_state_dict().items()})
    arrays, classes = caffe.convert_layers("bvlc_googlenet", layers, "test", keep_aux=True)
    model = arch.build(classes, variant="bvlc_googlenet", aux_logits=True)
    model.load_weights([(k, mx.array(v)) for k, v in arrays.items()], strict=True)
    model.eval()
    x = (np.random.default_rng(3).standard_normal((1, 3, 224, 224)) * INPUT_STD).astype(np.float32)
    with torch.no_grad():
        logits = ref(torch.from_numpy(x)).numpy()
    logits_ours, aux1, aux2 = model.forward_with_aux(ours_input(x))
    assert rel_err(np.array(logits_ours), logits) < 1e-4
    assert rel_err(np.array(aux1), ref.aux_outputs["loss1"].numpy()) < 1e-4
    assert rel_err(np.array(aux2), ref.aux_outputs["loss2"].numpy()) < 1e-4


# -- the model's contract ----------------------------------------------------------------------------

def test_names_aliases_and_input_convention(files):
    model = files["model"]
    x = mx.array(np.random.default_rng(4).random((1, 64, 48, 3), dtype=np.float32))
    out = model(model.preprocess(x), outputs=["inception4c", "inception_4c/output", "logits", "loss3/classifier"])
    np.testing.assert_array_equal(np.array(out["inception4c"]), np.array(out["inception_4c/output"]))
    np.testing.assert_array_equal(np.array(out["logits"]), np.array(out["loss3/classifier"]))
    # preprocess: 255 * rgb minus the mean, the data stage flips to BGR (Caffe's blob)
    caffe_blob = np.array(x)[..., ::-1] * 255.0 - np.array([104.0, 117.0, 123.0])
    np.testing.assert_allclose(np.array(model._data(model.preprocess(x))), caffe_blob, rtol=1e-5, atol=1e-3)
    with pytest.raises(models.UnknownLayerError, match="inception_4c/output"):
        model(x, outputs=["inception_4c/outptu"])


def test_smallest_input_is_where_caffe_graph_still_runs(files):
    size = arch.CaffeGoogLeNet.MIN_INPUT_SIZE
    x = (np.random.default_rng(5).standard_normal((1, 3, size, size)) * INPUT_STD).astype(np.float32)
    with torch.no_grad():
        logits = files["ref"](torch.from_numpy(x)).numpy()
        with pytest.raises(RuntimeError):
            files["ref"](torch.zeros(1, 3, size - 1, size - 1))
    assert rel_err(np.array(files["model"](ours_input(x))["logits"]), logits) < 1e-4


def test_stages_contract():
    """Block outputs are stages (training freezes whole stages); branch blobs live inside their block;
    a stage with parameters is the module itself, any other a method or a parameter-free module."""
    import mlx.nn as nn

    model = arch.build(variant="bvlc_googlenet")
    stages = [name for name, _ in model.stages()]
    assert stages[-1] == "logits" and set(model.default_layers) <= set(model.layer_names)
    inside = {name for name in model.layer_names if name not in stages}
    assert inside and all(name.split("/")[0] in arch.INCEPTIONS and f"{name.split('/')[0]}/output" in stages
                          for name in inside)
    for name, fn in model.stages():
        if isinstance(fn, nn.Module):
            assert fn.parameters() or name.startswith(("pool", "conv2/norm", "pool1/norm")), name
        else:
            assert getattr(fn, "__self__", None) is model, name


# -- neural-dream's files without a classifier, the Places models --------------------------------------

def test_neural_dream_file_without_classifier_dreams_but_has_no_logits(files, tmp_path):
    state = {k: v for k, v in files["ref"].neural_dream_state_dict().items() if not k.startswith("loss3_")}
    torch.save(state, tmp_path / "bvlc_googlenet.pth")
    code, err = export("bvlc_googlenet", "--from-pth", str(tmp_path / "bvlc_googlenet.pth"), out=tmp_path / "w.npz")
    assert code == 0, err
    model = models.load_model(weights=tmp_path / "w.npz")
    x = mx.zeros((1, 64, 64, 3))
    assert model(x, outputs=["inception4c"])["inception4c"].shape == (1, 4, 4, 512)
    with pytest.raises(models.UnknownLayerError, match="no loss3/classifier.*--from-caffemodel"):
        model(x, outputs=["logits"])


def test_places_models_from_caffemodel_and_tarball(files, tmp_path):
    ref = reference(num_classes=205, seed=6)
    layers = caffe_layers_from_neural_dream({k: v.numpy() for k, v in ref.neural_dream_state_dict().items()})
    model_file = write_caffemodel(tmp_path / "googlelet_places205_train_iter_2400000.caffemodel", layers, "v1")
    tarball = tmp_path / "googlenet_places205.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(model_file, arcname=f"googlenet_places205/{model_file.name}")
        readme = b"not the weights"
        info = tarfile.TarInfo("googlenet_places205/README.txt")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    code, err = export("googlenet_places205", "--from-caffemodel", str(tarball), out=tmp_path / "p205.npz")
    assert code == 0, err
    model = models.load_model("googlenet_places205", weights=tmp_path / "p205.npz")
    assert model.metadata["num_classes"] == 205 and model.name == "googlenet_places205"
    assert model.metadata["config"] == {"variant": "googlenet_places205"}  # fine-tuning builds the same variant
    x = (np.random.default_rng(7).standard_normal((1, 3, 224, 224)) * INPUT_STD).astype(np.float32)
    with torch.no_grad():
        assert rel_err(np.array(model(ours_input(x))["logits"]), ref(torch.from_numpy(x)).numpy()) < 1e-4
    # the same 205-class file named as places365: refused, with the model that fits
    code, err = export("googlenet_places365", "--from-caffemodel", str(model_file), out=tmp_path / "p365.npz")
    assert code == 1 and "205 classes but googlenet_places365 has 365; use --model googlenet_places205" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "p365.npz").exists()


# -- wrong files ---------------------------------------------------------------------------------------

def _refused(args: list[str], tmp_path: Path, message: str, model: str = "bvlc_googlenet") -> None:
    out = tmp_path / "refused.npz"
    code, err = export(model, *args, out=out)
    assert code != 0
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".refused", "deepdream-caffe-"))]


def test_wrong_files_are_one_line_errors(files, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    vgg = write_caffemodel(src / "VGG_ILSVRC_16_layers.caffemodel", vgg_like_layers(), "v1",
                           net_name="VGG_ILSVRC_16_layers")
    _refused(["--from-caffemodel", str(vgg)], tmp_path, "is not Caffe's GoogLeNet: expected layers like "
             "conv1/7x7_s2, inception_4c/3x3, loss3/classifier; found conv1_1, conv1_2")
    whole = (files["tmp"] / "bvlc_v2.caffemodel").read_bytes()
    (src / "truncated.caffemodel").write_bytes(whole[: len(whole) // 2])
    _refused(["--from-caffemodel", str(src / "truncated.caffemodel")], tmp_path, "is not a readable .caffemodel")
    (src / "noise.caffemodel").write_bytes(np.random.default_rng(0).bytes(5000))
    _refused(["--from-caffemodel", str(src / "noise.caffemodel")], tmp_path, "noise.caffemodel")
    (src / "deploy.prototxt").write_text('name: "GoogleNet"\nlayer {\n  name: "data"\n  type: "Input"\n}\n')
    _refused(["--from-caffemodel", str(src / "deploy.prototxt")], tmp_path,
             "is a text .prototxt (the network description), not the weights; pass the binary .caffemodel")
    _refused(["--from-caffemodel", str(src / "missing.caffemodel")], tmp_path, "not found")
    layers = dict(files["layers"])
    weight, bias = layers["loss3/classifier"][1]
    layers["loss3/classifier"] = ("InnerProduct", [weight[:365], bias[:365]])
    places = write_caffemodel(src / "googlenet_places365.caffemodel", layers)
    _refused(["--from-caffemodel", str(places)], tmp_path,
             "classifies 365 classes but bvlc_googlenet has 1000; use --model googlenet_places365")
    torchvision_like = {"conv1.conv.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 1024)}
    torch.save(torchvision_like, src / "googlenet.pth")
    _refused(["--from-pth", str(src / "googlenet.pth")], tmp_path,
             "is not neural-dream's GoogLeNet layout: expected keys like conv1_7x7_s2.weight")
    _refused(["--from-caffemodel", str(vgg)], tmp_path, "--from-caffemodel is for", model="googlenet")


def test_offline_export_names_the_file_and_the_flag(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "offline" / "w.npz"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, SCRIPT, "--model", "bvlc_googlenet", "--out", str(out)],
                          cwd=Path(__file__).resolve().parents[2], env=offline_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot download http://dl.caffe.berkeleyvision.org/")
    assert ("fetch bvlc_googlenet.caffemodel on a machine with internet access and run `python export_googlenet.py "
            "--model bvlc_googlenet --from-caffemodel bvlc_googlenet.caffemodel`") in lines[0]
    assert list(out.parent.iterdir()) == []


class _Response(io.BytesIO):
    headers = {"Content-Length": "0"}


def test_download_checks_the_published_checksum(files, tmp_path, monkeypatch, capsys):
    """The online path with the publisher's server replaced by the bytes of a file."""
    import hashlib

    payload = (files["tmp"] / "bvlc_v2.caffemodel").read_bytes()
    spec = caffe.CaffeWeights("http://example.invalid/bvlc_googlenet.caffemodel", "bvlc_googlenet.caffemodel",
                              hashlib.sha1(payload).hexdigest(), "test")
    monkeypatch.setattr(caffe, "published", lambda model: spec)
    monkeypatch.setattr(caffe.urllib.request, "urlopen", lambda url: _Response(payload))
    out = caffe.export_caffe("bvlc_googlenet", tmp_path / "dl.npz")
    assert hashlib.sha256(payload).hexdigest() in capsys.readouterr().err
    for key, value in arrays_of(out).items():
        np.testing.assert_array_equal(value, arrays_of(files["v2"])[key])
    monkeypatch.setattr(caffe, "published", lambda model: caffe.CaffeWeights(spec.url, spec.file_name, "0" * 40, "test"))
    with pytest.raises(caffe.CaffeFileError, match="not the published"):
        caffe.export_caffe("bvlc_googlenet", tmp_path / "bad.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl.npz"]


# -- dreaming and fine-tuning ---------------------------------------------------------------------------

def test_dream_cli_runs_from_a_converted_file(files, tmp_path):
    import dream

    out = tmp_path / "dream.png"
    code = dream.main(["--model", "bvlc_googlenet", "--weights", str(files["v2"]), "--input", str(Path(__file__).resolve().parents[2] / "assets" / "chelsea.png"),
                       "--max-size", "96", "--octaves", "2", "--steps", "2", "--seed", "0", "--quiet",
                       "--output", str(out)])
    assert code == 0 and out.stat().st_size > 0


def test_model_all_includes_them_when_their_weights_are_present(files, weights_dir, monkeypatch):
    import shutil

    from deepdream.cli.model_choice import available_models

    folder = weights_dir / "caffe_all"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("DEEPDREAM_WEIGHTS_DIR", str(folder))
    notices: list[str] = []
    assert "bvlc_googlenet" not in available_models(notices.append)
    assert any("skipping bvlc_googlenet: no weights (run `python export_googlenet.py --model bvlc_googlenet`)" in n
               for n in notices)
    shutil.copy(files["v2"], folder / "bvlc_googlenet_mlx.npz")
    names = available_models(notices.append)
    assert "bvlc_googlenet" in names and "googlenet_places365" not in names


def test_channels_of_a_branch_blob(files):
    from deepdream.errors import DreamError
    from deepdream.objectives import build_objective

    model = files["model"]
    objective = build_objective(model, ["inception_4d/3x3_reduce"], channels=[3, 143])
    x = model.preprocess(mx.zeros((1, 64, 64, 3)))
    assert objective.terms[0].select(model(x, outputs=objective.layers)["inception_4d/3x3_reduce"]).shape[-1] == 2
    with pytest.raises(DreamError, match="has 144 channels; use --channels values from 0 to 143"):
        build_objective(model, ["inception_4d/3x3_reduce"], channels=[144])


def test_list_layers_shows_caffe_names_and_aliases(capsys):
    import dream

    assert dream.main(["--model", "bvlc_googlenet", "--list-layers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "inception_4c/output  (default, alias inception4c)" in lines
    assert "inception_4d/3x3_reduce" in lines and "inception_3b/5x5_reduce" in lines and "pool5/7x7_s1" in lines


def test_notebook_preset_is_the_2015_step(files):
    """One step of the bvlc_googlenet recipe equals the notebook's make_step, written here in torch on
    Caffe's BGR blob: x += 1.5 / mean|g| * g with g the gradient of 0.5 ||a||^2, clipped to [-mean, 255 - mean]."""
    from deepdream.cli.args import DreamArgumentParser, add_dream_arguments
    from deepdream.cli.settings import settings_for_model
    from deepdream.dreamer import Dreamer

    model, ref = files["model"], files["ref"]
    parser = DreamArgumentParser()
    add_dream_arguments(parser)
    settings = settings_for_model(parser.parse_args(["--model", "bvlc_googlenet"]), model)
    assert (settings.layers, settings.octaves, settings.scale, settings.steps, settings.jitter) == \
        (("inception_4c/output",), 4, 1.4, 10, 32)
    assert settings.grad_norm == "mean-abs" and not settings.smooth
    dreamer = Dreamer(model, settings, quiet=True)
    rgb = np.random.default_rng(8).random((90, 70, 3), dtype=np.float32)
    state = dreamer.space.encode(rgb)
    new, _ = dreamer.step(state, (5, -7), 0.0, settings.lr)

    mean = np.array([104.0, 117.0, 123.0], np.float32)[:, None, None]
    src = torch.tensor((rgb[..., ::-1].transpose(2, 0, 1) * 255.0 - mean)[None].copy(), requires_grad=True)
    captured = {}
    hook = ref.blob_modules()["inception_4c/output"].register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    ref(torch.roll(src, (5, -7), (2, 3)))
    hook.remove()
    (0.5 * (captured["a"] ** 2).sum()).backward()
    g = src.grad
    expected = torch.clamp(src + 1.5 / g.abs().mean() * g, torch.tensor(-mean), torch.tensor(255.0 - mean))
    ours = np.array(new)[0].transpose(2, 0, 1)[::-1]  # RGB-ordered Caffe units -> BGR blob
    step = expected.detach().numpy()[0] - src.detach().numpy()[0]
    assert rel_err(ours - src.detach().numpy()[0], step) < 1e-3


def test_fine_tuning_trains_the_aux_heads_and_freezes_to_inception_3b(tmp_path):
    from models.weights import read_weights, save_weights
    from deepdream.dataset import scan_image_folder
    from deepdream.training import StopRequest, TrainConfig, export_dream_weights, fit, prepare_run
    from tests.test_train_dream import make_shapes

    base = arch.build(variant="bvlc_googlenet")
    base_file = tmp_path / "bvlc_random.npz"
    save_weights(base_file, {k: np.array(v) for k, v in tree_flatten(base.parameters())},
                 {"architecture": "bvlc_googlenet", "num_classes": 1000, "config": {}, "source": "random init"})
    data = scan_image_folder(make_shapes(tmp_path / "tiny", per_class=2, seed=1))
    run = prepare_run(TrainConfig(model="bvlc_googlenet", weights=str(base_file), epochs=1, batch_size=4,
                                  image_size=48, val_split=0.0, seed=0), data)
    assert run.use_aux and run.config.freeze_to == "inception_3b/output"
    before = {k: np.array(v) for k, v in tree_flatten(run.model.parameters())}
    assert fit(run, tmp_path / "ck" / "last.npz", StopRequest(), quiet=True, compile=False, log=lambda _: None)
    after = {k: np.array(v) for k, v in tree_flatten(run.model.parameters())}
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert not {k for k in changed if k.startswith(("conv1.", "conv2.", "inception_3a.", "inception_3b."))}
    assert {k.split(".")[0] for k in changed} >= {"loss1", "loss2", "loss3", "inception_4a", "inception_5b"}
    out = tmp_path / "ft.npz"
    export_dream_weights(run, out)
    arrays, meta = read_weights(out)
    assert not any(k.startswith(arch.AUX_PREFIXES) for k in arrays)
    model = models.load_model(weights=out)
    assert model.mean == base.mean and model(mx.zeros((1, 48, 48, 3)))["logits"].shape == (1, 3)
