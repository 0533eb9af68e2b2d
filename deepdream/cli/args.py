"""The flags of every dreaming script, defined once: the dream options (model, objective, dream),
the start image, feature visualisation, and dream.py's own parser (``still_parser``).

A dream setting's flag is its ``DreamSettings`` field: the flag's ``dest`` is the field's name
(``--lap-norm`` sets ``lap_norm``; ``flag_name`` gives the flag of a field), it defaults to None
so that ``settings.settings_for_model`` can tell an explicit flag (which wins) from a preset's
value, and its help takes the default from ``DEFAULTS`` (``DreamSettings()``).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from typing import NoReturn

from models import list_models

from .. import memory
from ..param import PARAMS
from ..presets import PRESETS
from ..settings import GRAD_NORMS, DreamSettings
from ..sweep import SWEEP_BATCH
from ..visualise import RenderSettings
from .model_choice import OFFLINE_MODEL

#: The generic dream settings, as the help texts quote them.
DEFAULTS = DreamSettings()
#: dream.py's noise image side when --width/--height are not given.
STILL_SIZE = 512
#: An atlas's render side when --width/--height are not given: thousands of small images.
ATLAS_SIZE = 128
OUTPUT_FOLDER = "outputs"
#: Flags whose name is not their field's (``--field-name``).
_FLAG_NAMES = {"smooth": "--no-smoothing"}


def flag_name(field: str) -> str:
    """The flag that sets ``field`` (a ``DreamSettings`` field, or any other flag's dest)."""
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


class DreamArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ... (see --help)``) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        from .. import distributed as dist

        if dist.is_main():
            self.exit(2, f"error: {message} (see {self.prog} --help)\n")
        # Every rank parses the same command: rank 0 says it once. The others leave after it has (the
        # launcher ends every rank once one exits with an error).
        import time

        time.sleep(1.0)
        self.exit(2)


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


def flag_dests(add: Callable[[argparse.ArgumentParser], object]) -> tuple[str, ...]:
    """The dests of the flags ``add(parser)`` defines, in order (what a group of flags owns)."""
    scratch = argparse.ArgumentParser(add_help=False)
    add(scratch)
    return tuple(vars(scratch.parse_args([])))


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

    # From here on, each flag sets the DreamSettings field of its dest.
    g = parser.add_argument_group("objective")
    g.add_argument("--layers", nargs="+", metavar="LAYER", help="layer(s) whose activations to amplify")
    g.add_argument("--channels", nargs="+", metavar="C",
                   help="only these channel indices of the layer(s); ranges like 0-63; 'all' with --sweep")
    g.add_argument("--guide", metavar="IMAGE",
                   help="guide image: steer each feature toward its best match in this image's features")

    g = parser.add_argument_group("dream")
    g.add_argument("--octaves", type=whole_number, metavar="N",
                   help=f"number of scales (default from recipe, {DEFAULTS.octaves})")
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


def add_image_arguments(parser: argparse.ArgumentParser, *, noun: str, output_help: str, default_size: int,
                        default_max_size: int | None = None) -> None:
    """--input, --output, --width, --height and --max-size; ``noun`` ("image" or "frame") and the
    defaults go into the help."""
    g = parser.add_argument_group("input and output")
    if noun == "image":
        g.add_argument("--input", metavar="PATH", nargs="+",
                       help="image(s) to dream on (any format Pillow reads): files, folders or quoted globs "
                            "('photos/*.jpg'); several make --output a folder. Omit to dream from noise")
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
    if noun == "image":
        g.add_argument("--overwrite", action="store_true",
                       help="make outputs again that exist with other settings (without it they are refused; outputs "
                            "made with the same settings are skipped, so a rerun makes only what is missing)")


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """Feature visualisation (renders from noise): objectives, parameterisation, robustness, sweeps;
    and --save-every, which watches a dream or a render."""
    _add_render_flags(parser)
    parser.add_argument("--save-every", type=whole_number, metavar="N",
                        help="write the image every N steps (and at each octave's end) to watch a long run")


def _add_render_flags(parser: argparse.ArgumentParser) -> None:
    """The feature visualisation group: any of these flags makes dream.py render instead of dream."""
    d = RenderSettings()
    g = parser.add_argument_group("feature visualisation (renders from noise; any of these switches it on)")
    g.add_argument("--class", dest="class_", nargs="+", metavar="NAME|INDEX",
                   help="render a class: an ImageNet name (e.g. goldfish; quote names with spaces), a fine-tuned "
                        "model's class, or an index; with --sweep or --atlas also 'all', several, or ranges of "
                        "indices like 0-7")
    g.add_argument("--neuron", metavar="LAYER:CHANNEL", help="render the centre unit of a channel, e.g. block10:7")
    g.add_argument("--param", choices=PARAMS, default=None,
                   help="what is optimised: fft (1/f-scaled spectrum, default for renders) or pixel")
    g.add_argument("--decay-power", type=number, metavar="P",
                   help=f"fft spectrum scaling 1/|f|^P (default {d.decay_power:g}; larger is smoother)")
    g.add_argument("--batch", type=whole_number, metavar="N",
                   help=f"images per pass: N renders of one objective (default {d.batch}), or items per pass "
                        f"of a --sweep or --atlas (default {SWEEP_BATCH}; the batch size changes an image's last bits)")
    g.add_argument("--diversity", type=number, metavar="W",
                   help="push the --batch images apart in style (Lucid's diversity term), weight W (e.g. 100)")
    g.add_argument("--sweep", action="store_true",
                   help="one render per item of --channels (with one --layers) or of --class (all, or a list), into "
                        "--output FOLDER, with a contact sheet and an index.html page; re-running renders only what "
                        "is missing")
    g.add_argument("--atlas", action="store_true",
                   help="an atlas of the model into --output FOLDER: every channel "
                        "of --layers (default: the model's dream layers; 'all' for every layer) limited to "
                        "--channels if given, and the --class list, each rendered from noise "
                        f"({ATLAS_SIZE} px unless --width/--height), with a browsable index.html; re-running "
                        "renders only what is missing")
    g.add_argument("--pad", type=whole_number, metavar="PX", help=f"robustness: grey padding (default {d.robustness.pad})")
    g.add_argument("--scale-range", type=number, nargs=2, metavar=("LOW", "HIGH"),
                   help=f"robustness: random scale range (default {' '.join(f'{v:g}' for v in d.robustness.scale_range)})")
    g.add_argument("--rotate-range", type=number, metavar="DEG",
                   help=f"robustness: random rotation up to DEG degrees either way (default {d.robustness.rotate:g}); "
                        f"--jitter sets the shift (default {d.robustness.jitter} for renders)")
    g.add_argument("--no-robustness", action="store_true", help="no pad, jitter, scale or rotation while rendering")


#: The flags that switch dream.py to a render from noise (``settings.is_render``).
RENDER_FLAGS = flag_dests(_add_render_flags)


def still_parser() -> argparse.ArgumentParser:
    """dream.py's command line (here, so make_assets.py resolves its demos exactly as dream.py does)."""
    parser = DreamArgumentParser(
        description="DeepDream an image with an MLX model. Without --input, dreams from noise.",
        epilog="Example: python dream.py --input assets/chelsea.png --preset efficientnet_lite0 --steps 30",
    )
    add_image_arguments(parser, noun="image", default_size=STILL_SIZE,
                        output_help=f"output image (default {OUTPUT_FOLDER}/<input-stem>_<model>[_<preset>].<ext>); "
                                    f"a folder (default {OUTPUT_FOLDER}/) with several inputs or --model all")
    add_dream_arguments(parser)
    add_render_arguments(parser)
    return parser


#: How a flag's value is written back on a command line, where ``str`` would not parse as it did.
_WRITE_BACK: dict[str, Callable[[object], str]] = {"max_memory": lambda size: f"{size}B"}


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace, script: str, **changes: object) -> str:
    """The shell command that runs ``script`` with ``args``, after ``changes`` (dest -> value; None drops
    the flag): every flag whose value is not its default, in the parser's order, quoted for a shell.
    What a gallery page shows under an image: the command that makes it again, alone."""
    values = {**vars(args), **changes}
    words = ["python", script]
    written: set[str] = set()
    # The output last: it reads as "do all this, into there".
    actions = sorted(parser._actions, key=lambda action: action.dest == "output")
    for action in actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction) or action.dest in written:
            continue
        value = values.get(action.dest)
        if value is None or value == action.default:
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if action.nargs == 0:            # store_true, store_false, store_const: the flag itself is the value
            if value != action.const:
                continue
            words.append(flag)
        else:
            write = _WRITE_BACK.get(action.dest, str)
            items = value if isinstance(value, (list, tuple)) else [value]
            words += [flag, *(write(v) for v in items)]
        written.add(action.dest)
    return shlex.join(words)
