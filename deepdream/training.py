"""Fine-tune a zoo model on an ImageFolder so that it dreams of the user's classes (native MLX).

The pieces, in the order ``fit`` uses them:

* ``prepare_model``: build the architecture with a new K-class classifier, copy every
  pretrained array except the classifier, freeze the stages up to ``freeze_to``.
* ``make_optimizer``: SGD with momentum or Adam(W), with a cosine or step schedule expressed
  in optimizer steps, so the learning rate lives in the optimizer state and resumes with it.
* ``make_train_step``: ``nn.value_and_grad`` + ``optimizer.update`` compiled with ``mx.compile``
  over (model state, optimizer state, random state).
* checkpoints (``save_checkpoint``/``read_checkpoint``/``restore``): parameters + optimizer state + the
  position (epoch, batch) + the configuration, written atomically.
* ``export_dream_weights``: the file ``dream.py --weights`` loads (no aux heads, class names,
  normalisation, colour matrix).

Determinism: the split, each epoch's order, each sample's augmentation and each batch's dropout
key derive from (seed, epoch, batch), so a run resumed at (epoch, batch) replays exactly what an
uninterrupted run would have done, from nothing but the checkpoint.

Data parallel (``mlx.launch``, ``deepdream.distributed``): every rank builds the same run, then
takes rank 0's state (``start``). Each global batch (``batch_size``) is cut into one contiguous
share per rank, augmented exactly as one process would (each sample's key is its position in
the epoch). ``AveragedStep`` computes the gradients of this rank's share, weighted by the
share's part of the batch, and one ``all_sum`` of one flat vector (the trainable gradients,
the updated BatchNorm running statistics, the loss, the hits and the Ctrl-C flag) gives every
rank the global batch's mean gradient: the same update, so the same weights, everywhere.
BatchNorms that train normalise with their rank's own share (PyTorch DDP without SyncBatchNorm);
their running statistics are averaged over ranks in the same vector, so they stay identical.
Dropout draws its masks per rank. Validation is split over the ranks and summed. Rank 0 alone
prints and writes checkpoints, which hold no trace of the number of ranks: a run resumes on any.
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from tqdm import tqdm

from deepdream import distributed as dist
from deepdream import errors
from deepdream.colour import colour_matrix
from deepdream.dataset import (
    Augment,
    BatchLoader,
    ChannelStats,
    ImageFolder,
    calibration_view,
    epoch_order,
    fill_batches,
    num_batches,
    stratified_split,
)
from deepdream.loading import load_dream_model
from models import DreamModel, WeightsError, load_model
from models.base import did_you_mean
from models.registry import default_weights_path, get_facts
from models.weights import CHECKPOINT_KIND, read_weights, save_weights

CHECKPOINT_NAME = "last.npz"

DEFAULT_LR = {"sgd": 0.01, "adam": 3e-4}


class TrainingError(errors.DreamError):
    """A training setup that cannot work; the one-line message says what to change."""


class Interrupted(errors.Interrupted):
    """Ctrl-C during training: the current state was checkpointed to ``saved``."""

    def __init__(self, saved: Path) -> None:
        super().__init__(f"interrupted; checkpoint saved to {saved}, continue with --resume")
        self.saved = saved


@dataclass
class TrainConfig:
    """Everything that determines the trained weights (stored in checkpoints, checked on resume)."""

    model: str = "googlenet"
    weights: str | None = None
    freeze_to: str | None = None        # None: the architecture's default; "none": train everything
    aux: bool = True                     # GoogLeNet's auxiliary classifiers during training
    aux_weight: float = 0.3
    optimizer: str = "sgd"
    lr: float | None = None              # None: DEFAULT_LR[optimizer]
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    step_epochs: int | None = None       # step schedule: x0.1 every this many epochs (default epochs // 3)
    epochs: int = 10
    batch_size: int = 32
    image_size: int = 224
    min_crop_scale: float = 0.25
    val_split: float = 0.2
    balanced: bool = False
    seed: int = 0

    def resolved(self) -> "TrainConfig":
        """Defaults that depend on other settings filled in (``freeze_to`` is resolved with the model)."""
        return dataclasses.replace(self, lr=self.lr if self.lr is not None else DEFAULT_LR.get(self.optimizer, 0.01))

    def validate(self) -> None:
        checks = [
            (self.optimizer in ("sgd", "adam"), f"--optimizer must be sgd or adam (got {self.optimizer})"),
            (self.schedule in ("cosine", "step"), f"--schedule must be cosine or step (got {self.schedule})"),
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.lr is None or self.lr > 0, f"--lr must be positive (got {self.lr})"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (self.aux_weight >= 0, f"--aux-weight must be >= 0 (got {self.aux_weight})"),
            (self.step_epochs is None or self.step_epochs >= 1,
             f"--step-epochs must be at least 1 (got {self.step_epochs})"),
            (0 < self.min_crop_scale <= 1, f"--min-crop-scale must be in (0, 1] (got {self.min_crop_scale})"),
            (0 <= self.val_split < 1, f"--val-split must be in [0, 1) (got {self.val_split})"),
            (self.seed >= 0, f"--seed must be >= 0 (got {self.seed})"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)


# -- model preparation -------------------------------------------------------------------

def trainable_stage_names(model: DreamModel) -> list[str]:
    """Names ``--freeze-to`` accepts: every stage before the classifier."""
    return [name for name, _ in model.stages() if name != "logits"]


def default_freeze(model: DreamModel, arch: str) -> str:
    """The model's default ``--freeze-to`` (``ModelFacts.freeze_to``: the low-level stages, edges and
    textures, stay as ImageNet learned them; the mid and high stages that dreams are made of adapt
    to the data); if that is not one of its stages, the stage a third of the way in."""
    names = trainable_stage_names(model)
    name = get_facts(arch).freeze_to
    return name if name in names else names[len(names) // 3]


def freeze_up_to(model: DreamModel, layer: str) -> list[nn.Module]:
    """Freeze every stage from the input up to and including ``layer``; return the frozen modules.

    Zoo stages that hold parameters are the nn.Modules themselves, so freezing a stage is
    ``module.freeze()``. Their BatchNorms must also stay in inference mode (``set_mode``):
    frozen layers keep ImageNet's running statistics instead of drifting to small batches'.
    """
    names = trainable_stage_names(model)
    if layer == "none":
        return []
    if layer not in names:
        raise TrainingError(f"unknown --freeze-to layer '{layer}' for {model.NAME}.{did_you_mean(layer, names)} "
                            f"Use 'none' or one of: {', '.join(names)}")
    frozen = []
    for name, stage in model.stages():
        if isinstance(stage, nn.Module):
            stage.freeze()
            frozen.append(stage)
        if name == layer:
            break
    return frozen


def set_mode(model: nn.Module, frozen: list[nn.Module], training: bool) -> None:
    """Train/eval mode for the model, with the frozen stages always in eval (BN uses running stats)."""
    model.train(training)
    for module in frozen:
        module.eval()


def _classifier_keys(model: DreamModel, arch_name: str) -> set[str]:
    weight = get_facts(arch_name).classifier_weight
    keys = {k for k, _ in tree_flatten(model.parameters()) if k == weight or k.endswith("." + weight)}
    if not keys:
        raise TrainingError(f"{arch_name} has no classifier parameter '{weight}' (classifier_weight)")
    return keys | {k[: -len("weight")] + "bias" for k in keys if k.endswith("weight")}


def load_base(config: TrainConfig) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    """The pretrained arrays to start from, their metadata and a phrase naming them."""
    if config.weights is not None:
        try:
            pretrained = load_model(config.model, weights=config.weights)
        except WeightsError as exc:
            raise TrainingError(str(exc)) from None
        origin = str(config.weights)
    else:
        facts = get_facts(config.model)
        if not facts.offline and not default_weights_path(config.model).exists():
            raise TrainingError(
                f"no ImageNet weights for {config.model} ({default_weights_path(config.model)} is missing): "
                f"run `{facts.exporter}` first, or fine-tune the model that works offline with "
                "`--model efficientnet_lite0`")
        try:
            pretrained = load_dream_model(config.model)   # converts the package weights on a first run
        except WeightsError as exc:
            raise TrainingError(str(exc)) from None
        origin = f"{config.model} ({pretrained.metadata.get('source', 'ImageNet weights')})"
    arrays = {k: np.array(v) for k, v in tree_flatten(pretrained.parameters())}
    meta = dict(pretrained.metadata)
    meta["mean"], meta["std"] = list(pretrained.mean), list(pretrained.std)
    return arrays, meta, origin


def prepare_model(config: TrainConfig, num_classes: int, base: dict[str, np.ndarray],
                  base_meta: dict[str, Any]) -> tuple[DreamModel, list[nn.Module], str, dict[str, Any], bool]:
    """(model, frozen modules, the freeze layer used, dream config, uses aux heads), new K-class classifier.

    Every pretrained array is copied except the classifier (a new, seeded initialisation) and
    GoogLeNet's aux heads (torchvision's ImageNet file carries them untrained; exporters drop them).
    """
    arch = base_meta.get("architecture", config.model)
    dream_config = {k: v for k, v in dict(base_meta.get("config") or {}).items() if k != "aux_logits"}
    mx.random.seed(config.seed)  # the new classifier's initialisation is part of the run's identity
    build = get_facts(arch).build
    model = build(num_classes=num_classes, **dream_config)
    use_aux = config.aux and config.aux_weight > 0 and hasattr(model, "forward_with_aux")
    if use_aux:
        mx.random.seed(config.seed)
        model = build(num_classes=num_classes, aux_logits=True, **dream_config)
    classifier = _classifier_keys(model, arch)
    current = dict(tree_flatten(model.parameters()))
    loaded, missing = [], []
    for key, value in current.items():
        if key in classifier or key.startswith(get_facts(arch).aux_prefixes):
            continue
        if key in base and tuple(base[key].shape) == tuple(value.shape):
            loaded.append((key, mx.array(base[key])))
        else:
            missing.append(key)
    if missing:
        raise TrainingError(f"the starting weights do not fit {arch}: {len(missing)} parameter(s) missing or "
                            f"of another shape (e.g. {missing[0]}); pass weights made for {arch}")
    model.load_weights(loaded, strict=False)
    if config.image_size < model.MIN_INPUT_SIZE:
        raise TrainingError(f"--image-size {config.image_size} is too small for {arch}; "
                            f"use at least {model.MIN_INPUT_SIZE}")
    freeze_to = config.freeze_to or default_freeze(model, arch)
    frozen = freeze_up_to(model, freeze_to)
    mx.eval(model.parameters())
    return model, frozen, freeze_to, dream_config, use_aux


# -- optimisation ------------------------------------------------------------------------

def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optim.Optimizer:
    """SGD (momentum, L2 weight decay) or AdamW (decoupled decay); the schedule counts optimizer steps."""
    lr = float(config.lr)
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        schedule = optim.cosine_decay(lr, max(total, 1))
    else:
        every = config.step_epochs or max(1, config.epochs // 3)
        schedule = optim.step_decay(lr, 0.1, every * steps_per_epoch)
    if config.optimizer == "sgd":
        return optim.SGD(learning_rate=schedule, momentum=config.momentum, weight_decay=config.weight_decay)
    return optim.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


def classification_loss(model: DreamModel, x: mx.array, y: mx.array, aux_weight: float,
                        use_aux: bool) -> tuple[mx.array, mx.array]:
    """(loss, logits): cross-entropy, plus ``aux_weight`` x each GoogLeNet aux head's (as in the paper)."""
    if use_aux:
        logits, aux1, aux2 = model.forward_with_aux(x)
        loss = nn.losses.cross_entropy(logits, y, reduction="mean")
        loss = loss + aux_weight * (nn.losses.cross_entropy(aux1, y, reduction="mean")
                                    + nn.losses.cross_entropy(aux2, y, reduction="mean"))
    else:
        logits = model(x, outputs=["logits"])["logits"]
        loss = nn.losses.cross_entropy(logits, y, reduction="mean")
    return loss, logits


def make_train_step(model: DreamModel, optimizer: optim.Optimizer, aux_weight: float, use_aux: bool,
                    compile: bool = True) -> Callable[[mx.array, mx.array], tuple[mx.array, mx.array]]:
    """A compiled step: (normalised images, labels) -> (loss, number correct); updates model + optimizer.

    The optimizer state must already exist (``optimizer.init``) so ``mx.compile`` sees every array
    it updates; BN running statistics are part of ``model.state`` and are updated in place too.
    ``compile=False`` runs the same step eagerly: the first compiled call on a fresh machine
    JIT-builds the fused CPU kernels (tens of seconds, cached on disk afterwards), which a short
    run may not win back.
    """
    loss_and_grad = nn.value_and_grad(model, partial(classification_loss, aux_weight=aux_weight, use_aux=use_aux))
    state = [model.state, optimizer.state, mx.random.state]

    def step(x: mx.array, y: mx.array) -> tuple[mx.array, mx.array]:
        (loss, logits), grads = loss_and_grad(model, x, y)
        optimizer.update(model, grads)
        return loss, (mx.argmax(logits, axis=1) == y).sum()

    return mx.compile(step, inputs=state, outputs=state) if compile else step


def batch_key(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """The random key (dropout) of one batch's share on ``rank``, from its position alone."""
    key = [seed, epoch, batch, 0xD50] + ([rank] if rank else [])
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def trained_buffers(model: DreamModel) -> list[str]:
    """Keys of the arrays a training step changes besides the trainable parameters: the running
    statistics of the BatchNorms in training mode (outside the frozen stages)."""
    return [f"{name}.{stat}" for name, module in model.named_modules()
            if isinstance(module, nn.BatchNorm) and module.training and "running_mean" in module
            for stat in ("running_mean", "running_var")]


class AveragedStep:
    """The data-parallel training step: this rank's share of the batch, one ``all_sum``, one update.

    ``share`` is this rank's part of the global batch (its images / batch size): the share's mean
    loss times ``share``, summed over ranks, is the global batch's mean loss, so the summed
    gradients are exactly one process's, whatever the shares' sizes. Called as
    ``step(x, y, stop)``; returns (global mean loss, global hits, any rank asked to stop).
    """

    def __init__(self, model: DreamModel, optimizer: optim.Optimizer, aux_weight: float, use_aux: bool,
                 share: float, compile: bool = True) -> None:
        self.model, self.optimizer = model, optimizer
        self.comm_seconds = 0.0        # time spent in the all_sum (the benchmark reads it)
        self.vector_bytes = 0
        trainable = tree_flatten(model.trainable_parameters())
        self.grad_keys = [k for k, _ in trainable]
        self.buffer_keys = trained_buffers(model)
        current = dict(tree_flatten(model.parameters()))
        shapes = [v.shape for _, v in trainable] + [current[k].shape for k in self.buffer_keys]
        self.sizes = [int(np.prod(s)) for s in shapes]
        self.shapes = shapes
        loss_and_grad = nn.value_and_grad(model, partial(classification_loss, aux_weight=aux_weight, use_aux=use_aux))
        weight = mx.array(share, dtype=mx.float32)

        def gradients(x: mx.array, y: mx.array, stop: mx.array) -> mx.array:
            (loss, logits), grads = loss_and_grad(model, x, y)
            params = dict(tree_flatten(model.parameters()))  # the running statistics just updated
            weighted = [g.reshape(-1) for _, g in tree_flatten(grads)] + [params[k].reshape(-1) for k in self.buffer_keys]
            hits = (mx.argmax(logits, axis=1) == y).sum().astype(mx.float32)
            return mx.concatenate([weight * mx.concatenate([*weighted, loss.reshape(1)]), hits.reshape(1), stop])

        def apply(total: mx.array) -> None:
            pieces = mx.split(total[: sum(self.sizes)], np.cumsum(self.sizes)[:-1].tolist())
            values = [p.reshape(s) for p, s in zip(pieces, self.shapes)]
            n = len(self.grad_keys)
            model.update(tree_unflatten(list(zip(self.buffer_keys, values[n:]))), strict=False)
            optimizer.update(model, tree_unflatten(list(zip(self.grad_keys, values[:n]))))

        self._gradients = gradients
        self._apply = apply
        if compile:
            self._gradients = mx.compile(gradients, inputs=[model.state, mx.random.state],
                                         outputs=[model.state, mx.random.state])
            self._apply = mx.compile(apply, inputs=[model.state, optimizer.state],
                                     outputs=[model.state, optimizer.state])

    def __call__(self, x: mx.array, y: mx.array, stop: bool) -> tuple[float, int, bool]:
        local = self._gradients(x, y, mx.array([1.0 if stop else 0.0]))
        mx.eval(local)
        self.vector_bytes = local.nbytes
        started = time.perf_counter()
        total = dist.all_sum(local)
        self.comm_seconds += time.perf_counter() - started
        self._apply(total)
        mx.eval(self.model.state, self.optimizer.state)
        tail = np.array(total[-3:])
        return float(tail[0]), int(round(tail[1])), bool(tail[2] > 0)


# -- checkpoints -------------------------------------------------------------------------

def save_checkpoint(path: Path, model: nn.Module, optimizer: optim.Optimizer, epoch: int, batch: int,
                    config: TrainConfig, info: dict[str, Any]) -> Path:
    """Atomically write params + optimizer state + position; ``(epoch, batch)`` is the next batch to run."""
    arrays = {f"model.{k}": np.array(v) for k, v in tree_flatten(model.parameters())}
    arrays.update({f"optimizer.{k}": np.array(v) for k, v in tree_flatten(optimizer.state)})
    metadata = {"kind": CHECKPOINT_KIND, "epoch": epoch, "batch": batch,
                "config": dataclasses.asdict(config), **info}
    save_weights(path, arrays, metadata)
    return path


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(model arrays, optimizer arrays, metadata) of a checkpoint, or TrainingError."""
    try:
        arrays, meta = read_weights(path)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read checkpoint {path} ({exc}); start a new run without --resume") from None
    if meta.get("kind") != CHECKPOINT_KIND:
        raise TrainingError(f"{path} is not a train_dream.py checkpoint; pass the checkpoint folder or its {CHECKPOINT_NAME}")
    model = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    opt = {k[len("optimizer."):]: v for k, v in arrays.items() if k.startswith("optimizer.")}
    return model, opt, meta


def restore(run: "Run", model_arrays: dict[str, np.ndarray], opt_arrays: dict[str, np.ndarray],
            meta: dict[str, Any]) -> None:
    """Put a prepared run where the checkpoint left it (before ``fit`` compiles the step)."""
    model, optimizer = run.model, run.optimizer
    try:
        model.load_weights([(k, mx.array(v)) for k, v in model_arrays.items()], strict=True)
    except ValueError as exc:
        raise TrainingError(f"the checkpoint does not fit the model ({exc}); start a new run") from None
    optimizer.state = tree_unflatten([(k, mx.array(v)) for k, v in opt_arrays.items()])
    optimizer.init(model.trainable_parameters())  # fills anything absent, keeps what was loaded
    mx.eval(model.parameters(), optimizer.state)
    run.epoch, run.batch = int(meta["epoch"]), int(meta["batch"])
    run.history = list(meta.get("history", []))
    run.epoch_sums = list(meta.get("epoch_sums", [0.0, 0, 0]))


# -- Ctrl-C ------------------------------------------------------------------------------

class StopRequest:
    """Turns the first Ctrl-C into a flag checked between batches (a consistent state to save);
    a second Ctrl-C raises KeyboardInterrupt at once.

    Under several ranks a hang-up (SIGHUP) is a stop request too: a rank that ``mlx.launch``
    started over ssh sees the launcher's Ctrl-C as its terminal hanging up, and the ranks must
    agree on where to stop (the flag travels in the step's all_sum) for rank 0 to save.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signals = (signal.SIGINT, signal.SIGHUP) if dist.size() > 1 and hasattr(signal, "SIGHUP") \
            else (signal.SIGINT,)

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        previous = {s: signal.signal(s, self._handler) for s in self.signals}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


# -- the loop ----------------------------------------------------------------------------

@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    lr: float
    seconds: float

    def line(self, epochs: int) -> str:
        val = (f"val loss {self.val_loss:.4f}  val acc {self.val_acc:.3f}" if self.val_acc is not None
               else "val acc n/a (--val-split 0)")
        return (f"epoch {self.epoch}/{epochs}  train loss {self.train_loss:.4f}  train acc {self.train_acc:.3f}  "
                f"{val}  lr {self.lr:.3g}  {self.seconds:.1f}s")


def evaluate(model: DreamModel, loader: BatchLoader, indices: np.ndarray, config: TrainConfig,
             frozen: list[nn.Module], stop: StopRequest) -> tuple[float, float, bool]:
    """(mean loss, accuracy, stopped by Ctrl-C) on the validation images (centre view, eval mode).

    Each rank measures its share of the images and one ``all_sum`` adds them up; one process
    stops at a Ctrl-C at once, ranks finish their shares (they must meet in the sum).
    """
    set_mode(model, frozen, training=False)
    total_loss, correct = 0.0, 0
    aug = Augment(config.image_size)
    ranks = dist.size()
    for images, labels in loader.batches(indices[dist.part(len(indices))], config.batch_size, aug, train=False):
        logits = model(model.preprocess(mx.array(images)), outputs=["logits"])["logits"]
        y = mx.array(labels)
        loss = nn.losses.cross_entropy(logits, y, reduction="sum")
        hits = (mx.argmax(logits, axis=1) == y).sum()
        mx.eval(loss, hits)
        total_loss += loss.item()
        correct += hits.item()
        if stop.requested and ranks == 1:
            break
    stopped = stop.requested
    if ranks > 1:
        sums = np.array(dist.all_sum(mx.array([total_loss, correct, float(stopped)])))
        total_loss, correct, stopped = float(sums[0]), int(round(sums[1])), bool(sums[2] > 0)
    set_mode(model, frozen, training=True)
    return total_loss / max(len(indices), 1), correct / max(len(indices), 1), stopped


@dataclass
class Run:
    """A prepared training run: data, split, model, optimizer and where it stands."""

    config: TrainConfig
    data: ImageFolder
    train_idx: np.ndarray
    val_idx: np.ndarray
    model: DreamModel
    frozen: list[nn.Module]
    dream_config: dict[str, Any]
    use_aux: bool
    optimizer: optim.Optimizer
    base_meta: dict[str, Any]
    origin: str
    epoch: int = 0          # next epoch to run (0-based)
    batch: int = 0          # next batch of that epoch
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Running sums of the epoch in progress (loss x samples, correct, samples), so an epoch
    #: interrupted and resumed still reports its true training loss and accuracy.
    epoch_sums: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0, 0])
    #: The step of the last ``fit`` (an ``AveragedStep`` under several ranks: its all_sum time).
    step: Any = None

    @property
    def steps_per_epoch(self) -> int:
        return num_batches(len(self.train_idx), self.config.batch_size)

    def info(self) -> dict[str, Any]:
        return {"architecture": self.base_meta.get("architecture", self.config.model),
                "class_names": list(self.data.classes), "num_classes": len(self.data.classes),
                "data": str(self.data.root), "train_images": int(len(self.train_idx)),
                "val_images": int(len(self.val_idx)), "origin": self.origin,
                "base_mean": self.base_meta["mean"], "base_std": self.base_meta["std"],
                "dream_config": self.dream_config, "history": self.history, "epoch_sums": self.epoch_sums,
                "data_fingerprint": fingerprint(self.data)}


def fingerprint(data: ImageFolder) -> str:
    """A digest of the file list and labels: resuming on a changed dataset would not replay the run."""
    digest = hashlib.sha256()
    for path, label in zip(data.paths, data.labels):
        digest.update(f"{path.relative_to(data.root).as_posix()}\t{data.classes[label]}\n".encode())
    return digest.hexdigest()[:16]


def prepare_run(config: TrainConfig, data: ImageFolder) -> Run:
    config = config.resolved()
    config.validate()
    if len(data.classes) < 2:
        raise TrainingError(f"{data.root} has {len(data.classes)} class folder(s); fine-tuning needs at least 2")
    train_idx, val_idx = stratified_split(data.labels, config.val_split, config.seed)
    if config.batch_size > len(train_idx):
        raise TrainingError(f"--batch-size {config.batch_size} is larger than the {len(train_idx)} training images; "
                            "use a smaller batch or add images")
    if config.batch_size < dist.size():
        raise TrainingError(f"--batch-size {config.batch_size} is smaller than the {dist.size()} ranks (it is the "
                            "global batch, shared among them); use a batch of at least one image per rank")
    base, base_meta, origin = load_base(config)
    model, frozen, freeze_to, dream_config, use_aux = prepare_model(config, len(data.classes), base, base_meta)
    config = dataclasses.replace(config, freeze_to=freeze_to)
    steps = num_batches(len(train_idx), config.batch_size)
    optimizer = make_optimizer(config, steps)
    optimizer.init(model.trainable_parameters())
    return Run(config, data, train_idx, val_idx, model, frozen, dream_config, use_aux, optimizer, base_meta, origin)


def start(run: Run, saved: tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]] | None) -> None:
    """Put every rank where rank 0 starts: the checkpoint ``saved`` (read by rank 0 alone; the
    other ranks pass None), or the fresh run. With one process this is ``restore`` when resuming.

    The ranks first check they built the same run (the dataset's file list, the starting weights
    at the same path on every host), then take rank 0's trained arrays, optimizer state and position.
    """
    if dist.size() > 1:
        digest = hashlib.sha256()
        for key, value in tree_flatten(run.model.parameters()):
            digest.update(key.encode() + np.array(value).tobytes())
        dist.check_same({"dataset (file list)": fingerprint(run.data), "starting weights": digest.hexdigest()},
                        "every host needs the same dataset folder and weights files at the same paths")
    if saved is not None and dist.is_main():
        restore(run, *saved)
    if dist.size() == 1:
        return
    model, optimizer = run.model, run.optimizer
    set_mode(model, run.frozen, training=True)  # which BatchNorms train decides which statistics move
    params = dict(tree_flatten(model.parameters()))
    model_keys = [k for k, _ in tree_flatten(model.trainable_parameters())] + trained_buffers(model)
    opt = sorted(tree_flatten(optimizer.state), key=lambda item: item[0])  # rank 0's may be a checkpoint's order
    values = dist.broadcast_arrays([np.array(params[k]) for k in model_keys] + [np.array(v) for _, v in opt])
    model.load_weights([(k, mx.array(v)) for k, v in zip(model_keys, values)], strict=False)
    optimizer.state = tree_unflatten([(k, mx.array(v)) for (k, _), v in zip(opt, values[len(model_keys):])])
    mx.eval(model.parameters(), optimizer.state)
    position = dist.broadcast_json({"epoch": run.epoch, "batch": run.batch, "history": run.history,
                                    "epoch_sums": run.epoch_sums})
    run.epoch, run.batch = position["epoch"], position["batch"]
    run.history, run.epoch_sums = position["history"], position["epoch_sums"]


Step = Callable[[mx.array, mx.array, bool], tuple[float, int, bool]]


def make_step(run: Run, compile: bool = True) -> Step:
    """``step(images, labels, stop) -> (mean loss, hits, stop)`` over the global batch: with one
    process ``make_train_step``; with several, this rank's share through an ``AveragedStep``."""
    config, model = run.config, run.model
    if dist.size() > 1:
        share = len(range(config.batch_size)[dist.part(config.batch_size)]) / config.batch_size
        return AveragedStep(model, run.optimizer, config.aux_weight, run.use_aux, share, compile=compile)
    step = make_train_step(model, run.optimizer, config.aux_weight, run.use_aux, compile=compile)

    def single(x: mx.array, y: mx.array, stop: bool) -> tuple[float, int, bool]:
        loss, hits = step(x, y)
        mx.eval(loss, hits, model.state, run.optimizer.state)
        return loss.item(), hits.item(), stop

    return single


def fit(run: Run, checkpoint: Path, stop: StopRequest, quiet: bool = False,
        stop_after_epochs: int | None = None, log: Callable[[str], None] | None = None,
        compile: bool = True, on_step: Callable[[int, int, float], None] | None = None) -> bool:
    """Train from ``(run.epoch, run.batch)`` to ``config.epochs``; True when all epochs are done.

    A checkpoint is written after every epoch; on a stop request (Ctrl-C) the current state is
    written and ``Interrupted`` raised; ``stop_after_epochs`` ends early (checkpointed) after
    that many epochs of this call. ``on_step(epoch, batch, loss)`` sees each step's global mean
    loss. Under ``mlx.launch`` every rank calls this; rank 0 alone logs and writes.
    """
    config, model = run.config, run.model
    log = dist.main_only(log or (lambda line: print(line, flush=True)))  # flushed: progress must show when piped
    quiet = quiet or not dist.is_main()
    set_mode(model, run.frozen, training=True)
    step = make_step(run, compile=compile)
    run.step = step
    aug = Augment(config.image_size, min_scale=config.min_crop_scale)
    mine = dist.part(config.batch_size)

    def save(epoch: int, batch: int) -> Path:
        if dist.is_main():
            with dist.write_guard():
                save_checkpoint(checkpoint, model, run.optimizer, epoch, batch, config, run.info())
        return checkpoint

    done_here = 0
    with BatchLoader(run.data) as loader:
        while run.epoch < config.epochs:
            epoch = run.epoch
            started = time.perf_counter()
            order = fill_batches(epoch_order(run.train_idx, run.data.labels, config.seed, epoch, config.balanced),
                                 config.batch_size)
            total_loss, correct, seen = run.epoch_sums if run.batch else (0.0, 0, 0)
            bar = tqdm(total=run.steps_per_epoch, initial=run.batch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="batch", disable=quiet, leave=False)
            batches = loader.batches(order, config.batch_size, aug, train=True,
                                     seed=config.seed, epoch=epoch, start=run.batch, part=mine)
            stopping = False
            for b, (images, labels) in enumerate(batches, start=run.batch):
                mx.random.seed(batch_key(config.seed, epoch, b, dist.rank()))
                loss, hits, stopping = step(model.preprocess(mx.array(images)), mx.array(labels), stop.requested)
                total_loss += loss * config.batch_size  # every batch is full (fill_batches)
                correct += hits
                seen += config.batch_size
                run.batch = b + 1
                run.epoch_sums = [total_loss, correct, seen]
                bar.update(1)
                bar.set_postfix(loss=f"{total_loss / seen:.3f}")
                if on_step is not None:
                    on_step(epoch, b, loss)
                if stopping:
                    break
            bar.close()
            if stopping:
                raise Interrupted(save(run.epoch, run.batch))
            val_loss, val_acc = (None, None)
            if len(run.val_idx):
                val_loss, val_acc, stopping = evaluate(model, loader, run.val_idx, config, run.frozen, stop)
                if stopping:  # training of this epoch is done; validation reruns on resume
                    raise Interrupted(save(run.epoch, run.batch))
            lr = float(run.optimizer.learning_rate.item())
            result = EpochResult(epoch + 1, total_loss / max(seen, 1), correct / max(seen, 1), val_loss, val_acc,
                                 lr, time.perf_counter() - started)
            run.history.append(dataclasses.asdict(result))
            log(result.line(config.epochs))
            run.epoch, run.batch, run.epoch_sums = epoch + 1, 0, [0.0, 0, 0]
            save(run.epoch, 0)
            done_here += 1
            if stop_after_epochs is not None and done_here >= stop_after_epochs and run.epoch < config.epochs:
                return False
    return True


# -- the dream file ----------------------------------------------------------------------

def colour_statistics(run: Run, max_images: int = 1000) -> tuple[np.ndarray, list[float], list[float]]:
    """Colour matrix and per-channel mean/std of (up to ``max_images``, evenly spread) training images."""
    idx = run.train_idx
    if len(idx) > max_images:
        idx = idx[np.linspace(0, len(idx) - 1, max_images).round().astype(int)]
    stats = ChannelStats()

    def views() -> Iterator[np.ndarray]:
        for i in idx:
            view = calibration_view(run.data.paths[int(i)])
            stats.add(view)
            yield view

    matrix = colour_matrix(views())
    return matrix, stats.mean, stats.std


def export_dream_weights(run: Run, out: Path) -> dict[str, Any]:
    """Write the fine-tuned model as a weights file ``dream.py --weights`` and ``load_model`` read.

    Normalisation: the file keeps the *base model's* mean/std (ImageNet's for the zoo), not the
    dataset's. The frozen early layers were trained on inputs normalised that way and training
    fed them the same, so dreaming must normalise identically; the dataset's own mean/std are
    recorded under ``dataset_mean``/``dataset_std`` for information only.
    """
    matrix, data_mean, data_std = colour_statistics(run)
    aux = get_facts(run.base_meta.get("architecture", run.config.model)).aux_prefixes
    arrays = {k: np.array(v) for k, v in tree_flatten(run.model.parameters()) if not k.startswith(aux)}
    last = run.history[-1] if run.history else {}
    metadata = {
        "architecture": run.base_meta.get("architecture", run.config.model),
        "num_classes": len(run.data.classes),
        "class_names": list(run.data.classes),
        "source": f"fine-tuned from {run.origin} on {run.data.root}",
        "mean": list(run.base_meta["mean"]),
        "std": list(run.base_meta["std"]),
        "config": run.dream_config,
        "colour_matrix": matrix.astype(float).tolist(),
        "dataset_mean": data_mean,
        "dataset_std": data_std,
        "training": {"epochs": run.epoch, "val_acc": last.get("val_acc"), "train_loss": last.get("train_loss"),
                     "freeze_to": run.config.freeze_to, "image_size": run.config.image_size,
                     "seed": run.config.seed},
    }
    with dist.write_guard():
        save_weights(out, arrays, metadata)
    return metadata
