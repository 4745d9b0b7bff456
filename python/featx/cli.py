"""Command line: `featx <command>` and `featx-export`.

Every user error prints one paragraph saying what was wrong and what to do, and exits 2
(1 for a failed parity gate); nothing is written in either case.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from featx.runtime.errors import FeatxError, missing_extra
from featx.runtime.instruction_set import INSTRUCTION_SETS

if TYPE_CHECKING:
    from featx.quantization import Int8Report

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from featx.options import DEFAULT_OPSET, EXPORTERS
    from featx.runtime.metadata import POOLINGS

    parser.add_argument("model", help="model file: featx checkpoint, state_dict (.pt), .pt2")
    parser.add_argument("-o", "--output", help="output .onnx path (default: MODEL with .onnx)")
    parser.add_argument("--arch", help="architecture of a plain state_dict (`featx models`)")
    parser.add_argument("--layer", help="feature layer: a node or module name (`featx layers`)")
    parser.add_argument("--pool", choices=POOLINGS, help="pooling of the feature layer")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise embeddings")
    parser.add_argument("--fp16", action="store_true", help="half-precision model file")
    parser.add_argument("--fp16-io", action="store_true", help="with --fp16: half inputs/outputs")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 18)")
    parser.add_argument("--input-size", type=int, help="square input size (default: the arch's)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo", help="torch.onnx path")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow whole pickled nn.Modules and .pt2 programs (runs code from the file)",
    )
    parser.add_argument("--min-cosine", type=float, help="parity gate: minimum cosine")
    parser.add_argument("--max-rel", type=float, help="parity gate: max-abs / feature scale")
    parser.add_argument("--int8", action="store_true", help="static int8 model (needs --calibrate)")
    parser.add_argument(
        "--calibrate", metavar="IMAGES", help="--int8: images to calibrate and check it on"
    )
    parser.add_argument(
        "--holdout", metavar="IMAGES", help="--int8: gate images (default: more of --calibrate)"
    )
    parser.add_argument("--calibration-size", type=int, default=128, help="--int8: images")
    parser.add_argument(
        "--holdout-size", type=int, default=256, help="--int8: held-out images for its gate"
    )
    parser.add_argument(
        "--int8-mean-cosine", type=float, default=0.999, help="--int8 gate: mean cosine to fp32"
    )
    parser.add_argument(
        "--int8-min-cosine", type=float, default=0.99, help="--int8 gate: min cosine to fp32"
    )
    parser.add_argument(
        "--int8-recall", type=float, default=0.95, help="--int8 gate: recall@10 of fp32 k-NN"
    )
    parser.add_argument(
        "--int8-max-fp32",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="--int8: share of the multiply-add ops that may stay fp32 to pass the gate (0: none)",
    )
    parser.add_argument(
        "--int8-target",
        choices=INSTRUCTION_SETS,
        help="--int8: the CPUs the file is for (default: this machine's; x86-avx2 runs anywhere)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    from featx.runtime.extract import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, ONNX_BACKEND
    from featx.runtime.inputs import IMAGE_EXTENSIONS
    from featx.runtime.shards import FORMATS

    parser.add_argument("model", help="an .onnx file (--backend torch: a featx checkpoint)")
    parser.add_argument(
        "input",
        help="a folder (recursive), a quoted glob, or a list file of images; or WebDataset "
        "shards: a .tar, a folder of them, a quoted 'data/{00000..00099}.tar', a list file",
    )
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="inputs/shard")
    parser.add_argument("--workers", type=int, help="decode threads (default: one per core)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: per core)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--format", choices=FORMATS, default="npy")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue the job in OUTPUT (default when OUTPUT holds the same job)",
    )
    resume.add_argument(
        "--no-resume", dest="resume", action="store_false", help="refuse to reuse output"
    )
    parser.add_argument("--overwrite", action="store_true", help="discard output already there")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--backend",
        default=ONNX_BACKEND,
        help="model runtime: onnx, or a plug-in backend (torch: a checkpoint run in PyTorch)",
    )
    parser.add_argument("--fuse", action="store_true", help="--backend torch: featx.fuse kernels")
    parser.add_argument("--arch", help="--backend torch: architecture of a plain state_dict")
    parser.add_argument(
        "--image-ext",
        default=",".join(IMAGE_EXTENSIONS),
        help="tar shards: a sample's image is its member with the first of these extensions",
    )
    parser.add_argument(
        "--image-column",
        help="parquet: the column of encoded images (binary, or a struct with 'bytes'); "
        "default: the only such column",
    )
    parser.add_argument(
        "--id-column", help="parquet: the column of row ids (default: FILE/ROW-INDEX)"
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the shards on Ray actors: a cluster's address (or 'auto'); without one, a "
        "local Ray instance. OUTPUT must be a folder every node sees",
    )
    parser.add_argument("--ray-actors", type=int, help="--ray: actors (default: as many as fit)")
    parser.add_argument(
        "--ray-cpus-per-actor", type=float, default=1.0, help="--ray: CPUs reserved per actor"
    )
    parser.add_argument(
        "--ray-gpus-per-actor", type=float, default=0.0, help="--ray: GPUs reserved per actor"
    )
    parser.add_argument(
        "--keep-columns",
        default="",
        help="parquet: columns copied into the output rows, comma-separated (--format parquet)",
    )


def _cmd_export(args: argparse.Namespace) -> int:
    from featx.exporter import export
    from featx.quantization import Int8Gate

    with stderr.status("exporting") as status:
        result = export(
            args.model,
            args.output,
            arch=args.arch,
            layer=args.layer,
            pool=args.pool,
            normalize=args.normalize,
            fp16=args.fp16,
            fp16_io=args.fp16_io,
            opset=args.opset,
            input_size=args.input_size,
            exporter=args.exporter,
            trust_pickle=args.trust_pickle,
            min_cosine=args.min_cosine,
            max_rel=args.max_rel,
            int8=args.int8,
            calibrate=args.calibrate,
            holdout=args.holdout,
            calibration_size=args.calibration_size,
            holdout_size=args.holdout_size,
            int8_gate=Int8Gate(args.int8_mean_cosine, args.int8_min_cosine, args.int8_recall),
            int8_max_fp32=args.int8_max_fp32,
            int8_target=args.int8_target,
            on_stage=lambda text: status.update(text),
        )
    summary = {
        "output": str(result.path),
        "arch": result.metadata.arch,
        "layer": result.metadata.layer,
        "layer_reason": result.metadata.layer_reason,
        "pooling": result.metadata.pooling,
        "embedding_dim": result.metadata.embedding_dim,
        "dtype": result.metadata.dtype,
        "bn_folded": len(result.fold.folded),
        "dropouts_removed": result.fold.dropouts_removed,
        "reparameterized": len(result.fold.reparameterized),
        "fold_skipped": result.fold.skipped,
        "file_bytes": result.file_bytes,
        "convert_seconds": round(result.convert_seconds, 3),
        "total_seconds": round(result.total_seconds, 3),
        "parity": result.parity.to_dict(),
        **({"int8": result.int8.to_dict()} if result.int8 is not None else {}),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title="parity: ONNX Runtime (CPU) vs eager PyTorch fp32", title_justify="left")
    for column in ("inputs", "rows", "max-abs", "max-abs/scale", "min cosine"):
        table.add_column(column, justify="right")
    for name, fig in result.parity.figures.items():
        table.add_row(
            name,
            str(fig.rows),
            f"{fig.max_abs:.3e}",
            f"{fig.max_rel:.3e}",
            f"{fig.min_cosine:.8f}",
        )
    stdout.print(table)
    gate = result.parity.gate
    rel = f", max-abs/scale <= {gate.max_rel:.0e}" if gate.max_rel is not None else ""
    stdout.print(f"gate: cosine >= {gate.min_cosine}{rel}: passed")
    if result.fold.reparameterized:
        stdout.print(
            f"re-parameterised {len(result.fold.reparameterized)} blocks into their "
            "single-branch inference form"
        )
    for reason in result.fold.skipped:
        stdout.print(f"[yellow]not folded[/]: {reason}")
    if result.int8 is not None:
        _print_int8(result.int8)
    stdout.print(
        f"embedding: {result.metadata.layer} ({result.metadata.layer_reason})", markup=False
    )
    stdout.print(
        f"wrote {result.path} ({result.file_bytes / 2**20:.1f} MiB): {result.metadata.arch} "
        f"layer {result.metadata.layer} pool {result.metadata.pooling} -> "
        f"{result.metadata.embedding_dim}-d {result.metadata.dtype}; "
        f"{len(result.fold.folded)} BatchNorm folded; "
        f"converted in {result.convert_seconds:.1f}s, {result.total_seconds:.1f}s in all"
    )
    return 0


def _print_int8(report: Int8Report) -> None:
    fig, gate = report.figures, report.gate
    stdout.print(
        f"int8 vs fp32 on {fig.rows} held-out images: min cosine {fig.min_cosine:.6f}, mean "
        f"{fig.mean_cosine:.6f}, recall@10 {fig.recall_at_10:.4f} (gate: mean >= "
        f"{gate.mean_cosine}, min >= {gate.min_cosine}, recall@10 >= {gate.recall_at_10}): passed; "
        f"calibrated on {report.calibration['images']} images; recipe {report.recipe.describe()}; "
        f"{report.describe_fallback()}"
    )
    for each in report.tries[:-1]:
        stdout.print(
            f"  tried {each.fp32_nodes} of {report.quantizable_nodes} multiply-add ops fp32: "
            f"min cosine {each.figures.min_cosine:.6f}, mean {each.figures.mean_cosine:.6f}, "
            f"recall@10 {each.figures.recall_at_10:.4f}: outside the gate"
        )
    speed = (
        f"model-only on this machine: int8 {report.int8_images_per_second:.1f} img/s, fp32 "
        f"{report.fp32_images_per_second:.1f} img/s ({report.speedup:.2f}x)"
    )
    if report.speedup < 1:
        stdout.print(
            f"[bold yellow]int8 is not faster than fp32 here[/]: {speed}; the fp32 export is the "
            "faster file on this machine."
        )
    else:
        stdout.print(speed)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from featx.runtime.metadata import read_metadata

    metadata = read_metadata(args.model)
    props = metadata.to_props()
    if args.json:
        print(
            json.dumps(
                {
                    key: json.loads(value) if value.startswith(("[", "{")) else value
                    for key, value in props.items()
                },
                indent=2,
            )
        )
        return 0
    table = Table(title=str(args.model), title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in props.items():
        table.add_row(key, value)
    stdout.print(table)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from featx.models import get_extractor, list_extractors

    rows = []
    for name in list_extractors():
        ex = get_extractor(name)
        rows.append(
            {
                "name": name,
                "layer": ex.layer,
                "pool": ex.pool,
                "dim": ex.feature_info.dim if ex.feature_info else None,
                "stride": ex.feature_info.stride if ex.feature_info else None,
                "input": ex.preprocess.crop_size,
                "description": ex.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title="curated extractors (any torchvision classifier name works too)")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    stdout.print(table)
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    from featx.features import CLASSIFIER_INPUT, OUTPUT, PRE_LOGITS, default_layer, layer_names
    from featx.models import get_extractor
    from featx.models.checkpoint import load_model

    if Path(args.model).exists():
        loaded = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle)
        module, extractor = loaded.module, loaded.extractor
    else:
        extractor = get_extractor(args.model)
        module = extractor.build_model()
    default = default_layer(module, extractor.layer, extractor.embedding)
    head = default.removeprefix(CLASSIFIER_INPUT)
    marks = (
        {head: "<- the classifier: the default embedding is its input"}
        if head != default
        else {default: "<- the default embedding"}
    )
    for name in layer_names(module):
        print(f"{name}  {marks[name]}" if name in marks else name)
    why = {
        OUTPUT: "the model's own output, as its forward returns it",
        PRE_LOGITS: "timm's forward_head(pre_logits=True): the head without its classifier",
    }
    print(f"default embedding: {default}" + (f" ({why[default]})" if default in why else ""))
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    from featx._version import __version__
    from featx.runtime.native import native

    runner = native()
    print(f"featx {__version__}")
    print(
        f"onnxruntime {runner.onnxruntime_version()} (native runner, "
        f"{', '.join(runner.onnxruntime_providers())}) from {runner.onnxruntime_library_path()}"
    )
    # Read from the installed distributions, so a runtime-only install answers without torch.
    installed = [
        f"{name} {version}"
        for name in ("torch", "torchvision", "triton", "onnx", "onnxscript")
        if (version := _installed_version(name))
    ]
    print(f"PyTorch side: {', '.join(installed)}" if installed else _RUNTIME_ONLY)
    return 0


_RUNTIME_ONLY = "PyTorch side: not installed (runtime only; pip install 'featx[torch]' adds it)"


def _installed_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _cmd_extract(args: argparse.Namespace) -> int:
    from featx.runtime.extract import extract, print_summary

    summary = extract(
        args.model,
        args.input,
        args.output,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        workers=args.workers,
        threads=args.threads,
        device=args.device,
        fmt=args.format,
        dtype=args.dtype,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        console=stderr,
        backend=args.backend,
        fuse=args.fuse,
        arch=args.arch,
        image_extensions=[e.strip() for e in args.image_ext.split(",") if e.strip()],
        image_column=args.image_column,
        id_column=args.id_column,
        keep_columns=[c.strip() for c in args.keep_columns.split(",") if c.strip()],
        ray=args.ray,
        ray_actors=args.ray_actors,
        ray_cpus_per_actor=args.ray_cpus_per_actor,
        ray_gpus_per_actor=args.ray_gpus_per_actor,
    )
    print_summary(summary, stdout)
    return 0


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from featx.options import AUGMENTATIONS, METHODS, OPTIMIZERS, RECONSTRUCTION_LOSSES, STRATEGIES

    parser.add_argument(
        "--data",
        required=True,
        help="class-per-folder dir, CSV path,label, (multitask) CSV with a header "
        "path,TASK1,TASK2,..., or (simsiam, simclr, autoencoder, gan, distill) a folder of "
        "unlabeled images",
    )
    parser.add_argument("--arch", required=True, help="architecture (`featx models`)")
    parser.add_argument("-o", "--output", required=True, help="output featx checkpoint (.pt)")
    parser.add_argument("--method", choices=METHODS, default="supervised")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="full",
        help="linear: head only; partial: head + last --blocks blocks; full",
    )
    parser.add_argument(
        "--blocks", type=int, default=1, help="blocks trained by --strategy partial"
    )
    parser.add_argument("--init", help="starting weights: a local state_dict or featx checkpoint")
    parser.add_argument("--teacher", help="teacher featx checkpoint for --method distill")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, help="peak learning rate (adamw 1e-3, sgd 0.05)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    parser.add_argument("--weight-decay", type=float, help="default: adamw 0.05, sgd 5e-4")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--patience", type=int, default=5, help="early stopping (0: off)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", choices=AUGMENTATIONS, default="standard")
    parser.add_argument("--image-size", type=int, help="input size (default: the arch's)")
    parser.add_argument(
        "--temperature", type=float, help="distill: softmax T (4); simclr: NT-Xent T (0.5)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="distill: soft-target weight")
    parser.add_argument(
        "--feature-weight",
        type=float,
        default=0.0,
        help="distill: weight of the feature-matching loss (0: off)",
    )
    parser.add_argument(
        "--reconstruction",
        choices=RECONSTRUCTION_LOSSES,
        default="mse",
        help="autoencoder: reconstruction loss",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="autoencoder: std of the Gaussian noise added to inputs (denoising; 0: off)",
    )
    parser.add_argument(
        "--mask-ratio",
        type=float,
        default=0.0,
        help="autoencoder: fraction of 8x8-grid patches blanked, loss on them (0: off)",
    )
    parser.add_argument(
        "--tasks",
        type=_names,
        default=[],
        help="multitask: label columns of the --data CSV, comma-separated",
    )
    parser.add_argument(
        "--task-weights",
        type=_floats,
        help="multitask: loss weight per task, comma-separated (default 1 each)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA")
    parser.add_argument("--workers", type=int, help="data loader processes")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT.state")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(value) for value in _names(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def _cmd_train(args: argparse.Namespace) -> int:
    from featx.training import train
    from featx.training.job import print_result

    options = {k: v for k, v in vars(args).items() if k not in ("run", "command", "quiet", "json")}
    result = train(
        options.pop("data"),
        options.pop("arch"),
        options.pop("output"),
        progress=not args.quiet,
        console=stderr if args.json else stdout,
        **options,
    )
    if args.json:
        print(json.dumps(result.summary(), indent=2))
    else:
        print_result(result, stdout)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from featx.evaluation import evaluate, print_eval

    result = evaluate(
        args.features, args.labels, k=args.k, test_fraction=args.test_fraction, seed=args.seed
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_eval(result, stdout)
    return 0


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from featx.bench.cases import ALL_BACKENDS
    from featx.bench.settings import BenchSettings

    defaults = BenchSettings()
    parser.add_argument(
        "--model", default=",".join(defaults.models), help="arch name(s), comma-separated"
    )
    parser.add_argument(
        "--backends",
        default=",".join(defaults.backends),
        help=f"comma-separated, from: {', '.join(ALL_BACKENDS)}; one row of a kind as "
        "KIND:BACKEND, e.g. conv:featx (with the kind's reference) "
        "(default: all but the GPU kernel kinds conv and attention)",
    )
    parser.add_argument("--batch-sizes", default=",".join(map(str, defaults.batch_sizes)))
    parser.add_argument("--device", choices=("cpu", "cuda"), default=defaults.device)
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs per case")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed runs first")
    parser.add_argument("--e2e-images", type=int, default=defaults.e2e_images)
    parser.add_argument("--e2e-repeats", type=int, default=defaults.e2e_repeats)
    parser.add_argument("--preprocess-images", type=int, default=defaults.preprocess_images)
    parser.add_argument("--output", help="result JSON to write")
    parser.add_argument("--plot", help="bar chart PNG to write")
    parser.add_argument("--compare", help="earlier result JSON: exit 1 if any case regressed")
    parser.add_argument("--threshold", type=float, default=0.10, help="allowed slowdown fraction")


def _cmd_bench(args: argparse.Namespace) -> int:
    from featx.bench.run import run_bench
    from featx.bench.settings import BenchSettings

    try:
        batch_sizes = tuple(int(size) for size in args.batch_sizes.split(","))
    except ValueError as err:
        raise FeatxError(f"--batch-sizes {args.batch_sizes!r}: give integers, e.g. 1,32") from err
    settings = BenchSettings(
        models=tuple(args.model.split(",")),
        backends=tuple(args.backends.split(",")),
        batch_sizes=batch_sizes,
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        e2e_images=args.e2e_images,
        e2e_repeats=args.e2e_repeats,
        preprocess_images=args.preprocess_images,
    )
    result = run_bench(
        settings,
        output=args.output,
        plot=args.plot,
        compare_to=args.compare,
        threshold=args.threshold,
        console=stdout,
    )
    return 0 if result.passed else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from featx.demo import run_demo

    run_demo(args.output, epochs=args.epochs, console=stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featx", description="featx feature extraction engine")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser("export", help="checkpoint -> verified ONNX (= featx-export)")
    _add_export_arguments(export)
    export.set_defaults(run=_cmd_export)

    extract = commands.add_parser("extract", help="images -> sharded embeddings (C++ runner)")
    _add_extract_arguments(extract)
    extract.set_defaults(run=_cmd_extract)

    inspect = commands.add_parser("inspect", help="print an exported model's featx metadata")
    inspect.add_argument("model", help="an .onnx file written by featx-export")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(run=_cmd_inspect)

    models = commands.add_parser("models", help="list the curated extractors")
    models.add_argument("--json", action="store_true")
    models.set_defaults(run=_cmd_models)

    layers = commands.add_parser("layers", help="list valid --layer names of an arch or file")
    layers.add_argument("model", help="an arch name or a model file")
    layers.add_argument("--arch", help="architecture of a plain state_dict")
    layers.add_argument("--trust-pickle", action="store_true")
    layers.set_defaults(run=_cmd_layers)

    train = commands.add_parser("train", help="train / fine-tune / pretrain / distill a model")
    _add_train_arguments(train)
    train.set_defaults(run=_cmd_train)

    evaluate = commands.add_parser("eval", help="k-NN + linear-probe accuracy of features")
    evaluate.add_argument("features", help="an output folder of featx extract")
    evaluate.add_argument("--labels", required=True, help="CSV path,label, or 'folder'")
    evaluate.add_argument("--k", type=int, default=5, help="neighbours for k-NN")
    evaluate.add_argument("--test-fraction", type=float, default=0.2)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=_cmd_eval)

    bench = commands.add_parser("bench", help="benchmark backends side by side; regression gate")
    _add_bench_arguments(bench)
    bench.set_defaults(run=_cmd_bench)

    demo = commands.add_parser("demo", help="end-to-end run on real digits (CPU, ~1 min)")
    demo.add_argument("-o", "--output", default="featx-demo", help="output folder")
    demo.add_argument("--epochs", type=int, default=4)
    demo.set_defaults(run=_cmd_demo)

    version = commands.add_parser("version", help="versions of featx and its runtime")
    version.set_defaults(run=_cmd_version)
    return parser


def _run(
    handler: Callable[[argparse.Namespace], int], args: argparse.Namespace, command: str
) -> int:
    try:
        try:
            return handler(args)
        except ModuleNotFoundError as err:
            extra = missing_extra(err, command)
            if extra is None:
                raise
            raise extra from err
    except FeatxError as err:
        stderr.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        stderr.print("interrupted; nothing was written")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run(args.run, args, f"featx {args.command}")


def export_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="featx-export",
        description="Export a PyTorch checkpoint to a verified, self-describing ONNX file.",
    )
    _add_export_arguments(parser)
    return _run(_cmd_export, parser.parse_args(argv), "featx-export")


if __name__ == "__main__":
    sys.exit(main())
