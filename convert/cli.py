"""The exporters' shared command line, and the one-time conversion a script may run on first use."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.registry import MODELS, WeightsError, default_weights_path, get_facts, missing_weights_error

from .caffe import CaffeFileError
from .pth import PthError
from .torch_weights import export_model

#: The extra install of what needs torch: the downloads and random inits here, the tests, the benchmark.
DEV_REQUIREMENTS = "requirements-dev.txt"
TORCH_MODULES = ("torch", "torchvision")


def make_default_weights(name: str) -> Path:
    """Make ``weights/<name>_mlx.npz`` when it is missing and its source is installed here (a pip
    package: no download), saying so on stderr; otherwise raise the ``WeightsError`` naming the
    exporter. Scripts call this before ``load_model``; the library never converts on its own.
    """
    path = default_weights_path(name)
    if path.exists():
        return path
    facts = get_facts(name)
    if not facts.offline:
        raise missing_weights_error(name)
    print(f"deepdream: {path} not found; converting the installed package weights (runs once)...", file=sys.stderr)
    try:
        return export_model(name, out=path)
    except Exception as exc:  # a missing package, an unreadable file: the message is what matters
        raise WeightsError(f"no weights for {name}: {path} is missing and creating it failed "
                           f"({type(exc).__name__}: {exc}). Run `{facts.exporter}` to retry, or "
                           f"`{facts.exporter} --from-pth PATH` to convert a local checkpoint.") from None


def export_main(name: str | None = None, argv: list[str] | None = None, choices: list[str] | None = None) -> int:
    """The command line shared by every export_*.py script."""
    parser = argparse.ArgumentParser(
        description=f"Export {name or '/'.join(choices or [])} weights to the DeepDream-MLX format "
                    "(default: download the pretrained ImageNet weights).")
    if choices:
        parser.add_argument("--model", choices=choices, default=choices[0])
    caffe = [n for n in (choices or [name]) if MODELS[n].caffe is not None]
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-pth", metavar="PATH",
                        help="convert a local torchvision-format state dict"
                             + (f" (for {', '.join(caffe)}: neural-dream's converted .pth)" if caffe else ""))
    if caffe:
        source.add_argument("--from-caffemodel", metavar="FILE",
                            help=f"convert the original Caffe file of {', '.join(caffe)} (.caffemodel, or "
                                 "googlenet_places205's .tar.gz)")
    source.add_argument("--random-init", action="store_true", help="export a randomly initialised model (tests)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for --random-init")
    parser.add_argument("--out", metavar="PATH", help="output file (default weights/<name>_mlx.npz)")
    args = parser.parse_args(argv)
    name = args.model if choices else name
    from_caffemodel = getattr(args, "from_caffemodel", None)
    for flag, given in (("--from-pth", args.from_pth), ("--from-caffemodel", from_caffemodel)):
        if given and not Path(given).is_file():
            parser.exit(2, f"error: {flag} file {given} not found\n")
    is_caffe = get_facts(name).caffe is not None
    if from_caffemodel and not is_caffe:
        parser.exit(2, f"error: --from-caffemodel is for {', '.join(caffe)}; {name} converts a torch "
                       "checkpoint with --from-pth\n")
    if args.random_init and is_caffe:
        parser.exit(2, f"error: --random-init is not available for {name}; convert its .caffemodel or "
                       "neural-dream's .pth\n")
    try:
        if is_caffe:
            from .caffe import export_caffe

            out = Path(args.out) if args.out else default_weights_path(name)
            path = export_caffe(name, out, caffemodel=from_caffemodel, pth=args.from_pth)
        else:
            path = export_model(name, out=args.out, from_pth=args.from_pth, random_init=args.random_init,
                                seed=args.seed)
    except KeyboardInterrupt:
        parser.exit(130, "interrupted; nothing written\n")
    except (CaffeFileError, PthError) as exc:
        parser.exit(1, f"error: {exc}\n")
    except Exception as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name in TORCH_MODULES:
            needs = "--random-init" if args.random_init else "downloading the pretrained weights"
            parser.exit(1, f"error: {needs} needs torch and torchvision, which the main install leaves out: "
                           f"pip install -r {DEV_REQUIREMENTS}\n")
        facts = get_facts(name)
        hint = "" if args.from_pth or args.random_init or is_caffe else (
            f" Without internet access, download the torchvision checkpoint elsewhere and run "
            f"`{facts.exporter} --from-pth PATH`.")
        parser.exit(1, f"error: exporting {name} failed: {type(exc).__name__}: {exc}.{hint}\n")
    print(f"wrote {path}")
    return 0
