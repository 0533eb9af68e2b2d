"""dream.py's dreams as a job (``jobs.run_job``): every input (files, folders, quoted globs; or noise)
dreamed with every model asked for (one, or ``--model all``), one item each, and under
``--model all`` a contact sheet per input.

One input and one model is the plain dream: one item, its own progress bar and ``--save-every``.
Several inputs, a folder, a glob or ``--model all`` make ``--output`` a folder (``outputs/`` by
default) holding ``<stem>_<model>[_<preset>].<ext>`` for each (``outputs.py``: the names and when
an existing one is kept).

An item's dream is seeded by ``--seed`` alone (a new random seed, recorded, without it): each
photo of a batch is the bytes it would be dreamed into on its own, by whichever rank. Its cost is
its pixel-steps (every octave's pixels times the steps), what the ranks' shares balance.
"""

from __future__ import annotations

import argparse
import glob
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import distributed as dist
from .cli.args import OUTPUT_FOLDER, STILL_SIZE
from .cli.model_choice import available_models, is_all, model_name_from_args
from .cli.settings import settings_for_model
from .cli.start_image import noise_size, noise_start
from .contact_sheet import contact_sheet
from .dreamer import Dreamer, dreamer_on_rank, guide_payload
from .errors import USER_ERRORS, DreamError, Interrupted, Notify
from .image_io import (
    check_output_path,
    check_writable_folder,
    encode_image,
    load_image,
    limited_size,
    probe_image,
    save_image,
)
from .jobs import Item, Job, JobReport, Outputs
from .loading import load_dream_model
from .outputs import PARTIAL, SEED, dream_output, file_sha256, new_seed, record_json
from .settings import DreamSettings

#: The files a folder given to --input contributes (hidden files and other kinds are left out).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")
RECORD_VERSION = 1
SHEET_SUFFIX = "_contact_sheet.png"


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def expand_inputs(specs: list[str]) -> tuple[list[Path], bool]:
    """The files ``--input`` names (files, folders, quoted globs, in order, each once) and whether that
    is a batch (anything but one file). A missing file stays in the list: in a batch it fails alone."""
    files: list[Path] = []
    batch = len(specs) > 1
    for spec in specs:
        path = Path(spec)
        if _is_glob(spec) and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not matches:
                raise DreamError(f"--input '{spec}' matches no file; check the pattern (and quote it, so that the "
                                 "shell leaves it to dream.py)")
            files += matches
            batch = True
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DreamError(f"folder '{spec}' holds no images ({' '.join(IMAGE_EXTENSIONS)}); give a folder of "
                                 "photos")
            files += found
            batch = True
        else:
            files.append(path)
    unique = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values()), batch


def dream_cost(width: int, height: int, settings: DreamSettings) -> float:
    """Pixel-steps of a dream: every octave's pixels times its steps."""
    return float(width * height * settings.steps * sum(settings.scale ** (-2 * k) for k in range(settings.octaves)))


def check_output_folder(output: str | None, inputs: list[Path | None], why: str) -> Path:
    """``--output`` as the folder of a batch (``why``: what makes it one), checked before any work."""
    folder = Path(output) if output else Path(OUTPUT_FOLDER)
    if folder.exists() and not folder.is_dir():
        raise DreamError(f"with {why}, --output names a folder, but '{folder}' is a file")
    if folder.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff") and not folder.exists():
        raise DreamError(f"with {why}, --output names a folder (got '{folder}'); e.g. --output outputs/dreams")
    check_writable_folder(folder)
    if any(p is not None and p.parent.resolve() == folder.resolve() for p in inputs):
        raise DreamError(f"--output '{folder}' is where the inputs are; choose another folder (the next run would "
                         "dream the dreams)")
    return folder


class DreamJob(Job):
    """dream.py's dreams (see the module)."""

    noun = "dream"

    def __init__(self, args: argparse.Namespace, notify: Notify) -> None:
        self.args = args
        self.notify = notify
        self.overwrite = bool(args.overwrite)
        self.seed_given = args.seed is not None
        self.dreamers: dict[str, Dreamer] = {}
        self.folder: Path | None = None
        self.inputs: list[Path | None] = []
        self.ctx: dict[str, Any] = {}
        self.labels: dict[str, str] = {}

    def where(self) -> str:
        return str(self.folder) if self.folder is not None else "the output folder"

    # rank 0 ------------------------------------------------------------------------------------

    def items(self) -> list[Item]:
        args = self.args
        inputs, batch = expand_inputs(args.input) if args.input else ([None], False)
        self.inputs = list(inputs)
        every_model = is_all(args)
        if batch or every_model:
            if args.save_every is not None:
                raise DreamError("--save-every watches one dream; give one --input and one model")
            why = "--model all" if every_model and not batch else "several inputs"
            self.folder = check_output_folder(args.output, self.inputs, why)
        elif args.output is not None:
            check_output_path(args.output, inputs[0])  # before the slow part, so a typo costs nothing
        names = available_models(self.notify) if every_model else [model_name_from_args(args)]
        if not names:
            raise DreamError("no model has weights; run `python export_efficientnet_lite0.py` or another exporter")
        seed = args.seed if args.seed is not None else new_seed()
        guide = None
        models: dict[str, dict[str, Any]] = {}
        # Every model, its settings and its guide checked before the first (long) dream.
        for name in names:
            model = load_dream_model(name, args.weights)
            settings = replace(settings_for_model(args, model, self.notify), seed=seed)
            dreamer = Dreamer(model, settings, quiet=True, notify=self.notify)
            self.dreamers[name] = dreamer
            label = Path(args.weights).stem if args.weights else model.name
            models[name] = {"settings": settings.as_dict(), "label": label}
            self.labels[name] = label
            if guide is None:
                guide = guide_payload(settings)
        weights = str(Path(args.weights).resolve()) if args.weights else None
        noise = list(noise_size(args, STILL_SIZE)) if inputs == [None] else None
        self.ctx = {"seed": seed, "models": models, "noise": noise, "weights": args.weights,
                    "guide": guide}
        items = []
        outputs: dict[Path, Path | None] = {}
        for index, path in enumerate(inputs):
            error, size, source = None, noise, {"noise": noise}
            if path is not None:
                try:
                    size = list(limited_size(*probe_image(path), args.max_size) if args.max_size else probe_image(path))
                    source = {"file": path.name, "sha256": file_sha256(path)}
                except USER_ERRORS as exc:
                    error = " ".join(str(exc).split())
                except OSError as exc:
                    error = f"cannot read input image '{path}' ({exc.strerror or exc}); check the file"
            for name in names:
                settings = self.dreamers[name].settings
                if self.folder is not None:
                    output = dream_output(self.folder, path, self.labels[name], args.preset, name)
                elif args.output is not None:
                    output = Path(args.output)
                else:
                    output = check_output_path(dream_output(OUTPUT_FOLDER, path, self.labels[name], args.preset, name),
                                               path)
                if output in outputs:
                    raise DreamError(f"'{outputs[output]}' and '{path}' would both be dreamed into '{output}'; rename "
                                     "one of them, or dream them into different folders")
                outputs[output] = path
                record = record_json({"version": RECORD_VERSION, "model": name, "weights": weights, "input": source,
                                      "max_size": args.max_size,
                                      "dream": {k: v for k, v in settings.as_dict().items() if k != SEED},
                                      SEED: seed})
                key = f"{path.name if path is not None else 'noise'} {self.labels[name]}" if len(names) > 1 \
                    else (str(path) if path is not None else "noise")
                items.append(Item(key=key, outputs=(str(output),), label=self.labels[name], record=record,
                                  cost=dream_cost(*size, settings) if size else 0.0, error=error,
                                  spec={"input": index if path is not None else None, "path": str(path),
                                        "model": name}))
        return items

    def context(self) -> dict[str, Any]:
        return self.ctx

    def payload(self, item: Item, unit: int) -> bytes:
        index = item.spec["input"]
        if index is None:
            return b""
        path = self.inputs[index]
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DreamError(f"cannot read input image '{path}' ({exc.strerror or exc}); check the file") from None

    # every rank --------------------------------------------------------------------------------

    def start(self, context: dict[str, Any]) -> None:
        self.ctx = context

    def dreamer(self, name: str) -> Dreamer:
        """The model's dreamer (rank 0 built its own while checking; another rank builds it on first use)."""
        if name not in self.dreamers:
            self.dreamers[name] = dreamer_on_rank(name, self.ctx["weights"], self.ctx["models"][name]["settings"],
                                                  self.ctx["guide"], dist.main_only(self.notify))
        return self.dreamers[name]

    def start_image(self, spec: dict[str, Any], payload: bytes, rng: np.random.Generator) -> np.ndarray:
        """The item's start: its input as sent (at --max-size), or noise drawn from the item's generator."""
        if spec["input"] is None:
            return noise_start(tuple(self.ctx["noise"]), rng, self.args.max_size)
        return load_image(spec["path"], max_size=self.args.max_size, data=payload)

    def make(self, item: Item, unit: int, payload: bytes, progress: bool) -> Outputs:
        name = item.spec["model"]
        dreamer = self.dreamer(name)
        rng = np.random.default_rng(self.ctx["seed"])  # one generator: the noise start, then the jitter
        image = self.start_image(item.spec, payload, rng)
        output = item.outputs[0]
        snapshots: list[Path] = []

        def snapshot(rgb: np.ndarray) -> None:  # --save-every: one dream, on rank 0, which writes
            snapshots.append(save_image(output, rgb, {**(item.record or {}), PARTIAL: True}))

        try:
            result = dreamer(image, rng=rng, progress=progress, description=self.ctx["models"][name]["label"],
                             snapshot=snapshot if self.args.save_every else None, save_every=self.args.save_every)
        except KeyboardInterrupt:
            if snapshots:
                raise Interrupted(f"stopped; the last snapshot is in {output}") from None
            raise
        return [(0, encode_image(result, output, item.record))]

    # rank 0, at the end ------------------------------------------------------------------------

    def finish(self, report: JobReport) -> list[Path]:
        """--model all: each input's contact sheet (the input, then each model's dream), once all are made."""
        if not is_all(self.args):
            return []
        done = {i.key: i for i in (*report.made, *report.skipped)}
        by_input: dict[Any, list[Item]] = {}
        for item in done.values():
            by_input.setdefault(item.spec["input"], []).append(item)
        failed = {item.spec["input"] for item, _ in report.failed}
        sheets = []
        for index, group in by_input.items():
            if index in failed:
                continue
            path = self.inputs[index] if index is not None else None
            start = self.start_image(group[0].spec, path.read_bytes() if path else b"",
                                     np.random.default_rng(self.ctx["seed"]))
            order = list(self.ctx["models"])
            group.sort(key=lambda i: order.index(i.spec["model"]))
            cells = [("input", start)] + [(i.label, load_image(i.outputs[0], what="dream")) for i in group]
            stem = path.stem if path is not None else "dream"
            assert self.folder is not None
            sheet = save_image(self.folder / f"{stem}{SHEET_SUFFIX}",
                               np.asarray(contact_sheet(cells), dtype=np.float32) / 255.0)
            sheets.append(sheet)
        return sheets
