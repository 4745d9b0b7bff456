"""The harness: prepare each case, check its parity with the reference, time it, make its row.

``run_bench`` is the Python face of ``featx bench``; ``Bench`` is the part the pytest-benchmark
suite in benchmarks/ shares, so both measure the very same cases the same way. Each kind of case
has its preparer (``Bench.prepare``); everything after preparation (timing, parity, table, JSON,
plot, regression gate) is shared.
"""

from __future__ import annotations

import copy
import functools
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from featx.bench.backends import INT8_CPU_ONLY, ModelAssets, Prepared, Unavailable, prepared
from featx.bench.cases import REFERENCE, Case
from featx.bench.compare import GateResult, load_result, matching_cases, regression_gate
from featx.bench.corpus import make_corpus
from featx.bench.eager import eager_extract, pil_preprocess_pass
from featx.bench.environment import environment
from featx.bench.extraction import (
    cpp_preprocess_pass,
    featx_extract_job,
    half_png_copy,
    parquet_table,
    webdataset_shard,
)
from featx.bench.report import (
    make_row,
    print_table,
    wide_console,
    with_speedups,
    write_json,
    write_plot,
)
from featx.bench.settings import BenchSettings
from featx.bench.timing import measure
from featx.models import get_extractor
from featx.parity import ParityGate, compare
from featx.quantization import Int8Gate, Int8GateError, Int8Report
from featx.runtime.errors import FeatxError
from featx.runtime.shards import read_features

RESULT_FORMAT = 1
BF16_MIN_COSINE = 0.995
"""bf16 keeps 8 mantissa bits to fp16's 11, so its rounding error is ~8x fp16's: fp16's cosine
gate (0.999) would fail correct bf16 models."""
INT8_BACKENDS = ("int8", "featx-int8")
"""Rows of int8 models: their features must pass the int8 gate's min cosine, not fp32's."""
E2E_WORKERS = 2
"""DataLoader worker processes of the eager pipeline (one per core on the 2-core build machine)."""


def gate_for(case: Case) -> ParityGate:
    """The fidelity gate a case's features must pass against its reference's."""
    if case.dtype == "bfloat16":
        return ParityGate(BF16_MIN_COSINE, None)
    if case.backend in INT8_BACKENDS:
        return ParityGate(Int8Gate().min_cosine, None)
    return ParityGate.default(fp16=case.dtype == "float16")


class Bench:
    """Prepares and measures cases; models, exports, the JPEG corpus and reference features
    are made once and shared by every case that needs them."""

    def __init__(self, settings: BenchSettings, work_dir: Path):
        self.settings = settings
        self.work_dir = work_dir
        self._assets: dict[str, ModelAssets] = {}
        self._reference_features: dict[str, np.ndarray | None] = {}

    def assets(self, arch: str) -> ModelAssets:
        if arch not in self._assets:
            self._assets[arch] = ModelAssets(arch, self.work_dir)
        return self._assets[arch]

    @functools.cached_property
    def corpus(self) -> list[Path]:
        count = max(self.settings.e2e_images, self.settings.preprocess_images)
        return make_corpus(self.work_dir / "corpus", count=count)

    def prepare(self, case: Case) -> Prepared:
        """Builds ``case`` and runs it once untimed; raises Unavailable with the reason."""
        preparers: dict[str, Callable[[Case], Prepared]] = {
            "model": self._prepare_model,
            "extract-e2e": self._prepare_e2e,
            "preprocess": self._prepare_preprocess,
            "conv": self._prepare_conv,
            "attention": self._prepare_attention,
        }
        work = preparers[case.kind](case)
        if case.backend == REFERENCE[case.kind]:
            self._reference_features[case.id] = work.features
        return work

    def parity(self, case: Case, work: Prepared) -> dict | None:
        """Parity figures of ``case`` against its reference, with the gate and the verdict;
        None for a reference itself, or when the reference could not run here."""
        if case.backend == REFERENCE[case.kind] or work.features is None:
            return None
        if case.kind == "model" and case.backend == "int8":
            return _int8_parity(self.assets(case.model).int8_export.int8)
        reference = self.reference_features(case.reference())
        if reference is None:
            return None
        gate = gate_for(case)
        figures = compare(reference, work.features)
        failures = gate.failures(case.backend, figures)
        return {
            **asdict(figures),
            "gate": asdict(gate),
            "passed": not failures,
            "failures": failures,
        }

    def reference_features(self, reference: Case) -> np.ndarray | None:
        if reference.id not in self._reference_features:
            try:
                features = self.prepare(reference).features
            except Unavailable:
                features = None
            self._reference_features[reference.id] = features
        return self._reference_features[reference.id]

    def measure(self, case: Case) -> dict:
        """One result row for ``case``: unavailable, failing parity (not timed), or timed."""
        try:
            work = self.prepare(case)
        except Unavailable as err:
            return make_row(case, status="unavailable", reason=str(err))
        except Int8GateError as err:
            report = err.report
            return make_row(
                case,
                status="failing-parity",
                reason="int8 gate: " + "; ".join(report.gate.failures(report.figures)),
                parity=_int8_parity(report),
            )
        parity = self.parity(case, work)
        if parity is not None and not parity["passed"]:
            return make_row(
                case,
                status="failing-parity",
                reason="; ".join(parity["failures"]),
                parity=parity,
                work=work,
            )
        warmup, repeats = self.runs(case)
        timing = measure(work.run, warmup=warmup, repeats=repeats, cuda=work.cuda_events)
        return make_row(case, status="ok", parity=parity, work=work, timing=timing)

    def runs(self, case: Case) -> tuple[int, int]:
        """(warm-up, repeats). The untimed run of ``prepare`` already warmed the extraction
        cases: one pass over the files or one whole job."""
        if case.kind == "extract-e2e":
            return 0, self.settings.e2e_repeats
        if case.kind == "preprocess":
            return 0, self.settings.repeats
        return self.settings.warmup, self.settings.repeats

    def _prepare_model(self, case: Case) -> Prepared:
        return prepared(case.backend, self.assets(case.model), case.batch_size, case.device)

    def _prepare_conv(self, case: Case) -> Prepared:
        from featx.bench.kernels import prepare_conv

        return prepare_conv(case.backend, case.model, case.batch_size, case.device)

    def _prepare_attention(self, case: Case) -> Prepared:
        from featx.bench.kernels import prepare_attention

        return prepare_attention(case.backend, case.batch_size, case.device)

    def _prepare_e2e(self, case: Case) -> Prepared:
        assets = self.assets(case.model)
        paths = self.corpus[: self.settings.e2e_images]
        started = time.perf_counter()
        if case.backend == "eager":
            out_file = self.work_dir / f"eager-{case.model}.npy"
            # A copy: eager_extract moves the model to the device in place.
            model = copy.deepcopy(assets.feature_model)

            def run() -> None:
                eager_extract(
                    model,
                    paths,
                    assets.preprocess,
                    out_file,
                    case.batch_size,
                    workers=E2E_WORKERS,
                    device=case.device,
                    warmup=False,  # the untimed first run of prepare() warmed the model
                )

            def saved_features() -> np.ndarray:
                return np.load(out_file)

            note = f"DataLoader, {E2E_WORKERS} PIL workers, np.save"
        else:
            out_dir = self.work_dir / f"{case.backend}-{case.model}"
            inputs: Path | list[Path] = paths
            note = "featx extract: C++ decode threads + runner, npy shards"
            if case.backend == "featx-tar":
                tar_name = f"corpus-{len(paths)}.tar"
                inputs = webdataset_shard(paths, self.work_dir / "webdataset" / tar_name)
                note = "featx extract of one WebDataset tar: members read by byte range"
            elif case.backend == "featx-parquet":
                parquet_name = f"corpus-{len(paths)}.parquet"
                inputs = parquet_table(paths, self.work_dir / "parquet" / parquet_name)
                note = "featx extract of one parquet file: record batches handed to C++ as is"
            elif case.backend == "featx-half-png":
                inputs = half_png_copy(paths, self.work_dir / "half-png")
                note = "featx extract, every second image a PNG (PIL in the decode workers)"
            elif case.backend == "featx-int8":
                if case.device != "cpu":
                    raise Unavailable(INT8_CPU_ONLY)
                note = "featx extract of the featx-export --int8 file"
            model_file = (
                assets.int8_export.path if case.backend == "featx-int8" else assets.onnx_path
            )
            run = featx_extract_job(
                model_file, inputs, out_dir, case.batch_size, device=case.device
            )

            def saved_features() -> np.ndarray:
                return read_features(out_dir)[1]

        try:
            run()
        except FeatxError as err:
            if case.device != "cuda":
                raise
            # On CUDA the failure is the machine's (no CUDA provider in this onnxruntime).
            raise Unavailable(str(err)) from err
        # Read back once, for parity: the timed runs end at the saved files, as users' jobs do.
        features = saved_features()
        note = f"{len(paths)} images per run; {note}"
        return Prepared(run, len(paths), False, features, time.perf_counter() - started, note)

    def _prepare_preprocess(self, case: Case) -> Prepared:
        preprocess = get_extractor(case.model).preprocess
        paths = self.corpus[: self.settings.preprocess_images]
        make_pass = pil_preprocess_pass if case.backend == "pil" else cpp_preprocess_pass
        started = time.perf_counter()
        run = make_pass(paths, preprocess)
        features = np.stack(run())
        note = (
            f"{len(paths)} JPEGs per run, one thread; resize {preprocess.resize_size} "
            f"crop {preprocess.crop_size} {preprocess.interpolation}"
        )
        return Prepared(
            run,
            len(paths),
            False,
            features.reshape(len(paths), -1),
            time.perf_counter() - started,
            note,
        )


def _int8_parity(report: Int8Report) -> dict:
    """An int8 model row's parity: its export gate's figures on held-out photos, and how many of
    its multiply-add ops the fallback kept fp32 to pass it."""
    failures = report.gate.failures(report.figures)
    return {
        **asdict(report.figures),
        "fp32_ops": len(report.fp32_nodes),
        "quantizable_ops": report.quantizable_nodes,
        "max_rel": None,
        "gate": asdict(report.gate),
        "passed": not failures,
        "failures": failures,
    }


@dataclass(frozen=True)
class BenchResult:
    document: dict
    gate: GateResult | None

    @property
    def passed(self) -> bool:
        return self.gate is None or self.gate.passed


def run_bench(
    settings: BenchSettings,
    *,
    output: str | Path | None = None,
    plot: str | Path | None = None,
    compare_to: str | Path | None = None,
    threshold: float = 0.10,
    remeasure_attempts: int = 2,
    console: Console | None = None,
) -> BenchResult:
    """Measures every case of ``settings``, prints the table, writes the JSON and the plot, and,
    with ``compare_to``, runs the regression gate against that earlier result (a case that looks
    regressed is measured again up to ``remeasure_attempts`` times before it counts)."""
    console = console or Console()
    settings.check()
    for path, suffix in ((output, ".json"), (plot, ".png")):
        if path is not None and Path(path).suffix != suffix:
            raise FeatxError(f"{path}: expected a {suffix} file name")
        if path is not None and not Path(path).parent.is_dir():
            raise FeatxError(f"{path}: folder {Path(path).parent} does not exist")
    if not 0 < threshold < 1:
        raise FeatxError(f"--threshold {threshold}: give a fraction between 0 and 1, e.g. 0.10")
    env = environment()
    cases = settings.cases()
    old = None
    if compare_to is not None:
        old = load_result(compare_to)
        matching_cases(old, env, [case.id for case in cases])

    with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp:
        bench = Bench(settings, Path(tmp))
        rows = with_speedups(_measure_all(bench, cases, console))
        document = {
            "featx_bench": RESULT_FORMAT,
            "environment": env,
            "settings": settings.to_dict(),
            "rows": rows,
        }
        gate = None
        if old is not None:
            by_id = {case.id: case for case in cases}
            gate = regression_gate(
                old,
                document,
                threshold,
                remeasure=lambda case_id: bench.measure(by_id[case_id]),
                attempts=remeasure_attempts,
            )
            document["gate"] = gate.to_dict()

    print_table(document, console)
    if gate is not None:
        gate.print(wide_console(console))
    if output is not None:
        write_json(document, Path(output))
        console.print(f"wrote {output}")
    if plot is not None:
        write_plot(document, Path(plot))
        console.print(f"wrote {plot}")
    return BenchResult(document, gate)


def _measure_all(bench: Bench, cases: Sequence[Case], console: Console) -> list[dict]:
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=len(cases))
        for case in cases:
            progress.update(task, description=case.id)
            rows.append(bench.measure(case))
            progress.advance(task)
    return rows
