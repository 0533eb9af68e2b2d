#!/usr/bin/env python
"""Fine-tune a zoo model on your own classes so that it dreams of them (native MLX).

    python prepare_dataset.py --data dataset/                 # check the data first
    python train_dream.py --data dataset/ --model efficientnet_lite0 --epochs 10 --out weights/mine.npz
    python dream.py --weights weights/mine.npz --input photo.jpg --decorrelate model

``dataset/<class name>/*.jpg``: at least two classes. A checkpoint is written after every epoch
(``checkpoints/<dataset>_<model>/last.npz``); ``--resume`` continues it, ``--restart`` starts
over; Ctrl-C saves the current state first and exits with status 130.

Under ``mlx.launch -n N -- python train_dream.py ...`` the ranks share every batch (data
parallel, ``--batch-size`` stays the global batch); rank 0 prints and writes (docs/training.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import models  # noqa: F401  (fast BLAS before mlx is imported)
from deepdream import distributed as dist
from deepdream.errors import exit_code, run_main
from deepdream.dataset import ImageFolder, scan_image_folder
from deepdream.training import (
    CHECKPOINT_NAME,
    StopRequest,
    TrainConfig,
    TrainingError,
    export_dream_weights,
    fingerprint,
    fit,
    prepare_run,
    read_checkpoint,
    start,
)
from models import list_models
from models.registry import default_weights_path, get_facts, weights_dir
from models.weights import read_metadata

#: Command-line options that are TrainConfig fields (argparse dest -> field). Their defaults
#: are None here so that "given on the command line" can be told apart on --resume.
CONFIG_FLAGS = {f.name for f in TrainConfig.__dataclass_fields__.values()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Fine-tune a DeepDream model on an ImageFolder (dataset/<class>/*.jpg) with MLX.",
        argument_default=None)
    p.add_argument("--data", required=True, metavar="DIR", help="dataset folder with one sub-folder per class")
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help=f"base model (default googlenet): {', '.join(list_models())}")
    g.add_argument("--weights", metavar="PATH", help="start from this weights file instead of the ImageNet ones")
    g.add_argument("--freeze-to", metavar="LAYER",
                   help="freeze the stages up to and including LAYER ('none' trains all; "
                        "default: googlenet inception3b, efficientnet_lite0 block4, ...)")
    g.add_argument("--no-aux", dest="aux", action="store_false", default=None,
                   help="GoogLeNet: train without the auxiliary classifiers")
    g.add_argument("--aux-weight", type=float, metavar="W", help="GoogLeNet: weight of each aux classifier's loss (default 0.3)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adam"), help="SGD with momentum (default) or Adam (AdamW)")
    g.add_argument("--lr", type=float, metavar="LR", help="peak learning rate (default 0.01 for sgd, 3e-4 for adam)")
    g.add_argument("--momentum", type=float, metavar="M", help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, metavar="WD", help="weight decay (default 1e-4)")
    g.add_argument("--schedule", choices=("cosine", "step"), help="learning-rate schedule (default cosine)")
    g.add_argument("--step-epochs", type=int, metavar="N", help="step schedule: x0.1 every N epochs (default epochs/3)")
    g.add_argument("--epochs", type=int, metavar="N", help="epochs (default 10)")
    g.add_argument("--batch-size", type=int, metavar="N", help="batch size (default 32)")
    g.add_argument("--seed", type=int, metavar="N", help="seed for split, order, augmentation, init (default 0)")
    g = p.add_argument_group("data")
    g.add_argument("--image-size", type=int, metavar="PX", help="training crop size in pixels (default 224)")
    g.add_argument("--min-crop-scale", type=float, metavar="F", help="random resized crop: smallest area fraction (default 0.25)")
    g.add_argument("--val-split", type=float, metavar="F", help="fraction of each class held out for validation (default 0.2)")
    g.add_argument("--balanced", action="store_true", default=None, help="sample classes equally often")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="PATH", help="fine-tuned weights for dream.py --weights (default weights/<run>.npz)")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint folder (default checkpoints/<dataset>_<model>)")
    g.add_argument("--resume", nargs="?", const="", metavar="PATH",
                   help="continue the last checkpoint (of --checkpoint-dir, or the given file/folder)")
    g.add_argument("--restart", action="store_true", default=False,
                   help="start a new run although the checkpoint folder holds one (it is replaced "
                        "by the new run's first checkpoint)")
    g.add_argument("--stop-after-epochs", type=int, metavar="N",
                   help="stop (checkpointed) after N epochs of this invocation; continue later with --resume")
    g.add_argument("--no-compile", dest="compile", action="store_false", default=True,
                   help="run the training step eagerly (skips mx.compile's one-time kernel build; slower steps)")
    g.add_argument("--quiet", action="store_true", default=False, help="no progress bars")
    return p


def explicit_config(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line."""
    return {k: v for k, v in vars(args).items() if k in CONFIG_FLAGS and v is not None}


def model_name(args: argparse.Namespace) -> str:
    if args.model:
        try:
            get_facts(args.model)
        except ValueError as exc:  # the registry's message lists the models
            raise TrainingError(str(exc)) from None
        return args.model
    if args.weights:
        path = Path(args.weights)
        if not path.is_file():
            raise TrainingError(f"--weights file {path} not found")
        try:
            arch = read_metadata(path).get("architecture")
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot read --weights file {path} ({exc})") from None
        if not arch:
            raise TrainingError(f"{path} is not a DeepDream-MLX weights file; convert it with an export_*.py script")
        return arch
    return "googlenet"


def checkpoint_file(args: argparse.Namespace, default_dir: Path) -> Path:
    if args.resume:  # an explicit file or folder
        path = Path(args.resume).expanduser()
        path = path / CHECKPOINT_NAME if path.is_dir() else path
        if not path.is_file():
            raise TrainingError(f"no checkpoint at {path}; pass a checkpoint file or its folder")
        return path
    return (Path(args.checkpoint_dir).expanduser() if args.checkpoint_dir else default_dir) / CHECKPOINT_NAME


def check_writable(path: Path, what: str) -> None:
    """Fail before training when ``path`` cannot be written (a run can take hours).

    Nothing is created here: the nearest existing ancestor must be a writable folder, and the
    files themselves are written (atomically, folders included) only when there is something to save.
    """
    if path.is_dir():
        raise TrainingError(f"{what} {path} is a folder; give a file path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise TrainingError(f"cannot write {what} {path} ({folder} is not a writable folder); choose another path")


def resumed_config(meta: dict, explicit: dict) -> TrainConfig:
    """The checkpoint's configuration; the command line may only extend ``--epochs``."""
    saved = TrainConfig(**meta["config"])
    for key, value in explicit.items():
        if key == "epochs":
            continue
        if getattr(saved, key) != value:
            flag = "--" + key.replace("_", "-")
            raise TrainingError(f"{flag} {value} differs from the checkpoint's {getattr(saved, key)}; "
                                f"drop {flag} to resume, or start a new run with another --checkpoint-dir")
    if "epochs" in explicit:
        if explicit["epochs"] < meta["epoch"]:
            raise TrainingError(f"--epochs {explicit['epochs']} is fewer than the {meta['epoch']} epochs "
                                "already trained; pass a larger value or drop --epochs")
        saved.epochs = explicit["epochs"]
    return saved


def plan(args: argparse.Namespace, data: ImageFolder) -> tuple[TrainConfig, Path, Path, tuple | None]:
    """(configuration, checkpoint file, output file, the checkpoint to resume or None), every
    setting checked before anything slow. Run by rank 0 alone: only it reads checkpoints and writes."""
    if args.restart and args.resume is not None:
        raise TrainingError("--restart starts a new run and --resume continues one; choose one")
    name = model_name(args)
    explicit = explicit_config(args)
    if args.resume is None or args.model or args.weights:
        explicit["model"] = name
    ckpt = checkpoint_file(args, Path("checkpoints") / f"{data.root.name}_{name}")
    if args.resume is not None:
        if not ckpt.is_file():
            raise TrainingError(f"no checkpoint to resume in {ckpt.parent}; start without --resume "
                                "(or pass --checkpoint-dir / --resume PATH)")
        model_arrays, opt_arrays, meta = read_checkpoint(ckpt)
        if meta.get("class_names") != list(data.classes) or meta.get("data_fingerprint") != fingerprint(data):
            raise TrainingError(f"{args.data} is not the dataset the checkpoint was trained on (classes or files "
                                "changed); restore it, or start a new run with another --checkpoint-dir")
        config = resumed_config(meta, explicit)
    else:
        if ckpt.exists() and not args.restart:
            raise TrainingError(f"{ckpt} already holds a checkpoint; continue it with --resume, start over with "
                                "--restart, or pass another --checkpoint-dir")
        config = TrainConfig(**explicit)
    config.resolved().validate()  # bad numbers fail before any model is loaded
    out = Path(args.out).expanduser() if args.out else weights_dir() / f"{data.root.name}_{config.model}.npz"
    if out.suffix != ".npz":
        raise TrainingError(f"--out {out} must end in .npz")
    protected = {default_weights_path(m).resolve() for m in list_models()}
    if config.weights:
        protected.add(Path(config.weights).resolve())
    if out.resolve() in protected:
        raise TrainingError(f"--out {out} would overwrite the starting weights; choose another file")
    check_writable(out, "--out")
    check_writable(ckpt, "the checkpoint")
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise TrainingError(f"--stop-after-epochs must be at least 1 (got {args.stop_after_epochs})")
    return config, ckpt, out, (model_arrays, opt_arrays, meta) if args.resume is not None else None


def train(args: argparse.Namespace) -> int:
    with dist.session("rerun the command with --resume to continue from the last checkpoint") as watch:
        data = scan_image_folder(args.data, min_classes=2)
        saved, shared = None, None
        if dist.is_main():
            config, ckpt, out, saved = plan(args, data)
            shared = {"config": dataclasses.asdict(config), "checkpoint": str(ckpt), "out": str(out)}
        shared = dist.broadcast_json(shared)
        config, ckpt, out = TrainConfig(**shared["config"]), Path(shared["checkpoint"]), Path(shared["out"])
        resume = f"python train_dream.py --data {args.data} --resume {ckpt}"
        if watch is not None:
            watch.hint = f"continue with: {resume}"

        run = prepare_run(config, data)
        start(run, saved)
        if saved is not None:
            dist.print0(f"resuming {ckpt} at epoch {run.epoch + 1}, batch {run.batch}")
        c = run.config
        frozen = f"frozen up to {c.freeze_to}" if c.freeze_to != "none" else "nothing frozen"
        aux = f", aux heads x{c.aux_weight}" if run.use_aux else ""
        ranks = f" over {dist.describe()}" if dist.size() > 1 else ""
        dist.print0(f"{c.model}: {len(data.classes)} classes ({', '.join(data.classes)}), {len(run.train_idx)} train / "
                    f"{len(run.val_idx)} val images, {frozen}{aux}; {c.optimizer} lr {c.lr} {c.schedule}, "
                    f"{c.epochs} epochs x {run.steps_per_epoch} batches of {c.batch_size} at {c.image_size} px{ranks}")

        stop = StopRequest()
        with stop.installed():
            finished = fit(run, ckpt, stop, quiet=args.quiet, stop_after_epochs=args.stop_after_epochs,
                           compile=args.compile)
        if not finished:
            dist.print0(f"stopped after epoch {run.epoch}/{c.epochs}; checkpoint {ckpt}. Continue with: {resume}")
            return 0
        if not dist.is_main():
            return 0
        meta = export_dream_weights(run, out)
    acc = meta["training"]["val_acc"]
    print(f"wrote {out} ({c.model}, {len(data.classes)} classes" + (f", val acc {acc:.3f})" if acc is not None else ")"))
    print(f"dream with: python dream.py --weights {out} --decorrelate model")
    return 0


def main(argv: list[str] | None = None) -> int:
    return exit_code(lambda: train(build_parser().parse_args(argv)))


if __name__ == "__main__":
    run_main(main)
