"""The training loop shared by every method: optimizer, schedule, AMP, early stopping, resume.

An objective is an nn.Module with ``model`` (what gets saved), ``train_mode()``,
``step(inputs, labels) -> (loss, correct or None)`` and ``evaluate(...)`` (same, no grad).
Early stopping and the saved best weights follow one validation figure of the history (a
``Monitor``): val accuracy, a k-NN accuracy of the embeddings (``KnnMonitor``), or val loss.
An objective may also define ``epoch_figures() -> dict`` (more figures of the epoch just trained,
added to its history row) and ``divergence(row) -> str | None``: a message stops the run with a
FeatxError before that epoch is saved (GAN collapse).

Exact resume: after every epoch the full training state (objective weights, optimizer,
scheduler, grad scaler, torch RNG states and the shuffling generator, epoch, early-stopping
state, best weights, history) is written atomically; a resumed run restores all of it, so on
the same machine it reaches the same final weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from featx.options import OPTIMIZERS
from featx.runtime.errors import FeatxError
from featx.runtime.files import write_atomic
from featx.training.knn import KnnMonitor

STATE_FORMAT = 1


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    lr: float
    weight_decay: float
    optimizer: str
    momentum: float
    warmup_epochs: float
    patience: int
    device: str
    amp: bool
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's; GAN training uses DCGAN's (0.5, 0.999)."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise FeatxError(f"unknown --optimizer {self.optimizer!r}; choose adamw or sgd")
        if self.epochs < 1:
            raise FeatxError(f"--epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise FeatxError(f"--lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Monitor:
    """The history figure that picks the best epoch and drives early stopping."""

    key: str
    higher_is_better: bool = True

    def score(self, row: dict[str, float]) -> float:
        """The figure as a score where higher is better."""
        return row[self.key] if self.higher_is_better else -row[self.key]

    def value(self, score: float) -> float:
        return score if self.higher_is_better else -score


VAL_ACCURACY = Monitor("val_accuracy")
VAL_KNN_ACCURACY = Monitor("val_knn_accuracy")
VAL_LOSS = Monitor("val_loss", higher_is_better=False)


@dataclass
class EarlyStopping:
    """Stops when the monitored score has not improved for ``patience`` epochs (0: never)."""

    patience: int
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, metric: float | None, epoch: int) -> bool:
        """Records an epoch; True when it is the best so far."""
        if metric is None:
            self.best_epoch = epoch
            return True
        if metric > self.best:
            self.best, self.best_epoch, self.bad_epochs = metric, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience


@dataclass
class LoopResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float | None = None
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)


def build_optimizer(parameters: list[nn.Parameter], config: LoopConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only: biases and norm scales (1-d tensors) are not decayed."""
    groups = [
        {"params": [p for p in parameters if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in parameters if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _to_device(inputs: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(inputs, (list, tuple)):
        return tuple(_to_device(x, device, channels_last) for x in inputs)
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def run_loop(
    objective: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    val_loader: torch.utils.data.DataLoader,
    shuffle_generator: torch.Generator,
    config: LoopConfig,
    *,
    state_path: Path,
    resume: bool,
    fingerprint: dict[str, Any],
    monitor: Monitor | None = VAL_ACCURACY,
    knn: KnnMonitor | None = None,
    on_epoch: Callable[[int, LoopResult], None] | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> LoopResult:
    """Trains ``objective`` for ``config.epochs`` epochs (fewer when early stopping fires).

    ``monitor`` None: no figure judges the epochs, the last one is kept and early stopping does
    not apply. ``knn`` adds ``val_knn_accuracy`` to every epoch's row."""
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    objective.to(device)
    if cuda:
        objective.to(memory_format=torch.channels_last)
    parameters = [p for p in objective.parameters() if p.requires_grad]
    optimizer = build_optimizer(parameters, config)
    steps_per_epoch = len(train_loader)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = max(1, round(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup_steps)
    )
    use_amp = cuda and config.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    stopper = EarlyStopping(config.patience)
    result = LoopResult()
    start_epoch = 0

    if resume:
        state = _load_state(state_path, fingerprint)
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        shuffle_generator.set_state(state["rng"]["shuffle"])
        stopper = EarlyStopping(**state["early_stopping"])
        result.history = list(state["history"])
        result.best_state = state["best_state"]
        start_epoch = result.resumed_from_epoch = int(state["epoch"])
        if stopper.should_stop or start_epoch >= config.epochs:
            result.stopped_early = stopper.should_stop
            start_epoch = config.epochs

    columns = (
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=not progress) as bar:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            task = bar.add_task("train", total=steps_per_epoch, epoch=epoch, status="")
            train_figures = _train_epoch(
                objective, train_loader, optimizer, scheduler, scaler, device, use_amp, bar, task
            )
            val_figures = _evaluate(objective, val_loader, device, use_amp, knn)
            bar.remove_task(task)
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            row.update(train_figures)
            row.update(getattr(objective, "epoch_figures", dict)())
            row.update(val_figures)
            diverged = getattr(objective, "divergence", None)
            message = None if diverged is None else diverged(row)
            if message is not None:
                raise FeatxError(message)
            result.history.append(row)
            score = None if monitor is None else monitor.score(row)
            if stopper.update(score, epoch):
                result.best_state = _cpu_copy(objective.model.state_dict())
            result.best_epoch = stopper.best_epoch
            result.best_metric = _best_value(stopper, monitor)
            _save_state(
                state_path,
                {
                    "format": STATE_FORMAT,
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "objective": objective.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if cuda else [],
                        "shuffle": shuffle_generator.get_state(),
                    },
                    "early_stopping": asdict(stopper),
                    "history": result.history,
                    "best_state": result.best_state,
                },
            )
            if console is not None:
                console.print(_epoch_line(row))
            if on_epoch is not None:
                on_epoch(epoch, result)
            if stopper.should_stop:
                result.stopped_early = True
                break
    result.best_epoch = stopper.best_epoch
    result.best_metric = _best_value(stopper, monitor)
    return result


def _best_value(stopper: EarlyStopping, monitor: Monitor | None) -> float | None:
    if monitor is None or stopper.best == -math.inf:
        return None
    return monitor.value(stopper.best)


def _train_epoch(
    objective: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    use_amp: bool,
    bar: Progress,
    task: int,
) -> dict[str, float]:
    objective.train_mode()
    cuda = device.type == "cuda"
    figures = _EpochFigures()
    for inputs, labels in loader:
        inputs, labels = _to_device(inputs, device, cuda), labels.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss, correct = objective.step(inputs, labels)
        if not torch.isfinite(loss):
            raise FeatxError(
                f"training diverged (loss {loss.item()}); lower --lr or raise --warmup-epochs"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        figures.add(loss, correct, len(labels))
        bar.update(task, advance=1, status=f"loss {figures.loss:.4f}")
    return figures.named("train")


@torch.no_grad()
def _evaluate(
    objective: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    use_amp: bool,
    knn: KnnMonitor | None,
) -> dict[str, float]:
    objective.eval()
    figures = _EpochFigures()
    # Validation may draw random views (SimSiam, SimCLR), noise or masks (autoencoder); a fixed
    # fork keeps it repeatable and leaves the training RNG stream untouched (data loaders draw
    # their seeds from it too), so resumed runs stay exact.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for inputs, labels in loader:
            inputs = _to_device(inputs, device, device.type == "cuda")
            labels = labels.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss, correct = objective.evaluate(inputs, labels)
            figures.add(loss, correct, len(labels))
        named = figures.named("val")
        if knn is not None:
            named["val_knn_accuracy"] = knn.accuracy(device, use_amp)
    return named


class _EpochFigures:
    """Running mean loss and accuracy over an epoch's batches; accuracy only when every batch
    reported one (SimSiam reports none)."""

    def __init__(self) -> None:
        self.loss_sum, self.correct, self.seen, self.has_accuracy = 0.0, 0, 0, True

    def add(self, loss: torch.Tensor, correct: float | None, batch: int) -> None:
        """``correct``: the batch's correct predictions (multitask: averaged over the tasks)."""
        self.seen += batch
        self.loss_sum += float(loss.detach()) * batch
        if correct is None:
            self.has_accuracy = False
        else:
            self.correct += correct

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen

    def named(self, split: str) -> dict[str, float]:
        figures = {f"{split}_loss": self.loss}
        if self.has_accuracy:
            figures[f"{split}_accuracy"] = self.correct / self.seen
        return figures


def _epoch_line(row: dict[str, float]) -> str:
    parts = [f"epoch {row['epoch']}"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_knn_accuracy"):
        if key in row:
            parts.append(f"{key.replace('_', ' ')} {row[key]:.4f}")
    return ", ".join(parts)


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in copy.copy(state).items()}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def _load_state(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    if not path.is_file():
        raise FeatxError(
            f"--resume: no training state at {path}; it is written after each epoch of a run "
            "with the same -o. Start without --resume."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise FeatxError(
            f"--resume: {path} is damaged ({type(err).__name__}); start without --resume"
        ) from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise FeatxError(
            f"--resume: {path} is not a featx training state of format {STATE_FORMAT} (another "
            "featx version wrote it); start without --resume"
        )
    differences = [
        f"{key} ({state['fingerprint'].get(key)!r} then, {value!r} now)"
        for key, value in fingerprint.items()
        if state["fingerprint"].get(key) != value
    ]
    if differences:
        raise FeatxError(
            f"--resume: {path} belongs to a different run: " + "; ".join(differences) + ". "
            "Resume with the same settings, or start without --resume."
        )
    return state
