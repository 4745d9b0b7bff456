"""featx extract: a folder of images in, sharded embeddings out, nothing lost.

inputs -> C++ pipeline (decode, resize, crop, normalise in worker threads) -> model backend ->
shards written atomically -> manifest. See featx.runtime.shards for the output layout and
featx.runtime.inputs for the input order.

Model backends: ``onnx`` (the default) is featx.Runner, the C++ ONNX Runtime session over an
exported .onnx file. Any other backend is a plug-in found under the ``featx.backends`` entry
points: a callable ``factory(model_path, *, device, threads, fuse, arch) -> ModelBackend``
(featx.runtime.shard_extraction). featx registers ``torch`` there (featx.torch_runner.TorchRunner:
a checkpoint's feature model in PyTorch, optionally featx.fuse'd), so this module never imports
the PyTorch side.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from featx._version import __version__
from featx.runtime.distributed import RayOptions, ShardJob, import_ray, run_on_ray
from featx.runtime.errors import FeatxError, OutputWriteError, missing_extra
from featx.runtime.files import file_sha256, make_folder
from featx.runtime.inputs import IMAGE_EXTENSIONS, read_inputs
from featx.runtime.lock import OutputLock
from featx.runtime.metadata import read_metadata
from featx.runtime.parquet import ParquetColumns
from featx.runtime.runner import Runner, checked_model_path
from featx.runtime.shard_extraction import ModelBackend, ShardExtraction
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
    ray: str | None = None,
    ray_actors: int | None = None,
    ray_cpus_per_actor: float = 1.0,
    ray_gpus_per_actor: float = 0.0,
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
    parquet). With ``ray`` (a cluster address, "auto", or "local" to start one here) the shards
    run on ``ray_actors`` Ray actors (featx.runtime.distributed), each with
    ``ray_cpus_per_actor`` CPUs and ``ray_gpus_per_actor`` GPUs; ``workers`` and ``threads``
    then count per actor (default: its CPUs).
    """
    started = time.perf_counter()
    console = console or Console(stderr=True)
    if batch_size < 1 or shard_size < 1:
        raise FeatxError(f"batch size ({batch_size}) and shard size ({shard_size}) must be >= 1")
    ray_options = (
        None if ray is None else RayOptions(ray, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor)
    )
    if ray_options is not None:
        ray_options.check()
        import_ray()  # a missing extra is reported before anything is written
        if backend != ONNX_BACKEND:
            raise FeatxError("--ray runs exported .onnx models (the onnx backend) on its workers")
        per_actor = max(1, int(ray_cpus_per_actor))
        workers = workers if workers is not None else per_actor
        threads = threads or per_actor
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

    if ray_options is None:
        runner: ModelBackend | None = _open_backend(model, backend, device, threads, fuse, arch)
        model_arch, embedding_dim = runner.arch, runner.embedding_dim
    else:
        # A --ray driver only reads what the model is (no session): its actors run it.
        metadata = read_metadata(checked_model_path(model, device))
        runner, model_arch, embedding_dim = None, metadata.arch, metadata.embedding_dim
    writer = ShardWriter(out, fmt, dtype)
    job = Manifest(
        model={
            "path": str(model),
            "sha256": file_sha256(Path(model)),
            "arch": model_arch,
            "embedding_dim": embedding_dim,
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
                if runner is not None:
                    extraction = ShardExtraction(runner, writer, listed, shard_size, pending)
                    shards = extraction.run(batch_size, workers, advance, console)
                    for entry in shards:
                        try:
                            record(entry)
                        except KeyboardInterrupt as err:
                            # Ctrl-C while a shard is recorded: the extraction stops its
                            # workers (and says what it waits on) as for one during a batch.
                            shards.throw(err)
                else:
                    shard_job = ShardJob(
                        os.getcwd(),
                        str(model),
                        str(out),
                        fmt,
                        dtype,
                        shard_size,
                        batch_size,
                        workers,
                        threads,
                        device,
                    )
                    run_on_ray(ray_options, shard_job, listed, pending, record, advance, console)
                    # An actor killed while writing a shard leaves its temporary file; every
                    # actor has stopped now, and the lock keeps other writers out.
                    remove_stale_temporaries(out)
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
