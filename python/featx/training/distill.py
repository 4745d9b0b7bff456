"""Knowledge distillation: a student learns the teacher's softened class distribution.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
     + (1 - alpha) * cross-entropy(student, labels)        (labeled data only)
     + feature_weight * MSE(projection(student features), teacher features)   (optional)

Unlabeled data uses the soft-target term (and feature matching) only; its "accuracy" is the
student's agreement with the teacher's top class. The projection is a learned linear map, used
when the student's and teacher's feature dims differ (identity otherwise); it is not exported.
Teacher inputs are the student's batch re-normalised and resized to the teacher's preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from featx.features import Pool
from featx.models.checkpoint import LoadedModel, load_model
from featx.runtime.errors import FeatxError
from featx.runtime.metadata import Preprocess
from featx.training.supervised import head_name


def load_teacher(path: str | Path) -> tuple[LoadedModel, int, list[str] | None]:
    """The teacher model (frozen, eval), its class count and class names when it stores them."""
    path = Path(path)
    if not path.is_file():
        raise FeatxError(f"--teacher {path}: no such file (pass a featx checkpoint)")
    try:
        teacher = load_model(path)
    except FeatxError as err:
        raise FeatxError(f"--teacher {path} cannot be loaded: {err}") from err
    head = head_name(teacher.module, teacher.arch)
    for parameter in teacher.module.parameters():
        parameter.requires_grad_(False)
    return teacher, int(teacher.module.get_submodule(head).out_features), teacher.classes


class FeatureTap:
    """Records a module's output during forward (the arch's feature layer), pooled."""

    def __init__(self, model: nn.Module, layer: str | None, pool: str):
        if layer is None:
            raise FeatxError(
                "feature matching needs a named feature layer; this arch has none (generic "
                "torchvision defaults). Use --feature-weight 0."
            )
        try:
            module = model.get_submodule(layer)
        except AttributeError as err:
            raise FeatxError(
                f"feature matching taps layer {layer!r}, which is not a module of the model; "
                "use --feature-weight 0"
            ) from err
        self.pool = Pool(pool)
        self.value: torch.Tensor | None = None
        module.register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.value = self.pool(output)


class TeacherInput(nn.Module):
    """Student-normalised images as the teacher expects them (size, mean, std). The statistics
    are non-persistent buffers: made once, moved with the objective, never saved."""

    def __init__(self, student: Preprocess, teacher: Preprocess):
        super().__init__()
        self.identity = student == teacher
        self.crop_size = teacher.crop_size
        shape = (1, 3, 1, 1)
        for name, values in (
            ("student_mean", student.mean),
            ("student_std", student.std),
            ("teacher_mean", teacher.mean),
            ("teacher_std", teacher.std),
        ):
            self.register_buffer(name, torch.tensor(values).view(shape), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return images
        pixels = images * self.student_std + self.student_mean
        if self.crop_size != images.shape[-1]:
            pixels = F.interpolate(
                pixels, size=self.crop_size, mode="bilinear", antialias=True, align_corners=False
            )
        return (pixels - self.teacher_mean) / self.teacher_std


class DistillObjective(nn.Module):
    def __init__(
        self,
        student: nn.Module,
        teacher: LoadedModel,
        student_preprocess: Preprocess,
        *,
        student_tap: tuple[str | None, str],
        temperature: float,
        alpha: float,
        feature_weight: float,
        label_smoothing: float,
        labeled: bool,
    ):
        super().__init__()
        if temperature <= 0:
            raise FeatxError(f"--temperature must be > 0, got {temperature}")
        if not 0 <= alpha <= 1:
            raise FeatxError(f"--alpha must be within [0, 1], got {alpha}")
        self.model = student
        self.teacher = teacher.module.eval()
        self.teacher_input = TeacherInput(student_preprocess, teacher.extractor.preprocess)
        self.labeled = labeled
        self.temperature = temperature
        self.alpha = alpha
        self.feature_weight = feature_weight
        self.label_smoothing = label_smoothing
        self.projection: nn.Module = nn.Identity()
        if feature_weight > 0:
            self.student_tap = FeatureTap(student, *student_tap)
            self.teacher_tap = FeatureTap(
                self.teacher, teacher.extractor.layer, teacher.extractor.pool
            )
            student_dim, teacher_dim = self._feature_dims(student_preprocess.crop_size)
            if student_dim != teacher_dim:
                self.projection = nn.Linear(student_dim, teacher_dim)

    def _feature_dims(self, input_size: int) -> tuple[int, int]:
        probe = torch.zeros(2, 3, input_size, input_size)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            self.model(probe)
            self.teacher(self.teacher_input(probe))
        self.model.train(was_training)
        return self.student_tap.value.shape[1], self.teacher_tap.value.shape[1]

    def train_mode(self) -> None:
        self.model.train()
        self.projection.train()
        self.teacher.eval()

    def _losses(
        self, images: torch.Tensor, labels: torch.Tensor, smoothing: float
    ) -> tuple[torch.Tensor, int]:
        with torch.no_grad():
            teacher_logits = self.teacher(self.teacher_input(images))
        logits = self.model(images)
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
        if self.labeled:
            hard = F.cross_entropy(logits, labels, label_smoothing=smoothing)
            loss = self.alpha * soft + (1 - self.alpha) * hard
            target = labels
        else:
            loss = soft
            target = teacher_logits.argmax(dim=1)
        if self.feature_weight > 0:
            matched = F.mse_loss(
                self.projection(self.student_tap.value), self.teacher_tap.value.detach()
            )
            loss = loss + self.feature_weight * matched
        return loss, int((logits.argmax(dim=1) == target).sum())

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self._losses(images, labels, self.label_smoothing)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self._losses(images, labels, 0.0)
