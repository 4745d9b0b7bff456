"""featx-export --int8's recipes on a CPU without VNNI, measured under emulation: the same int8
files run by ONNX Runtime on this machine and on an emulated AMD EPYC Rome (AVX2 + FMA, no
AVX-512, no VNNI), their embeddings of the held-out photos compared with the fp32 model's.

    python benchmarks/int8_no_vnni.py --output benchmarks/results/int8-no-vnni-emulated.json

Needs qemu-user (Debian: apt-get install qemu-user). `qemu-x86_64 -cpu EPYC-Rome` runs this
machine's own Python and ONNX Runtime with that CPU's CPUID, so ONNX Runtime's kernel dispatch
picks the AVX2 u8 x s8 kernels (vpmaddubsw, whose 16-bit sums saturate) as it would on such a
machine, and QEMU computes those instructions bit-exactly. A first row proves it: a MatMulInteger
of 255 x 127 sums that is exact natively and saturates under emulation. Emulated speed means
nothing and is not reported; the recipes' int8/fp32 speeds on AVX2 are the issue's measurement.

Recipes: u8 activations with s8 per-channel weights at full range (the VNNI default), the same
with 7-bit weights (reduce_range: the no-VNNI default), and u8 weights (ONNX Runtime's U8U8
kernels, which do not saturate). Models: ResNet-50 and ViT-B/16 (random init, random BatchNorm
statistics, as in benchmarks/int8_report.py) and small_cnn trained on digits (as `featx demo`
trains it), gated on photos and digits respectively, on HELD_OUT images each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

EMULATED_CPU = "EPYC-Rome"
RECIPES = {
    "s8 weights, full range": {"reduce_range": False},
    "s8 weights, 7-bit (reduce_range)": {"reduce_range": True},
    "u8 weights": {"reduce_range": False, "weights": "uint8"},
}
SATURATION_DEPTH = 64
HELD_OUT = {"small_cnn": 256, "resnet50": 64, "vit_b_16": 8}
"""Held-out images per model, both runs: emulation is slow (ResNet-50 int8 2.9 s an image,
ViT-B/16 62 s: its fp32 attention, softmax and GELU run emulated too). On 8 images recall@10 is
over 7 neighbours and says little; the cosines still show what saturation does."""


def saturation_probe() -> int:
    """The first output of MatMulInteger(255s, 127s) over SATURATION_DEPTH terms: exact
    (2,072,640) where products are summed in 32 bits, 1,048,544 where pairs saturate at 16."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((SATURATION_DEPTH, 4), 127, np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "saturation",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, SATURATION_DEPTH])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    activations = np.full((1, SATURATION_DEPTH), 255, np.uint8)
    return int(session.run(None, {"a": activations})[0][0, 0])


def embed_folder(folder: Path) -> dict:
    """Embeds ``folder``'s held-out images with each of its int8 files (``*.onnx``), writing
    ``NAME.npy`` beside each; returns the saturation probe's value. Runs emulated or native."""
    from featx.quantization import embed_file

    for model in sorted(folder.glob("*/*.onnx")):
        images = np.load(model.parent / "held_out.npy")
        np.save(model.with_suffix(".npy"), embed_file(model, images))
    return {"saturation_probe": saturation_probe()}


def run_embedding(folder: Path, name: str, emulator: list[str]) -> tuple[Path, dict]:
    """A copy of ``folder``/models embedded by a child process, under ``emulator`` (a command
    prefix; empty: natively)."""
    outputs = folder / name
    shutil.copytree(folder / "models", outputs)
    command = [*emulator, sys.executable, __file__, "--embed", str(outputs)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"the {name} run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return outputs, json.loads(done.stdout.strip().splitlines()[-1])


def prepare_models(folder: Path, archs: list[str], console: Console) -> list[dict]:
    """fp32 exports, their held-out tensors and fp32 embeddings, and one int8 file per recipe
    (quantized here, calibrated once per model), under ``folder``/models/ARCH/."""
    import onnx

    import featx
    from featx.bench.corpus import make_corpus
    from featx.data.digits import write_digits
    from featx.quantization import Int8Quantizer, embed, recipe_for, split_images
    from featx.runtime.inputs import read_inputs
    from featx.runtime.ort_config import cpu_session
    from featx.testing.models import random_batchnorm_checkpoint
    from featx.training import train

    photos, digits = folder / "photos", folder / "digits"
    make_corpus(photos, count=384)
    write_digits(digits)
    models = []
    for arch in archs:
        if arch == "small_cnn":
            trained = train(digits, "small_cnn", folder / "small_cnn.pt", epochs=4, augment="light")
            checkpoint, images = trained.checkpoint, digits
        else:
            checkpoint = random_batchnorm_checkpoint(arch, folder / f"{arch}.pt")
            images = photos
        work, quantizing = folder / "models" / arch, folder / "quantizing" / arch
        work.mkdir(parents=True)
        quantizing.mkdir(parents=True)
        fp32 = featx.export(checkpoint, folder / f"{arch}-fp32.onnx")
        proto = onnx.load(str(fp32.path))
        calibration, held_out, _ = split_images(
            read_inputs(images), None, fp32.metadata.preprocess, 128, 256, 0
        )
        held_out = held_out[: HELD_OUT.get(arch, len(held_out))]
        np.save(work / "held_out.npy", held_out)
        reference = embed(cpu_session(proto.SerializeToString(), "float32"), held_out)
        np.save(folder / f"{arch}-fp32.npy", reference)
        for index, (name, change) in enumerate(RECIPES.items()):
            # One folder: the activation ranges, calibrated by the first recipe, are reused.
            recipe = dataclasses.replace(recipe_for("x86-vnni"), **change)
            quantized = Int8Quantizer(proto, recipe, calibration, quantizing).quantize([])
            shutil.copy(quantized, work / f"{index}.onnx")
            models.append({"arch": arch, "recipe": name, "file": f"{arch}/{index}.npy"})
        console.print(f"{arch}: {len(RECIPES)} int8 files")
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="JSON file to write")
    parser.add_argument("--arch", nargs="*", default=["small_cnn", "resnet50", "vit_b_16"])
    parser.add_argument("--embed", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embed is not None:
        print(json.dumps(embed_folder(args.embed)))
        return

    from featx.bench.report import show_and_write_rows
    from featx.quantization import embedding_fidelity
    from featx.runtime.instruction_set import cpu_instruction_set

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("needs qemu-x86_64 (Debian: apt-get install qemu-user)")
    console = Console(width=200)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = prepare_models(folder, args.arch, console)
        runs = {
            f"{cpu_instruction_set()} (this machine)": [],
            f"x86-avx2 (emulated {EMULATED_CPU})": [qemu, "-cpu", EMULATED_CPU],
        }
        for kernels, emulator in runs.items():
            with console.status(f"embedding on {kernels}"):
                outputs, probe = run_embedding(folder, kernels.split()[0], emulator)
            rows.append({"arch": "MatMulInteger 255 x 127 probe", "kernels": kernels, **probe})
            for model in models:
                reference = np.load(folder / f"{model['arch']}-fp32.npy")
                figures = embedding_fidelity(reference, np.load(outputs / model["file"]))
                rows.append(
                    {
                        "arch": model["arch"],
                        "recipe": model["recipe"],
                        "kernels": kernels,
                        "min_cosine": round(figures.min_cosine, 6),
                        "mean_cosine": round(figures.mean_cosine, 6),
                        "recall_at_10": round(figures.recall_at_10, 4),
                    }
                )
                console.print(rows[-1])
    show_and_write_rows(console, "int8 recipes with and without VNNI", rows, args.output)


if __name__ == "__main__":
    main()
