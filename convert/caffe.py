"""The 2015 models' weights: Caffe's ``.caffemodel`` files and neural-dream's ``.pth`` files -> our ``.npz``.

Conversion side only (protobuf, downloads; a neural-dream ``.pth`` is read by ``convert.pth``, without torch);
dreaming never imports it.

A ``.caffemodel`` is a binary protobuf ``NetParameter``. It is read with the ``protobuf``
package, the maintained parser, from message classes built at run time out of the few fields
we need, declared below (Caffe's ``caffe.proto`` numbering; everything else in the file is
skipped as unknown fields, so no protoc step and no generated code). Both encodings found in
the wild are read: the current one (``layer`` = 100, string types, blobs shaped by
``BlobShape``) and the legacy V1 one of 2014 files (``layers`` = 2, enum types, blobs shaped
num/channels/height/width, InnerProduct weights stored as (1, 1, out, in)).
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from models import caffe_googlenet as arch
from models.base import CaffeWeights
from models.registry import get_facts
from models.weights import save_weights


class CaffeFileError(ValueError):
    """A file that is not the weights the user named; the one-line message says what it is and what to pass."""


# -- NetParameter, as much of it as the weights need ------------------------------------------------

@lru_cache(maxsize=None)
def _net_parameter_class() -> type:
    """The ``NetParameter`` message class, built from descriptors (field numbers from caffe.proto)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto

    def _field(message: Any, name: str, number: int, kind: str, repeated: bool = False, type_name: str = "",
               packed: bool = False) -> None:
        f = message.field.add(name=name, number=number, type=getattr(F, f"TYPE_{kind}"),
                              label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
        if type_name:
            f.type_name = type_name
        if packed:
            f.options.packed = True

    proto = descriptor_pb2.FileDescriptorProto(name="deepdream_mlx_caffe.proto", package="ddcaffe", syntax="proto2")
    shape = proto.message_type.add(name="BlobShape")
    _field(shape, "dim", 1, "INT64", repeated=True, packed=True)
    blob = proto.message_type.add(name="BlobProto")
    for number, name in enumerate(("num", "channels", "height", "width"), start=1):
        _field(blob, name, number, "INT32")
    _field(blob, "data", 5, "FLOAT", repeated=True, packed=True)
    _field(blob, "shape", 7, "MESSAGE", type_name=".ddcaffe.BlobShape")
    _field(blob, "double_data", 8, "DOUBLE", repeated=True, packed=True)
    layer = proto.message_type.add(name="LayerParameter")
    _field(layer, "name", 1, "STRING")
    _field(layer, "type", 2, "STRING")
    _field(layer, "blobs", 7, "MESSAGE", repeated=True, type_name=".ddcaffe.BlobProto")
    v1 = proto.message_type.add(name="V1LayerParameter")
    _field(v1, "v0", 1, "BYTES")  # the even older V0LayerParameter: only detected, to say so
    _field(v1, "name", 4, "STRING")
    _field(v1, "type", 5, "INT32")  # V1's LayerType enum, read as its number
    _field(v1, "blobs", 6, "MESSAGE", repeated=True, type_name=".ddcaffe.BlobProto")
    net = proto.message_type.add(name="NetParameter")
    _field(net, "name", 1, "STRING")
    _field(net, "layers", 2, "MESSAGE", repeated=True, type_name=".ddcaffe.V1LayerParameter")
    _field(net, "layer", 100, "MESSAGE", repeated=True, type_name=".ddcaffe.LayerParameter")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("ddcaffe.NetParameter"))


#: V1LayerParameter.LayerType numbers of the layer kinds that carry weights (caffe.proto).
V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}


@dataclass
class CaffeNet:
    """What a caffemodel holds that we use: the net's name and each weighted layer's blobs."""

    name: str
    encoding: str                                        # "V2 (layer)" or "V1 (layers)"
    layers: dict[str, tuple[str, list[np.ndarray]]]      # layer name -> (type, blobs)


def _blob_array(blob: Any) -> np.ndarray:
    values = np.asarray(blob.double_data if len(blob.double_data) else blob.data, np.float32)
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    if int(np.prod(shape)) != values.size:
        raise CaffeFileError(f"a blob of {values.size} values claims shape {shape}; the file is damaged")
    return values.reshape(shape)


def _looks_like_prototxt(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return any(word in text for word in ("layer {", "layers {", "input:", "name:", "type:"))


def read_caffemodel(path: str | Path) -> CaffeNet:
    """Parse a binary ``.caffemodel`` (either encoding); raise ``CaffeFileError`` for anything else."""
    from google.protobuf.message import DecodeError

    path = Path(path)
    data = path.read_bytes()
    if _looks_like_prototxt(data[:4096]):
        raise CaffeFileError(f"{path} is a text .prototxt (the network description), not the weights; "
                             "pass the binary .caffemodel file")
    net = _net_parameter_class()()
    try:
        net.ParseFromString(data)
    except DecodeError as exc:
        raise CaffeFileError(f"{path} is not a readable .caffemodel (truncated, or not a Caffe file: {exc})") from None
    if any(v1.v0 for v1 in net.layers):
        raise CaffeFileError(f"{path} uses Caffe's pre-2014 V0 encoding; upgrade it with Caffe's "
                             "upgrade_net_proto_binary tool first")
    layers: dict[str, tuple[str, list[np.ndarray]]] = {}
    if len(net.layer):
        encoding = "V2 (layer)"
        for layer in net.layer:
            if len(layer.blobs):
                layers[layer.name] = (layer.type, [_blob_array(b) for b in layer.blobs])
    else:
        encoding = "V1 (layers)"
        for layer in net.layers:
            if len(layer.blobs):
                layers[layer.name] = (V1_TYPES.get(layer.type, f"V1 type {layer.type}"),
                                      [_blob_array(b) for b in layer.blobs])
    if not layers:
        raise CaffeFileError(f"{path} holds no layer weights: it is not a .caffemodel (truncated, or another file)")
    return CaffeNet(net.name, encoding, layers)


# -- from Caffe layers to our arrays -----------------------------------------------------------------

def _fit(array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A blob in the expected shape; legacy 4-D blobs of InnerProducts and biases lose their leading 1s."""
    if array.shape == shape:
        return array
    squeezed = array.reshape([d for d in array.shape if d != 1] or [1])
    if squeezed.shape == tuple(d for d in shape if d != 1) and array.size == int(np.prod(shape)):
        return squeezed.reshape(shape)
    raise CaffeFileError(f"{what} has shape {array.shape}, expected {shape}")


def _describe(names: list[str], count: int = 4) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def model_for_classes(classes: int) -> str | None:
    return next((name for name, (count, _) in arch.VARIANTS.items() if count == classes), None)


def convert_layers(model: str, layers: Mapping[str, tuple[str, list[np.ndarray]]], source: str,
                   keep_aux: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """Caffe layer name -> (type, [weight, bias]) into our arrays; returns them and the class count
    (0 when the file has no loss3/classifier). Checks that the layers are GoogLeNet's, of ``model``."""
    expected = arch.caffe_layers(aux=True)
    trunk = [name for name in arch.caffe_layers(aux=False) if name != "loss3/classifier"]
    found_trunk = [name for name in trunk if name in layers]
    if not found_trunk:
        found = list(layers)
        raise CaffeFileError(f"{source} is not Caffe's GoogLeNet: expected layers like conv1/7x7_s2, "
                             f"inception_4c/3x3, loss3/classifier; found {_describe(found)} ({len(found)} weighted layers)")
    missing = [name for name in trunk if name not in layers]
    if missing:
        raise CaffeFileError(f"{source} lacks GoogLeNet layers {_describe(missing)}: not a complete {model} file")
    classes = 0
    if "loss3/classifier" in layers:
        classes = int(layers["loss3/classifier"][1][0].size // 1024)
        wanted = arch.VARIANTS[model][0]
        if classes != wanted:
            other = model_for_classes(classes)
            hint = f"use --model {other}" if other else "pass the file of the model you named"
            raise CaffeFileError(f"{source} classifies {classes} classes but {model} has {wanted}; {hint}")
    arrays: dict[str, np.ndarray] = {}
    for name, (kind, shape) in expected.items():
        if name not in layers or (name.startswith(("loss1/", "loss2/")) and not keep_aux):
            continue
        if shape[0] == 0:
            shape = (classes if name == "loss3/classifier" else arch.VARIANTS[model][0], *shape[1:])
        found_kind, blobs = layers[name]
        if found_kind != kind or len(blobs) != 2:
            raise CaffeFileError(f"{source}: layer {name} is a {found_kind} with {len(blobs)} blobs, "
                                 f"expected a {kind} with weight and bias")
        weight = _fit(blobs[0], shape, f"{source}: {name}'s weight")
        bias = _fit(blobs[1], (shape[0],), f"{source}: {name}'s bias")
        if name.endswith("/fc"):  # the aux heads' first InnerProduct reads a (C, H, W)-flattened map
            weight = weight.reshape(shape[0], 128, 4, 4).transpose(0, 2, 3, 1).reshape(shape[0], -1)
        if weight.ndim == 4:
            weight = weight.transpose(0, 2, 3, 1)  # OIHW -> OHWI
        key = arch.parameter_key(name)
        arrays[f"{key}.weight"] = np.ascontiguousarray(weight, np.float32)
        arrays[f"{key}.bias"] = np.ascontiguousarray(bias, np.float32)
    return arrays, classes


def neural_dream_key(caffe_layer: str) -> str:
    """neural-dream's (MMdnn's) module name of a Caffe layer: ``/`` -> ``_``, InnerProducts suffixed ``_1``."""
    kind = arch.caffe_layers(aux=True)[caffe_layer][0]
    return caffe_layer.replace("/", "_") + ("_1" if kind == "InnerProduct" else "")


def layers_from_neural_dream(state_dict: Mapping[str, Any], source: str) -> dict[str, tuple[str, list[np.ndarray]]]:
    """neural-dream's state dict (``inception_4c_3x3.weight``, ``loss3_classifier_1.weight``) as Caffe layers."""
    arrays = {k: (v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v, np.float32))
              for k, v in state_dict.items()}
    layers = {}
    for name, (kind, _) in arch.caffe_layers(aux=True).items():
        key = neural_dream_key(name)
        if f"{key}.weight" in arrays and f"{key}.bias" in arrays:
            layers[name] = (kind, [arrays[f"{key}.weight"], arrays[f"{key}.bias"]])
    if not layers:
        raise CaffeFileError(f"{source} is not neural-dream's GoogLeNet layout: expected keys like conv1_7x7_s2.weight, "
                             f"inception_4c_3x3.weight; found {_describe(sorted(arrays))}")
    return layers


# -- the publishers' files ---------------------------------------------------------------------------

def published(model: str) -> CaffeWeights:
    """Where the model's publisher serves its original file (the model's facts)."""
    caffe = get_facts(model).caffe
    if caffe is None:
        raise ValueError(f"{model} is not one of the Caffe models")
    return caffe


def download(model: str, folder: Path) -> Path:
    """Fetch the model's original file into ``folder`` with a progress bar; check or print its checksums."""
    from tqdm import tqdm

    spec = published(model)
    target = folder / spec.file_name
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    try:
        with urllib.request.urlopen(spec.url) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=spec.file_name, file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    sha1.update(chunk)
                    sha256.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CaffeFileError(f"cannot download {spec.url} ({reason}); fetch {spec.file_name} on a machine with "
                             f"internet access and run `python export_googlenet.py --model {model} "
                             f"--from-caffemodel {spec.file_name}`") from None
    if spec.sha1 is not None and sha1.hexdigest() != spec.sha1:
        raise CaffeFileError(f"{spec.url} arrived with SHA-1 {sha1.hexdigest()}, not the published {spec.sha1}; "
                             "try again later")
    print(f"{spec.file_name}: SHA-256 {sha256.hexdigest()}"
          + (" (SHA-1 matches the publisher's)" if spec.sha1 else ""), file=sys.stderr)
    return target


def caffemodel_in(path: Path, folder: Path) -> Path:
    """``path`` itself, or the one ``.caffemodel`` inside a tarball (Places205 ships as one)."""
    if not tarfile.is_tarfile(path):
        return path
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".caffemodel")]
        if len(members) != 1:
            raise CaffeFileError(f"{path} is a tarball with {len(members)} .caffemodel files; extract the one you "
                                 "want and pass it")
        tar.extract(members[0], folder, filter="data")
        return folder / members[0].name


def export_caffe(model: str, out: Path, caffemodel: str | Path | None = None, pth: str | Path | None = None,
                 keep_aux: bool = False) -> Path:
    """Write ``out`` from a caffemodel (or a tarball holding one), a neural-dream ``.pth``, or the download."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="deepdream-caffe-", dir=out.parent) as tmp:
        if pth is not None:
            from .pth import PthError, read_pth
            from .torch_weights import clean_checkpoint

            try:
                state = read_pth(pth)
            except (PthError, OSError) as exc:
                raise CaffeFileError(f"{exc}; for a .caffemodel use --from-caffemodel") from None

            layers = layers_from_neural_dream(clean_checkpoint(state), str(pth))
            source = f"converted from neural-dream's {Path(pth).name}"
        else:
            if caffemodel is None:
                caffemodel = download(model, Path(tmp))
                source = published(model).url
            else:
                source = f"converted from {Path(caffemodel).name}"
            net = read_caffemodel(caffemodel_in(Path(caffemodel), Path(tmp)))
            layers = net.layers
            source += f" ({net.encoding} encoding)"
        arrays, classes = convert_layers(model, layers, str(pth or caffemodel), keep_aux=keep_aux)
    class_names = None
    if classes == 1000:
        from deepdream.classes import imagenet_class_names

        class_names = list(imagenet_class_names())
    save_weights(out, arrays, {"architecture": model, "source": source, "num_classes": classes,
                               "class_names": class_names, "config": {"variant": model}})
    return out
