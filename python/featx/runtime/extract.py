"""featx extract: a folder of images in, sharded embeddings out, nothing lost.

inputs -> C++ pipeline (decode, resize, crop, normalise in worker threads) -> model backend ->
shards written atomically -> manifest. See featx.runtime.shards for the output layout and
featx.runtime.inputs for the input order.

Model backends: ``onnx`` (the default) is featx.Runner, the C++ ONNX Runtime session over an
exported .onnx file. Any other backend is a plug-in found under the ``featx.backends`` entry
points: a callable ``factory(model_path, *, device, threads, fuse, arch) -> ModelBackend``.
featx registers ``torch`` there (featx.torch_runner.TorchRunner: a checkpoint's feature model in
PyTorch, optionally featx.fuse'd), so this module never imports the PyTorch side.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from featx._version import __version__
from featx.runtime.decode import decode_rgb_bytes
from featx.runtime.errors import FeatxError, OutputWriteError, missing_extra
from featx.runtime.files import file_sha256, make_folder
from featx.runtime.inputs import IMAGE_EXTENSIONS, Inputs, read_inputs
from featx.runtime.lock import OutputLock
from featx.runtime.parquet import ParquetColumns
from featx.runtime.pipeline import FallbackDecoder, PipelineItems
from featx.runtime.runner import Runner
from featx.runtime.shards import (
    ERRORS,
    MANIFEST,
    Manifest,
    ShardWriter,
    remove_stale_temporaries,
)

ONNX_BACKEND = "onnx"
BACKEND_ENTRY_POINTS = "featx.backends"
DEFAULT_BATCH_SIZE = 32
DEFAULT_SHARD_SIZE = 4096
PREFETCH_BATCHES = 3


class ModelBackend(Protocol):
    """What extraction needs of a model: featx.Runner (ONNX) and featx.TorchRunner provide it.

    ``run`` maps a (batch, 3, H, W) array of preprocessed images to (batch, embedding_dim)
    embeddings; ``pipeline`` returns the C++ decode pipeline of ``items`` for the model's
    preprocessing (featx.runtime.pipeline.batch_pipeline).
    """

    arch: str
    embedding_dim: int

    def run(self, images: np.ndarray) -> np.ndarray: ...

    def pipeline(
        self, items: PipelineItems, batch_ends: list[int], workers: int, prefetch: int
    ) -> Any: ...


class Interrupted(FeatxError):
    """Ctrl-C: finished shards are kept, the shard in flight is discarded."""

    exit_code = 130


@dataclass(frozen=True)
class ExtractSummary:
    inputs: int
    rows: int
    errors: int
    resumed_inputs: int
    seconds: float
    out_dir: Path

    @property
    def processed(self) -> int:
        """Inputs handled by this run (resumed shards excluded)."""
        return self.inputs - self.resumed_inputs

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def extract(
    model: str | Path,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    threads: int = 0,
    device: str = "cpu",
    fmt: str = "npy",
    dtype: str = "float32",
    resume: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
    console: Console | None = None,
    backend: str = ONNX_BACKEND,
    fuse: bool = False,
    arch: str | None = None,
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    image_column: str | None = None,
    id_column: str | None = None,
    keep_columns: Sequence[str] = (),
) -> ExtractSummary:
    """Extracts embeddings of every image in ``inputs`` into shards under ``out_dir``.

    ``resume=None`` resumes when ``out_dir`` holds a manifest of the same job, ``True`` requires
    one, ``False`` refuses to touch existing output; ``overwrite`` discards whatever is there.
    ``backend="onnx"`` runs a featx-exported .onnx file; ``backend="torch"`` runs a checkpoint
    (``arch`` for a plain state_dict) in PyTorch, through featx.fuse's kernels when ``fuse``.
    ``inputs`` may name WebDataset tar shards or parquet files (featx.runtime.inputs);
    ``image_extensions`` say which member of a tar sample is its image, by preference;
    ``image_column`` and ``id_column`` which columns of parquet input hold the image and the id
    (featx.runtime.parquet), and ``keep_columns`` are copied into the output rows (``fmt``
    parquet).
    """
    started = time.perf_counter()
    console = console or Console(stderr=True)
    if batch_size < 1 or shard_size < 1:
        raise FeatxError(f"batch size ({batch_size}) and shard size ({shard_size}) must be >= 1")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise FeatxError(f"--workers must be >= 1, got {workers}")
    keep = tuple(keep_columns)
    if keep and fmt != "parquet":
        raise FeatxError(
            "--keep-columns copies columns into the output's rows, which only parquet output "
            "has: add --format parquet."
        )
    listed = read_inputs(inputs, image_extensions, ParquetColumns(image_column, id_column, keep))
    if not listed.ids:
        raise FeatxError(f"no images found in {inputs}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FeatxError(f"output {out} exists and is not a folder")

    runner = _open_backend(model, backend, device, threads, fuse, arch)
    writer = ShardWriter(out, fmt, dtype)
    job = Manifest(
        model={
            "path": str(model),
            "sha256": file_sha256(Path(model)),
            "arch": runner.arch,
            "embedding_dim": runner.embedding_dim,
        },
        inputs={"count": len(listed), "sha256": listed.fingerprint},
        settings={
            "format": fmt,
            "dtype": dtype,
            "shard_size": shard_size,
            **({"keep_columns": list(keep)} if keep else {}),
            **({"backend": backend, "fuse": fuse} if backend != ONNX_BACKEND else {}),
        },
        featx_version=__version__,
    )
    make_folder(out)
    prepared = False
    try:
        with OutputLock(out):
            _prepare_out_dir(out, job, writer, resume, overwrite, console)
            prepared = True
            pending = [k for k in range(-(-len(listed) // shard_size)) if k not in job.shards]
            resumed_inputs = sum(entry["inputs"] for entry in job.shards.values())

            def record(entry: dict[str, Any]) -> None:
                job.shards[entry["index"]] = entry
                job.save(out)

            with _progress_bar(console, progress, len(listed), resumed_inputs) as advance:
                extraction = ShardExtraction(runner, writer, listed, shard_size, pending, record)
                extraction.run(batch_size, workers, advance, console)
            job.complete = True
            job.save(out)
    except KeyboardInterrupt as err:
        raise Interrupted(
            f"interrupted: {_kept(job, out, shard_size, prepared)}. Run the same command again "
            "to resume."
        ) from err
    except OutputWriteError as err:
        fix = "Free space there" if err.full else "Make the folder writable"
        raise OutputWriteError(
            f"{err} {_kept(job, out, shard_size, prepared)}. {fix} (or write to another folder "
            "with -o), then run the same command again to resume.",
            full=err.full,
        ) from err
    summary = ExtractSummary(
        inputs=len(listed),
        rows=sum(s["rows"] for s in job.shards.values()),
        errors=sum(len(s["errors"]) for s in job.shards.values()),
        resumed_inputs=resumed_inputs,
        seconds=time.perf_counter() - started,
        out_dir=out,
    )
    return summary


def _kept(job: Manifest, out: Path, shard_size: int, prepared: bool) -> str:
    """What the output folder holds after a stop, for the message that says so."""
    if not prepared:
        return "This run wrote no shard"
    shard_count = -(-job.inputs["count"] // shard_size)
    return (
        f"{len(job.shards)} of {shard_count} shards are finished and kept in {out}; the shard "
        "in flight was discarded"
    )


def _open_backend(
    model: str | Path, backend: str, device: str, threads: int, fuse: bool, arch: str | None
) -> ModelBackend:
    if backend == ONNX_BACKEND:
        if fuse or arch is not None:
            raise FeatxError(
                "--fuse and --arch apply to --backend torch (a checkpoint run in PyTorch); an "
                ".onnx model is already folded and runs on ONNX Runtime."
            )
        return Runner(model, device=device, threads=threads, spinning=False)
    plugins = {point.name: point for point in entry_points(group=BACKEND_ENTRY_POINTS)}
    if backend not in plugins:
        names = [ONNX_BACKEND, *sorted(plugins)]
        raise FeatxError(f"unknown backend {backend!r}; choose {' or '.join(names)}")
    try:
        factory = plugins[backend].load()
    except ModuleNotFoundError as err:
        extra = missing_extra(err, f"--backend {backend}")
        if extra is None:
            raise
        raise extra from err
    return factory(Path(model), device=device, threads=threads, fuse=fuse, arch=arch)


def _prepare_out_dir(
    out: Path,
    job: Manifest,
    writer: ShardWriter,
    resume: bool | None,
    overwrite: bool,
    console: Console,
) -> None:
    existing = Manifest.load(out)
    if existing is not None and overwrite:
        for entry in existing.shards.values():
            for name in entry["files"].values():
                (out / name).unlink(missing_ok=True)
        existing = None
    if existing is None:
        if resume is True:
            raise FeatxError(f"--resume: {out} holds no {MANIFEST}, so there is nothing to resume")
        leftovers = sorted(p.name for p in out.glob("features-*"))
        if leftovers and not overwrite:
            raise FeatxError(
                f"{out} holds featx shards ({leftovers[0]}, ...) but no {MANIFEST}; they belong "
                "to no known job. Choose an empty folder or pass --overwrite."
            )
        for name in leftovers:
            (out / name).unlink()
        for name in out.glob("ids-*.json"):
            name.unlink()
    else:
        differences = existing.same_job(job)
        if differences:
            raise FeatxError(
                f"{out} holds the output of another job (different {'; '.join(differences)}). "
                "Choose another output folder, or pass --overwrite to replace that output."
            )
        if resume is False:
            raise FeatxError(
                f"{out} already holds output of this job ({len(existing.shards)} shards); "
                "resume it (the default) or pass --overwrite to start again."
            )
        intact = {k: s for k, s in existing.shards.items() if writer.verify(s)}
        if len(intact) < len(existing.shards):
            console.print(
                f"{len(existing.shards) - len(intact)} finished shards are missing or damaged "
                "and will be extracted again"
            )
        job.shards = intact
        if intact:
            console.print(f"resuming: {len(intact)} shards already finished in {out}")
    remove_stale_temporaries(out)
    job.save(out)


@dataclass
class _ShardRows:
    """What one shard collects until its last input has gone through the model."""

    index: int
    first_input: int
    stop_input: int
    usable_inputs: list[int] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def _progress_bar(
    console: Console, show: bool, total: int, completed: int
) -> Iterator[Callable[[int], None]]:
    """A progress bar over a job's ``total`` inputs, ``completed`` of them done before; yields
    ``advance(inputs)``, which also shows this run's rate."""
    with Progress(
        TextColumn("extracting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.1f} img/s"),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    ) as progress:
        task = progress.add_task("", total=total, completed=completed, rate=0.0)
        started = time.perf_counter()
        done = 0

        def advance(inputs: int) -> None:
            nonlocal done
            done += inputs
            elapsed = max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=inputs, rate=done / elapsed)

        yield advance


class ShardExtraction:
    """Runs shards ``pending`` of a job (in that order) through the pipeline and the model and
    writes each with ``writer``; ``on_shard`` gets each finished shard's manifest entry. Shard k
    is inputs [k * shard_size, (k + 1) * shard_size)."""

    def __init__(
        self,
        runner: ModelBackend,
        writer: ShardWriter,
        inputs: Inputs,
        shard_size: int,
        pending: list[int],
        on_shard: Callable[[dict[str, Any]], None],
    ):
        self.runner = runner
        self.writer = writer
        self.inputs = inputs
        self.shard_size = shard_size
        self.pending = pending
        self.on_shard = on_shard

    def plan(self, batch_size: int) -> tuple[list[int], list[int]]:
        """Input indices to process, in order, and batch ends that never cross a shard."""
        order: list[int] = []
        batch_ends: list[int] = []
        for shard in self.pending:
            start, stop = self._bounds(shard)
            for first in range(start, stop, batch_size):
                order.extend(range(first, min(first + batch_size, stop)))
                batch_ends.append(len(order))
        return order, batch_ends

    def run(
        self,
        batch_size: int,
        workers: int,
        advance: Callable[[int], None] | None = None,
        console: Console | None = None,
    ) -> None:
        """Extracts the shards; ``advance(inputs)`` is told of each batch done."""
        order, batch_ends = self.plan(batch_size)
        items = self.inputs.items.pipeline_items(order, self._fallback_decoder(order))
        pipeline = self.runner.pipeline(items, batch_ends, workers, PREFETCH_BATCHES)
        shards = iter(self.pending)
        current = self._open(next(shards, None))
        try:
            while (batch := pipeline.next()) is not None:
                first, rows, tensor, statuses = batch
                inputs = order[first : first + rows]
                usable = self._sort_rows(inputs, statuses, current)
                current.embeddings.append(self.runner.run(tensor)[usable])
                if advance is not None:
                    advance(rows)
                if inputs[-1] == current.stop_input - 1:
                    self._write(current)
                    current = self._open(next(shards, None))
        except KeyboardInterrupt:
            # The pipeline's workers finish the read they are in before they stop; one stuck in
            # a read (a hung network mount) holds the command up, so say what it waits on.
            if console is not None:
                console.print("interrupted: stopping the decode workers")
            pipeline.cancel()
            raise

    def _sort_rows(
        self, inputs: list[int], statuses: list[tuple[str, str]], shard: _ShardRows
    ) -> list[int]:
        """Rows of the batch that hold images; the others' errors recorded."""
        usable = []
        for row, (input_index, (status, message)) in enumerate(zip(inputs, statuses, strict=True)):
            if input_index in self.inputs.unusable:
                status, message = "error", self.inputs.unusable[input_index]
            if status == "ok":
                usable.append(row)
                shard.usable_inputs.append(input_index)
            else:
                shard.errors.append({"path": self.inputs.ids[input_index], "reason": message})
        return usable

    def _fallback_decoder(self, order: list[int]) -> FallbackDecoder:
        """The pipeline's decoder of its item ``i`` (input ``order[i]``) for what the C++ decoder
        leaves to PIL: the RGB array, or why the input is unusable."""
        ids = self.inputs.ids

        def decode(item: int, encoded: memoryview) -> np.ndarray | str:
            try:
                return decode_rgb_bytes(encoded, ids[order[item]])
            except (FeatxError, OSError, ValueError) as err:
                return str(err)

        return decode

    def _bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.inputs))

    def _open(self, shard: int | None) -> _ShardRows | None:
        return None if shard is None else _ShardRows(shard, *self._bounds(shard))

    def _write(self, shard: _ShardRows) -> None:
        embeddings = (
            np.concatenate(shard.embeddings)
            if shard.embeddings
            else np.empty((0, self.runner.embedding_dim), np.float32)
        )
        usable = shard.usable_inputs
        kept = self.inputs.kept_columns
        entry = self.writer.write(
            shard.index,
            shard.first_input,
            shard.stop_input - shard.first_input,
            [self.inputs.ids[i] for i in usable],
            embeddings,
            shard.errors,
            kept(usable) if kept is not None else None,
        )
        self.on_shard(entry)


def print_summary(summary: ExtractSummary, console: Console) -> None:
    resumed = (
        f", {summary.resumed_inputs} resumed from earlier runs" if summary.resumed_inputs else ""
    )
    console.print(
        f"[bold]done[/]: {summary.rows} of {summary.inputs} images extracted, "
        f"{summary.errors} errors (listed in {summary.out_dir / ERRORS}){resumed}; "
        f"{summary.processed} images in {summary.seconds:.1f}s = "
        f"{summary.images_per_second:.1f} img/s; output in {summary.out_dir}/"
    )
