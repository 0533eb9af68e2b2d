"""The dream options, defined once for every script that dreams (dream.py, dream_video.py).

Use::

    parser = DreamArgumentParser(description="...")
    add_dream_arguments(parser)             # model, layers, octaves, steps, ..., --info, --list-layers
    parser.add_argument("--input", ...)     # the script's own I/O flags
    args = parser.parse_args()

    def main() -> int:
        if handle_info_flags(args):         # --info / --list-layers print and stop
            return 0
        model, settings = model_and_settings(args)
        dreamer = Dreamer(model, settings, quiet=args.quiet)
        ...

    run_main(main)                          # one-line `error: ...`, exit 1; Ctrl-C exits 130

Every dream option defaults to ``None`` so that ``model_and_settings`` can tell an explicit
flag (which wins) from a preset's value (which wins over the generic default).
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from models import (
    MODELS,
    DreamModel,
    build_model,
    default_weights_path,
    get_facts,
    list_models,
    load_model,
    missing_weights_error,
    weights_available,
)

from . import memory
from .errors import (  # noqa: F401 (re-exported)
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    DreamError,
    Notify,
    make_notify,
    run_main,
)
from .image_io import limit_size, load_image, noise_image
from .objectives import parse_channels
from .param import PARAMS
from .presets import PRESETS, get_preset, recipe_for_model
from .settings import GRAD_NORMS, DreamSettings
from .robustness import NONE as NO_ROBUSTNESS
from .robustness import Robustness
from .sweep import SWEEP_BATCH
from .visualise import RenderSettings

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MODEL = "googlenet"
#: dream.py's noise image side when --width/--height are not given.
STILL_SIZE = 512
OUTPUT_FOLDER = "outputs"
OFFLINE_MODEL = "efficientnet_lite0"
ALL_MODELS = "all"

class DreamArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ... (see --help)``) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def whole_number(text: str) -> int:
    """argparse type: an int, or the one-line ``'x' is not a whole number``."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


def number(text: str) -> float:
    """argparse type: a float, or the one-line ``'x' is not a number``."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def memory_size(text: str) -> int:
    """argparse type: ``6GB``, ``500MB``... in bytes, or the one-line reason it is not one."""
    try:
        return memory.parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_dream_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every dream option (model choice, objective, step, octaves, presets, info) to ``parser``."""
    presets = ", ".join(PRESETS)
    g = parser.add_argument_group("model")
    g.add_argument("--model", metavar="NAME",
                   help=f"network to dream with: {', '.join(list_models())}, or 'all' (default: googlenet when its "
                        f"weights are present, else {OFFLINE_MODEL}, which works offline)")
    g.add_argument("--weights", metavar="PATH",
                   help="a weights file (e.g. fine-tuned by train_dream.py); its metadata names the model")
    g.add_argument("--preset", metavar="NAME",
                   help=f"a named recipe ({presets}); explicit flags override its values. Without it the "
                        "model's own recipe is used when it has one")
    g.add_argument("--list-layers", action="store_true", help="print the model's layer names and exit")
    g.add_argument("--info", action="store_true",
                   help="print MLX version, device, BLAS and which model weights are present, and exit")

    g = parser.add_argument_group("objective")
    g.add_argument("--layers", nargs="+", metavar="LAYER", help="layer(s) whose activations to amplify")
    g.add_argument("--channels", nargs="+", metavar="C",
                   help="only these channel indices of the layer(s); ranges like 0-63; 'all' with --sweep")
    g.add_argument("--guide", metavar="IMAGE",
                   help="guide image: steer each feature toward its best match in this image's features")

    g = parser.add_argument_group("dream")
    g.add_argument("--octaves", type=whole_number, metavar="N", help="number of scales (default from recipe, 4)")
    g.add_argument("--scale", type=number, metavar="S", help="size ratio between octaves (e.g. 1.4-2)")
    g.add_argument("--steps", type=whole_number, metavar="N", help="gradient steps per octave")
    g.add_argument("--lr", type=number, metavar="LR", help="step size (in ImageNet-normalised pixel units)")
    g.add_argument("--jitter", type=whole_number, metavar="PX",
                   help="random shift of up to PX pixels before each step (hides grid artefacts)")
    g.add_argument("--smoothing", type=number, metavar="S",
                   help="gradient smoothing coefficient (Gaussian cascade; larger is smoother)")
    g.add_argument("--no-smoothing", dest="smooth", action="store_false", default=None,
                   help="no gradient smoothing at all (the 2015 Caffe notebook's step)")
    g.add_argument("--lap-norm", action="store_true", default=None,
                   help="Laplacian-pyramid gradient normalisation instead of smoothing (larger, calmer structures)")
    g.add_argument("--grad-norm", choices=GRAD_NORMS, default=None,
                   help="gradient normalisation: std (default, pytorch-deepdream) or mean-abs (2015 Caffe notebook)")
    g.add_argument("--tile-size", type=whole_number, metavar="PX",
                   help="dream in tiles of PX pixels (default: only when the image would not fit --max-memory, "
                        "with the largest tile that does); 0 for whole-image steps")
    g.add_argument("--no-tile", dest="tile_size", action="store_const", const=0,
                   help="whole-image steps whatever the memory budget (the same as --tile-size 0)")
    g.add_argument("--max-memory", type=memory_size, metavar="SIZE",
                   help=f"memory budget of a dream, e.g. 6GB or 500MB (default: this machine's "
                        f"{memory.format_bytes(memory.default_budget())}, a quarter of its memory up to "
                        f"{memory.format_bytes(memory.DEFAULT_CAP)}); bigger images are dreamed in tiles to stay within it")
    g.add_argument("--decorrelate", metavar="MATRIX",
                   help="step in a decorrelated colour space: 'imagenet', 'model' (the weights file's matrix), a "
                        ".npy from calc_cm.py, or 'none' to switch off a preset's")
    g.add_argument("--seed", type=whole_number, metavar="N", help="random seed: same arguments, same output bytes")
    g.add_argument("--quiet", action="store_true", help="no progress bars or notices")


# -- the start image: --input, or noise of --width x --height -----------------------------------

def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """Feature visualisation (renders from noise): objectives, parameterisation, robustness, sweeps."""
    d = RenderSettings()
    g = parser.add_argument_group("feature visualisation (renders from noise; any of these switches it on)")
    g.add_argument("--class", dest="class_", metavar="NAME|INDEX",
                   help="render a class: an ImageNet name (e.g. goldfish), a fine-tuned model's class, an index, "
                        "or 'all' with --sweep")
    g.add_argument("--neuron", metavar="LAYER:CHANNEL", help="render the centre unit of a channel, e.g. block10:7")
    g.add_argument("--param", choices=PARAMS, default=None,
                   help="what is optimised: fft (1/f-scaled spectrum, default for renders) or pixel")
    g.add_argument("--decay-power", type=number, metavar="P",
                   help=f"fft spectrum scaling 1/|f|^P (default {d.decay_power:g}; larger is smoother)")
    g.add_argument("--batch", type=whole_number, metavar="N",
                   help=f"images per pass: N renders of one objective (default {d.batch}), or items per pass "
                        f"of a --sweep (default {SWEEP_BATCH})")
    g.add_argument("--diversity", type=number, metavar="W",
                   help="push the --batch images apart in style (Lucid's diversity term), weight W (e.g. 100)")
    g.add_argument("--sweep", action="store_true",
                   help="one render per item of --channels (with one --layers) or of --class all, into --output FOLDER, "
                        "with a contact sheet; re-running continues after the last finished item")
    g.add_argument("--pad", type=whole_number, metavar="PX", help=f"robustness: grey padding (default {d.robustness.pad})")
    g.add_argument("--scale-range", type=number, nargs=2, metavar=("LOW", "HIGH"),
                   help=f"robustness: random scale range (default {' '.join(f'{v:g}' for v in d.robustness.scale_range)})")
    g.add_argument("--rotate-range", type=number, metavar="DEG",
                   help=f"robustness: random rotation up to DEG degrees either way (default {d.robustness.rotate:g}); "
                        f"--jitter sets the shift (default {d.robustness.jitter} for renders)")
    g.add_argument("--no-robustness", action="store_true", help="no pad, jitter, scale or rotation while rendering")
    parser.add_argument("--save-every", type=whole_number, metavar="N",
                        help="write the image every N steps (and at each octave's end) to watch a long run")


#: Flags that shape a dream (photo, octaves, smoothed steps) and mean nothing to a render from noise.
DREAM_ONLY = {"octaves": "--octaves", "scale": "--scale", "smoothing": "--smoothing", "lap_norm": "--lap-norm",
              "grad_norm": "--grad-norm", "tile_size": "--tile-size", "max_memory": "--max-memory", "guide": "--guide",
              "preset": "--preset",
              "max_size": "--max-size"}
RENDER_SWITCHES = ("class_", "neuron", "param", "batch", "diversity", "decay_power", "pad", "scale_range", "rotate_range")


def is_render(args: argparse.Namespace) -> bool:
    """A render from noise (feature visualisation) rather than a dream: any render flag switches it on,
    except ``--param pixel``, which is also the dream's own (today's) behaviour."""
    if args.sweep or args.no_robustness:
        return True
    return any(getattr(args, k) is not None for k in RENDER_SWITCHES if k != "param") or args.param == "fft"


def render_settings(args: argparse.Namespace) -> RenderSettings:
    """Explicit flags over ``RenderSettings``' defaults; raises DreamError for flags a render cannot use."""
    for key, flag in DREAM_ONLY.items():
        if getattr(args, key, None) is not None:
            raise DreamError(f"{flag} shapes a dream, not a render from noise; drop it (or the render flags)")
    if getattr(args, "input", None) is not None:
        raise DreamError("--class/--neuron/--sweep/--param fft render from noise; drop --input "
                         "(to dream on a photo use --layers/--channels)")
    d = RenderSettings()
    if args.no_robustness:
        if any(v is not None for v in (args.pad, args.scale_range, args.rotate_range, args.jitter)):
            raise DreamError("--no-robustness switches off --pad/--jitter/--scale-range/--rotate-range; drop one or the other")
        robust = NO_ROBUSTNESS
    else:
        r = d.robustness
        robust = Robustness(pad=_given(args.pad, r.pad), jitter=_given(args.jitter, r.jitter),
                            scale_range=tuple(args.scale_range) if args.scale_range else r.scale_range,
                            rotate=_given(args.rotate_range, r.rotate))
    if args.diversity and args.sweep:
        raise DreamError("--diversity renders several images of one objective; it does not combine with --sweep")
    decorrelate = _given(args.decorrelate, d.decorrelate)
    settings = RenderSettings(
        param=_given(args.param, d.param), height=_given(args.height, d.height), width=_given(args.width, d.width),
        steps=_given(args.steps, d.steps), lr=_given(args.lr, d.lr), decay_power=_given(args.decay_power, d.decay_power),
        robustness=robust, batch=_given(args.batch, SWEEP_BATCH if args.sweep else d.batch),
        diversity=_given(args.diversity, d.diversity),
        decorrelate=None if str(decorrelate).lower() == "none" else decorrelate,
        seed=args.seed, save_every=args.save_every)
    settings.validate()
    if args.sweep and args.save_every is not None:
        raise DreamError("--save-every watches one long render; a --sweep writes each item as it finishes instead")
    return settings


def _given(value, default):
    return default if value is None else value


def add_image_arguments(parser: argparse.ArgumentParser, *, noun: str, output_help: str, default_size: int,
                        default_max_size: int | None = None) -> None:
    """--input, --output, --width, --height and --max-size; ``noun`` ("image" or "frame") and the
    defaults go into the help."""
    g = parser.add_argument_group("input and output")
    if noun == "image":
        g.add_argument("--input", metavar="PATH",
                       help="image to dream on (any format Pillow reads); omit to dream from noise")
    else:
        g.add_argument("--input", metavar="PATH",
                       help="start image (any format Pillow reads); omit to start from noise")
    g.add_argument("--output", metavar="PATH", help=output_help)
    g.add_argument("--width", type=whole_number, metavar="PX",
                   help=f"noise {noun} width (default {default_size}; no --input only)")
    g.add_argument("--height", type=whole_number, metavar="PX", help=f"noise {noun} height (default {default_size})")
    extra = f" (default {default_max_size}: every {noun} is a dream)" if default_max_size else ""
    g.add_argument("--max-size", type=whole_number, metavar="PX",
                   help=f"downscale the input so its longest side is at most PX{extra}")


def still_parser() -> argparse.ArgumentParser:
    """dream.py's command line (here, so make_assets.py resolves its demos exactly as dream.py does)."""
    parser = DreamArgumentParser(
        description="DeepDream an image with an MLX model. Without --input, dreams from noise.",
        epilog="Example: python dream.py --input assets/chelsea.png --preset efficientnet_lite0 --steps 30",
    )
    add_image_arguments(parser, noun="image", default_size=STILL_SIZE,
                        output_help=f"output image (default {OUTPUT_FOLDER}/<input-stem>_<model>.<ext>); "
                                    "a folder with --model all")
    add_dream_arguments(parser)
    add_render_arguments(parser)
    return parser


def still_start(args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """dream.py's start image and the stem of its output names: --input, else noise (drawn from ``rng``)."""
    image = input_image(args)
    if image is not None:
        return image, Path(args.input).stem
    return noise_start(args, rng, STILL_SIZE), "dream"


def check_image_args(args: argparse.Namespace, noun: str) -> None:
    """The size flags' checks (no model needed, so a typo fails at once)."""
    if args.input is not None and (args.width is not None or args.height is not None):
        raise DreamError(f"--width/--height size the noise {noun}; with --input use --max-size to resize it")
    for flag, value in (("--width", args.width), ("--height", args.height), ("--max-size", args.max_size)):
        if value is not None and value < 1:
            raise DreamError(f"{flag} must be a positive number of pixels (got {value})")


def input_image(args: argparse.Namespace, default_max_size: int | None = None) -> np.ndarray | None:
    """--input read (and downscaled to --max-size, else ``default_max_size``), or None without --input."""
    if args.input is None:
        return None
    max_size = args.max_size if args.max_size is not None else default_max_size
    return load_image(args.input, max_size=max_size)


def noise_start(args: argparse.Namespace, rng: np.random.Generator, default_size: int) -> np.ndarray:
    """The noise start image: --width x --height (``default_size`` each if not given), within --max-size."""
    width = args.width if args.width is not None else default_size
    height = args.height if args.height is not None else default_size
    image = noise_image(height, width, rng)
    return limit_size(image, args.max_size) if args.max_size is not None else image


def _is_all(args: argparse.Namespace) -> bool:
    return getattr(args, "model", None) == ALL_MODELS


def check_model_name(name: str) -> str:
    try:
        get_facts(name)
    except ValueError as exc:
        raise DreamError(f"{exc} (or '{ALL_MODELS}')") from None
    return name


def weights_architecture(path: str) -> str:
    """The architecture a weights file was made for (its metadata), or a clear error."""
    from models.weights import read_metadata

    if not Path(path).is_file():
        raise DreamError(f"weights file '{path}' not found; check the path")
    try:
        arch = read_metadata(path).get("architecture")
    except Exception as exc:  # numpy raises several types for a file that is not an .npz
        raise DreamError(f"cannot read weights file '{path}' ({type(exc).__name__}); "
                         "give a .npz written by an exporter or train_dream.py") from None
    if not arch:
        raise DreamError(f"'{path}' is not a DeepDream-MLX weights file (no metadata); convert it with an exporter")
    return str(arch)


def default_model_name(notify: Notify) -> str:
    """googlenet when its weights are present, else the model that works offline (with a notice)."""
    if weights_available(DEFAULT_MODEL):
        return DEFAULT_MODEL
    notify(f"googlenet weights not found, using {OFFLINE_MODEL} (works offline); "
           f"for googlenet run `{MODELS[DEFAULT_MODEL].exporter}`")
    return OFFLINE_MODEL


def model_name_from_args(args: argparse.Namespace, notify: Notify | None = None) -> str:
    """Which architecture the arguments ask for: --model, else the --weights file's, else the preset's, else default."""
    notify = notify or make_notify(getattr(args, "quiet", False))
    if args.model is not None:
        if args.model == ALL_MODELS:
            raise DreamError("--model all is not supported here; name one model")
        name = check_model_name(args.model)
        if args.weights is not None:
            arch = weights_architecture(args.weights)
            if arch != name:
                raise DreamError(f"'{args.weights}' holds {arch} weights, not {name}; use --model {arch} or drop --model")
        return name
    if args.weights is not None:
        return weights_architecture(args.weights)
    if args.preset is not None:
        return get_preset(args.preset).model
    return default_model_name(notify)


def load_dream_model(name: str, weights: str | None = None) -> DreamModel:
    """Load a model; its default weights missing, convert them first when that needs no download
    (with a notice), else an error that names the exporter command (never a download mid-dream)."""
    if weights is None and not default_weights_path(name).exists():
        if not weights_available(name):
            raise missing_weights_error(name)
        from convert import make_default_weights  # imports torch: only on a first run

        make_default_weights(name)
    return load_model(name, weights=weights)


def validate_args(args: argparse.Namespace) -> None:
    """Checks that need no model (so they fail before anything slow happens)."""
    if args.model is not None and args.model != ALL_MODELS:
        check_model_name(args.model)
    if args.preset is not None:
        get_preset(args.preset)
    if _is_all(args):
        if args.weights is not None:
            raise DreamError("--model all dreams with each model's own weights; drop --weights or name one model")
        if args.layers is not None:
            raise DreamError("--layers names layers of one model; drop it with --model all (each model uses its recipe)")
    if args.channels is not None:
        parse_channels(args.channels)
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise DreamError(f"--seed must be between 0 and {2**32 - 1} (got {args.seed})")
    # The numbers alone, with the generic defaults for whatever is not given.
    checks = {k: getattr(args, k) for k in ("octaves", "scale", "steps", "lr", "jitter", "smoothing", "tile_size",
                                            "max_memory")
              if getattr(args, k) is not None}
    DreamSettings(**checks).validate()


def dream_channels(specs: list[str] | None) -> tuple[int, ...] | None:
    if specs is None:
        return None
    channels = parse_channels(specs)
    if channels == "all":
        raise DreamError("--channels all renders every channel one by one: add --sweep --output FOLDER "
                         "(or drop --channels to dream on all channels at once)")
    return tuple(channels)


def settings_for_model(args: argparse.Namespace, model: DreamModel, notify: Notify | None = None,
                       over_recipe: Mapping[str, object] | None = None) -> DreamSettings:
    """Resolve the settings for ``model``: explicit flags > --preset > ``over_recipe`` (the video's
    per-frame defaults) > the model's recipe > the generic defaults (``DreamSettings``'s own).

    The result is validated where it is used (``Dreamer``); the flags were by ``validate_args``.
    """
    notify = notify or make_notify(getattr(args, "quiet", False))
    values: dict[str, object] = {}
    preset = get_preset(args.preset) if args.preset is not None else recipe_for_model(model.name)
    if preset is not None:
        recipe = preset.values()
        layers = recipe.pop("layers")
        values.update(recipe)
        if preset.model == model.name:
            values["layers"] = layers
        elif args.layers is None:
            notify(f"preset '{args.preset}' is for {preset.model}; using its step settings with {model.name}'s "
                   f"default layers ({' '.join(model.default_layers)})")
    if args.preset is None and over_recipe:
        values.update(over_recipe)
    explicit = {
        "layers": tuple(args.layers) if args.layers is not None else None,
        "channels": dream_channels(args.channels),
        "guide": args.guide, "octaves": args.octaves, "scale": args.scale, "steps": args.steps, "lr": args.lr,
        "jitter": args.jitter, "smoothing": args.smoothing, "smooth": args.smooth, "lap_norm": args.lap_norm, "grad_norm": args.grad_norm,
        "tile_size": args.tile_size, "max_memory": args.max_memory, "seed": args.seed, "decorrelate": args.decorrelate,
    }
    values.update({k: v for k, v in explicit.items() if v is not None})
    if "layers" not in values:
        values["layers"] = tuple(model.default_layers)
    if str(values.get("decorrelate")).lower() == "none":  # lets a flag switch off a preset's decorrelation
        values["decorrelate"] = None
    settings = DreamSettings(**values)
    model.check_layers(settings.layers or model.default_layers)
    return settings


def model_and_settings(args: argparse.Namespace, notify: Notify | None = None,
                       over_recipe: Mapping[str, object] | None = None) -> tuple[DreamModel, DreamSettings]:
    """Parsed arguments (checked by ``validate_args``) -> the loaded model and its resolved
    ``DreamSettings`` (raises DreamError & co.)."""
    notify = notify or make_notify(getattr(args, "quiet", False))
    name = model_name_from_args(args, notify)
    model = load_dream_model(name, args.weights)
    return model, settings_for_model(args, model, notify, over_recipe)


def available_models(notify: Notify) -> list[str]:
    """For --model all: the models whose weights are present; a notice names the exporter for each other one."""
    names = []
    for name in list_models():
        if weights_available(name):
            names.append(name)
        else:
            notify(f"skipping {name}: no weights (run `{MODELS[name].exporter}`)")
    return names


# -- --info and --list-layers ----------------------------------------------------------------------

def info_text() -> str:
    import mlx.core as mx

    from fastlayers import _blas, native

    from . import device

    lines = [
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"mlx {mx.__version__}, {device.description()}",
    ]
    if device.on_gpu():
        lines.append("CPU-only machinery (fast BLAS, native CPU kernels, CPU convolution paths): off, "
                     "the GPU runs MLX's own operations")
    else:
        native.load()   # builds the native kernels if this is the first run (CI's first command)
        lines += [f"blas: {_blas.blas_in_use}",
                  f"native CPU kernels (depthwise convolution, pooling): {native.status}"]
        if wheel := _blas.gpu_wheel():
            lines.append(f"note: {wheel} is installed but MLX sees no GPU (driver or CUDA libraries missing?)")
    lines.append("models:")
    for name, facts in MODELS.items():
        if weights_available(name):
            path = default_weights_path(name)
            where = str(path) if path.exists() else f"converted on first use from {facts.source}"
            lines.append(f"  {name:<20} weights present ({where})")
        else:
            lines.append(f"  {name:<20} weights missing: run `{facts.exporter}`")
    return "\n".join(lines)


def layer_listing(model: DreamModel) -> str:
    defaults = set(model.default_layers)
    aliases: dict[str, list[str]] = {}
    for alias, name in model.LAYER_ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    lines = []
    for name in model.layer_names:
        notes = (["default"] if name in defaults else []) + [f"alias {a}" for a in aliases.get(name, [])]
        lines.append(f"{name}  ({', '.join(notes)})" if notes else name)
    return "\n".join(lines)


def handle_info_flags(args: argparse.Namespace) -> bool:
    """Print --info / --list-layers output; True when the script should stop there."""
    if args.info:
        print(info_text())
        return True
    if args.list_layers:
        if _is_all(args):
            for name in list_models():
                print(f"{name}: {' '.join(build_model(name).layer_names)}")
            return True
        validate_args(args)
        name = model_name_from_args(args, make_notify(True))
        # The layer names come from the architecture: no weights needed, unless a file was given.
        model = load_dream_model(name, args.weights) if args.weights else build_model(name)
        print(layer_listing(model))
        return True
    return False
