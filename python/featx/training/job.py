"""`featx train` / `featx.train`: data + method + loop -> a featx checkpoint, curves, summary.

Everything that can be wrong with the input (data, arch, --init, teacher, settings) is checked
before anything is written. Files written, all atomically: OUTPUT (the featx checkpoint, best
weights so far, replaced every epoch), OUTPUT.state (full training state for --resume, removed
when the run completes) and OUTPUT stem + ``.curves.png``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from featx.features import extractor_feature_model
from featx.models import get_extractor
from featx.models.checkpoint import _final_linear_name, save_checkpoint
from featx.models.registry import Extractor
from featx.options import METHODS, STRATEGIES
from featx.runtime.errors import FeatxError
from featx.runtime.inputs import IMAGE_SUFFIXES
from featx.runtime.metadata import Preprocess
from featx.training.augment import eval_transform, train_transform, two_views
from featx.training.autoencoder import AutoencoderObjective, build_autoencoder
from featx.training.data import (
    ImageDataset,
    TrainingData,
    load_multitask_data,
    load_training_data,
)
from featx.training.distill import DistillObjective, load_teacher
from featx.training.gan import GAN_BETAS, GAN_LR, GANObjective
from featx.training.knn import KnnMonitor
from featx.training.loop import (
    VAL_ACCURACY,
    VAL_KNN_ACCURACY,
    VAL_LOSS,
    LoopConfig,
    LoopResult,
    Monitor,
    run_loop,
)
from featx.training.multitask import MultitaskObjective, checked_weights
from featx.training.report import print_summary, write_curves
from featx.training.simclr import DEFAULT_TEMPERATURE as SIMCLR_TEMPERATURE
from featx.training.simclr import SimCLRObjective
from featx.training.simsiam import SimSiamObjective, build_simsiam
from featx.training.supervised import (
    SupervisedObjective,
    apply_strategy,
    build_classifier,
    load_init,
)

DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}
DEFAULT_TEMPERATURE = {"distill": 4.0, "simclr": SIMCLR_TEMPERATURE}
SELF_SUPERVISED_WITH_KNN = ("simclr", "autoencoder", "gan")
"""Methods that learn without labels but use them, when the data has them, for the k-NN
monitor; on unlabeled data their held-out loss judges the epochs (gan: nothing does, an
adversarial loss says nothing of the features)."""
DEFAULT_WEIGHT_DECAY = {"adamw": 0.05, "sgd": 5e-4}
CUDA_LOADER_WORKERS = 4


class TrainingInterrupted(FeatxError):
    """Ctrl-C: the last finished epoch is kept; --resume continues from it."""

    exit_code = 130


@dataclass
class TrainResult:
    checkpoint: Path
    curves: Path
    method: str
    arch: str
    classes: list[str]
    history: list[dict[str, float]]
    best_epoch: int
    monitor: str | None
    """The history figure that chose the best epoch (None: the last epoch is kept)."""
    best_value: float | None
    stopped_early: bool
    train_images: int
    val_images: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    trainable_parameters: int = 0
    parameters: int = 0
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    tasks: dict[str, list[str]] = field(default_factory=dict)
    """Multitask: each task's class names."""

    @property
    def best_val_accuracy(self) -> float | None:
        """The best epoch's val accuracy (val k-NN accuracy for self-supervised methods), or
        None when no accuracy judged the epochs."""
        return None if self.monitor in (None, VAL_LOSS.key) else self.best_value

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "arch": self.arch,
            "checkpoint": str(self.checkpoint),
            "curves": str(self.curves),
            "num_classes": len(self.classes),
            "tasks": self.tasks,
            "train_images": self.train_images,
            "val_images": self.val_images,
            "skipped_images": len(self.skipped),
            "trainable_parameters": self.trainable_parameters,
            "parameters": self.parameters,
            "epochs_run": len(self.history),
            "resumed_from_epoch": self.resumed_from_epoch,
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch,
            "monitor": self.monitor,
            "best_value": self.best_value,
            "best_val_accuracy": self.best_val_accuracy,
            "final_train_loss": self.history[-1]["train_loss"],
            "seconds": round(self.seconds, 2),
            "device": self.device,
        }


def train(
    data: str | Path,
    arch: str,
    output: str | Path,
    *,
    method: str = "supervised",
    strategy: str = "full",
    blocks: int = 1,
    init: str | Path | None = None,
    teacher: str | Path | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float | None = None,
    optimizer: str = "adamw",
    momentum: float = 0.9,
    weight_decay: float | None = None,
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.1,
    patience: int = 5,
    val_fraction: float = 0.2,
    seed: int = 0,
    augment: str = "standard",
    image_size: int | None = None,
    temperature: float | None = None,
    alpha: float = 0.5,
    feature_weight: float = 0.0,
    reconstruction: str = "mse",
    noise: float = 0.0,
    mask_ratio: float = 0.0,
    tasks: Sequence[str] = (),
    task_weights: Sequence[float] | None = None,
    device: str = "auto",
    amp: bool = True,
    workers: int | None = None,
    resume: bool = False,
    progress: bool = True,
    console: Console | None = None,
    on_epoch: Callable[[int, LoopResult], None] | None = None,
) -> TrainResult:
    """Trains ``arch`` on ``data`` and writes a featx checkpoint to ``output``.

    ``method``: ``supervised`` (transfer learning with ``strategy`` linear|partial|full),
    ``simsiam`` (self-supervised, unlabeled), ``distill`` (from ``teacher``, labeled or not),
    ``simclr`` (contrastive, ``temperature``), ``autoencoder`` (encoder-decoder archs:
    ``reconstruction`` mse|l1, ``noise`` for denoising, ``mask_ratio`` for masked patches),
    ``multitask`` (a CSV with a header: one head per column of ``tasks``, ``task_weights``) or
    ``gan`` (DCGAN; the discriminator's features are the extractor).
    ``temperature`` defaults to the method's own (distill 4, simclr 0.5).
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise FeatxError(f"unknown --method {method!r}; choose {', '.join(METHODS)}")
    if strategy not in STRATEGIES:
        raise FeatxError(f"unknown --strategy {strategy!r}; choose {', '.join(STRATEGIES)}")
    if method != "supervised" and strategy != "full":
        raise FeatxError(f"--strategy applies to supervised training; {method} trains all")
    if method == "distill" and teacher is None:
        raise FeatxError("--method distill needs --teacher TEACHER.pt (a featx checkpoint)")
    if method != "distill" and teacher is not None:
        raise FeatxError("--teacher is only used with --method distill")
    temperature = _checked_temperature(method, temperature)
    if method != "autoencoder" and (noise, mask_ratio, reconstruction) != (0.0, 0.0, "mse"):
        raise FeatxError(
            "--noise, --mask-ratio and --reconstruction are only used with --method autoencoder"
        )
    tasks = list(tasks)
    if method == "multitask":
        task_weights = checked_weights(tasks, task_weights)
    elif tasks or task_weights is not None:
        raise FeatxError("--tasks and --task-weights are only used with --method multitask")
    if batch_size < 2:
        raise FeatxError(f"--batch-size must be >= 2 (BatchNorm needs it), got {batch_size}")
    gan = method == "gan" and optimizer == "adamw"
    if lr is None:
        lr = GAN_LR if gan else DEFAULT_LR.get(optimizer, 1e-3)
    if weight_decay is None:
        weight_decay = 0.0 if gan else DEFAULT_WEIGHT_DECAY.get(optimizer, 0.0)
    loop_config = LoopConfig(
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        optimizer=optimizer,
        momentum=momentum,
        warmup_epochs=warmup_epochs,
        patience=patience,
        device=_resolve_device(device),
        amp=amp,
        betas=GAN_BETAS if gan else LoopConfig.betas,
    )
    extractor = get_extractor(arch)
    preprocess = (
        extractor.preprocess
        if image_size is None
        else Preprocess.for_crop(image_size, extractor.preprocess)
    )
    output = Path(output)
    if output.is_dir():
        raise FeatxError(f"-o {output} is a directory; pass a file name such as model.pt")

    labeled = method == "supervised" or (
        method in ("distill", *SELF_SUPERVISED_WITH_KNN) and _looks_labeled(Path(data))
    )
    dataset = (
        load_multitask_data(data, tasks)
        if method == "multitask"
        else load_training_data(data, labeled=labeled)
    )
    train_samples, val_samples = dataset.split(val_fraction, seed)
    if len(train_samples) < 2:
        raise FeatxError(f"{data}: {len(train_samples)} training image(s) is too few to train")

    torch.manual_seed(seed)
    setup = _set_up_method(
        method,
        extractor,
        preprocess,
        dataset,
        augment=augment,
        strategy=strategy,
        blocks=blocks,
        init=init,
        teacher=teacher,
        label_smoothing=label_smoothing,
        temperature=temperature,
        alpha=alpha,
        feature_weight=feature_weight,
        reconstruction=reconstruction,
        noise=noise,
        mask_ratio=mask_ratio,
        task_weights=task_weights,
    )
    model, objective, classes = setup.model, setup.objective, setup.classes

    config = {
        "data": str(Path(data).resolve()),
        "arch": arch,
        "method": method,
        "strategy": strategy,
        "blocks": blocks,
        "init": None if init is None else str(Path(init).resolve()),
        "teacher": None if teacher is None else str(Path(teacher).resolve()),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing,
        "patience": patience,
        "val_fraction": val_fraction,
        "seed": seed,
        "augment": augment,
        "image_size": preprocess.crop_size,
        "temperature": temperature,
        "alpha": alpha,
        "feature_weight": feature_weight,
        "reconstruction": reconstruction,
        "noise": noise,
        "mask_ratio": mask_ratio,
        "tasks": tasks,
        "task_weights": task_weights,
        "amp": amp,
    }
    shuffle = torch.Generator().manual_seed(seed)
    workers = (
        (CUDA_LOADER_WORKERS if loop_config.device == "cuda" else 0) if workers is None else workers
    )
    train_loader = torch.utils.data.DataLoader(
        ImageDataset(train_samples, setup.transforms[0]),
        batch_size=batch_size,
        shuffle=True,
        generator=shuffle,
        drop_last=len(train_samples) >= batch_size,
        num_workers=workers,
    )
    val_loader = torch.utils.data.DataLoader(
        ImageDataset(val_samples, setup.transforms[1]), batch_size=batch_size, num_workers=workers
    )
    knn = None
    if setup.knn_encoder is not None:
        knn = KnnMonitor(
            setup.knn_encoder,
            *(
                torch.utils.data.DataLoader(
                    ImageDataset(samples, eval_transform(preprocess)),
                    batch_size=batch_size,
                    num_workers=workers,
                )
                for samples in (train_samples, val_samples)
            ),
        )

    output.parent.mkdir(parents=True, exist_ok=True)
    state_path = output.with_name(output.name + ".state")
    curves_path = output.with_name(output.stem + ".curves.png")

    # A CPU copy, made once before training moves the model, holds the weights to save, so
    # the model in training is never touched.
    snapshot = copy.deepcopy(model).to("cpu")

    def save_model(state: dict[str, torch.Tensor], result: LoopResult) -> None:
        snapshot.load_state_dict(state)
        save_checkpoint(
            output,
            snapshot,
            arch,
            preprocess=preprocess,
            classes=classes,
            **({"tasks": dataset.tasks} if dataset.tasks else {}),
            training={
                **config,
                "monitor": None if setup.monitor is None else setup.monitor.key,
                "best_epoch": result.best_epoch,
                "best_value": result.best_metric,
                "epochs_run": len(result.history),
            },
        )

    def after_epoch(epoch: int, result: LoopResult) -> None:
        save_model(_best_or_current(result, model), result)
        if on_epoch is not None:
            on_epoch(epoch, result)

    try:
        result = run_loop(
            objective,
            train_loader,
            val_loader,
            shuffle,
            loop_config,
            state_path=state_path,
            resume=resume,
            fingerprint=config,
            monitor=setup.monitor,
            knn=knn,
            on_epoch=after_epoch,
            console=console,
            progress=progress,
        )
    except KeyboardInterrupt as err:
        raise TrainingInterrupted(
            f"interrupted; the last finished epoch is saved in {state_path}: rerun the same "
            "command with --resume to continue"
        ) from err
    if len(result.history) == result.resumed_from_epoch:
        # Every epoch was done before this resume: after_epoch never ran to write the model.
        save_model(_best_or_current(result, model), result)
    write_curves(curves_path, result.history, f"{method} {arch}")
    state_path.unlink(missing_ok=True)
    return TrainResult(
        checkpoint=output,
        curves=curves_path,
        method=method,
        arch=arch,
        classes=classes,
        history=result.history,
        best_epoch=result.best_epoch,
        monitor=None if setup.monitor is None else setup.monitor.key,
        best_value=result.best_metric,
        stopped_early=result.stopped_early,
        train_images=len(train_samples),
        val_images=len(val_samples),
        skipped=dataset.skipped,
        trainable_parameters=setup.trainable_parameters,
        parameters=sum(p.numel() for p in model.parameters()),
        resumed_from_epoch=result.resumed_from_epoch,
        seconds=time.perf_counter() - started,
        device=loop_config.device,
        tasks=dataset.tasks,
    )


@dataclass
class MethodSetup:
    """What a method trains and how its epochs are judged."""

    model: torch.nn.Module
    """The arch's model: what the checkpoint saves."""
    objective: torch.nn.Module
    transforms: tuple[Callable[..., Any], Callable[..., Any]]
    """(train, val) transforms of a PIL image."""
    trainable_parameters: int
    """Of the saved model's parameters (heads, projectors and generators that are not saved are
    not counted)."""
    monitor: Monitor | None
    knn_encoder: torch.nn.Module | None = None
    """The embedding the k-NN monitor scores (labelled data, self-supervised methods)."""
    classes: list[str] = field(default_factory=list)


def _set_up_method(
    method: str,
    extractor: Extractor,
    preprocess: Preprocess,
    dataset: TrainingData,
    *,
    augment: str,
    strategy: str,
    blocks: int,
    init: str | Path | None,
    teacher: str | Path | None,
    label_smoothing: float,
    temperature: float | None,
    alpha: float,
    feature_weight: float,
    reconstruction: str,
    noise: float,
    mask_ratio: float,
    task_weights: Sequence[float] | None,
) -> MethodSetup:
    arch, size = extractor.name, preprocess.crop_size
    evaluation = eval_transform(preprocess)
    if method in ("simsiam", "simclr"):
        views = two_views(preprocess, augment == "standard")
        if method == "simsiam":
            model, simsiam = build_simsiam(extractor, size)
            objective: torch.nn.Module = SimSiamObjective(model, simsiam)
            knn_encoder, monitor = None, None
        else:
            assert temperature is not None
            objective = SimCLRObjective(extractor, size, temperature)
            model = objective.model
            knn_encoder, monitor = _knn_or_loss(dataset, objective.encoder)
        if init is not None:
            load_init(model, arch, init, _final_linear_name(model))
        return MethodSetup(model, objective, (views, views), _count(model), monitor, knn_encoder)
    if method == "autoencoder":
        model = build_autoencoder(extractor, size)
        if init is not None:
            load_init(model, arch, init, _final_linear_name(model))
        objective = AutoencoderObjective(model, reconstruction, noise, mask_ratio)
        knn_encoder, monitor = _knn_or_loss(
            dataset, extractor_feature_model(extractor, model, size)[0]
        )
        transforms = (train_transform(preprocess, augment), evaluation)
        return MethodSetup(model, objective, transforms, _count(model), monitor, knn_encoder)
    if method == "gan":
        objective = GANObjective(extractor, preprocess)
        if init is not None:
            load_init(objective.model, arch, init, _final_linear_name(objective.model))
        knn_encoder, monitor = _knn_or_loss(dataset, objective.discriminator.encoder)
        transforms = (train_transform(preprocess, augment), evaluation)
        return MethodSetup(
            objective.model,
            objective,
            transforms,
            _count(objective.model),
            None if monitor is VAL_LOSS else monitor,
            knn_encoder,
        )
    if method == "multitask":
        assert task_weights is not None
        objective = MultitaskObjective(
            extractor, size, dataset.tasks, task_weights, label_smoothing
        )
        if init is not None:
            load_init(objective.model, arch, init, _final_linear_name(objective.model))
        transforms = (train_transform(preprocess, augment), evaluation)
        return MethodSetup(
            objective.model, objective, transforms, _count(objective.model), VAL_ACCURACY
        )

    classes = dataset.classes
    teacher_model = None
    if method == "distill":
        teacher_model, num_classes, classes = _checked_teacher(teacher, dataset)
    else:
        num_classes = len(classes)
    model, head = build_classifier(extractor, num_classes)
    if init is not None:
        load_init(model, arch, init, head, classes)
    plan = apply_strategy(model, head, strategy, blocks)
    if teacher_model is None:
        objective = SupervisedObjective(model, plan, label_smoothing)
    else:
        assert temperature is not None
        objective = DistillObjective(
            model,
            teacher_model,
            preprocess,
            student_tap=(extractor.layer, extractor.pool),
            temperature=temperature,
            alpha=alpha,
            feature_weight=feature_weight,
            label_smoothing=label_smoothing,
            labeled=dataset.labeled,
        )
    transforms = (train_transform(preprocess, augment), evaluation)
    return MethodSetup(
        model,
        objective,
        transforms,
        plan.trainable_parameters,
        VAL_ACCURACY,
        classes=classes,
    )


def _knn_or_loss(
    dataset: TrainingData, encoder: torch.nn.Module
) -> tuple[torch.nn.Module | None, Monitor]:
    """Labelled data: the k-NN monitor of ``encoder``; unlabeled: the held-out loss."""
    return (encoder, VAL_KNN_ACCURACY) if dataset.labeled else (None, VAL_LOSS)


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _checked_temperature(method: str, temperature: float | None) -> float | None:
    if method not in DEFAULT_TEMPERATURE:
        if temperature is not None:
            raise FeatxError(
                f"--temperature is used by --method {' and '.join(DEFAULT_TEMPERATURE)}, "
                f"not {method}"
            )
        return None
    return DEFAULT_TEMPERATURE[method] if temperature is None else temperature


def print_result(result: TrainResult, console: Console) -> None:
    print_summary(result.summary(), console)


def _best_or_current(result: LoopResult, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return result.best_state or {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise FeatxError(f"unknown --device {device!r}; choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise FeatxError("--device cuda, but torch sees no CUDA GPU; use --device cpu")
    return device


def _looks_labeled(data: Path) -> bool:
    """A CSV, or a folder whose images all sit in sub-folders (one per class)."""
    if data.is_file():
        return data.suffix.lower() == ".csv"
    if not data.is_dir():
        return False
    loose = any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in data.iterdir())
    return not loose and sum(1 for d in data.iterdir() if d.is_dir()) >= 2


def _checked_teacher(teacher: str | Path, dataset: TrainingData) -> tuple[Any, int, list[str]]:
    loaded, num_classes, teacher_classes = load_teacher(teacher)
    if dataset.labeled:
        if num_classes != len(dataset.classes):
            raise FeatxError(
                f"teacher/student mismatch: the teacher {teacher} predicts {num_classes} "
                f"classes, the data has {len(dataset.classes)} ({', '.join(dataset.classes)})"
            )
        if teacher_classes is not None and teacher_classes != dataset.classes:
            raise FeatxError(
                f"teacher/student mismatch: the teacher's classes {teacher_classes} differ "
                f"from the data's {dataset.classes} (same names, same order needed)"
            )
        return loaded, num_classes, dataset.classes
    return loaded, num_classes, teacher_classes or [str(i) for i in range(num_classes)]
