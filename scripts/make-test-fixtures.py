"""Regenerates tests/runtime/fixtures/, the files the runtime tests run on without PyTorch:

- small_cnn.onnx, small_cnn-fp16.onnx: the seed CNN (trained-looking BatchNorm statistics)
  exported by featx-export in float32, and in float16 with float16 inputs/outputs;
- foreign.onnx: a valid ONNX file without featx metadata;
- photos/: JPEG crops of scikit-learn's sample photos at odd sizes and aspects, one with an EXIF
  rotation, and one PNG (the PIL fallback decoder's path);
- hostile-landscape.jpg, hostile-portrait.jpg: the photos featx.testing.images.write_hostile_set
  builds the hostile image set from;
- expected-small_cnn.npy + expected-ids.json: the float32 model's features of those photos from
  the eager PyTorch model through the PIL + torchvision reference path, in featx's input order.

Run it with the full install (it needs the PyTorch side), from the repository root:

    .venv/bin/python scripts/make-test-fixtures.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

import featx
from featx.data.photos import sample_photos
from featx.features import build_feature_model
from featx.models import get_extractor
from featx.models.checkpoint import save_checkpoint
from featx.preprocess import reference_transform
from featx.runtime.decode import open_rgb
from featx.runtime.inputs import list_inputs
from featx.testing.images import hostile_set_photos, jpeg_bytes, orientation_exif
from featx.testing.models import randomize_batchnorm

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "runtime" / "fixtures"
ARCH = "small_cnn"
CROPS = {
    # name: (photo index, crop box, output size)
    "temple-160x107.jpg": (0, (0, 0, 640, 427), (160, 107)),
    "temple-75x120.jpg": (0, (250, 40, 450, 360), (75, 120)),
    "flower-97x61.jpg": (1, (290, 160, 387, 221), (97, 61)),
    "flower-128x128.jpg": (1, (150, 40, 470, 360), (128, 128)),
    "flower-40x300.jpg": (1, (300, 0, 340, 300), (40, 300)),
}


def write_photos(folder: Path) -> None:
    folder.mkdir(parents=True)
    photos = sample_photos()
    for name, (index, box, size) in CROPS.items():
        (folder / name).write_bytes(jpeg_bytes(photos[index].crop(box).resize(size)))
    portrait = photos[0].crop((100, 60, 260, 300)).resize((80, 120))
    (folder / "temple-rotated-6.jpg").write_bytes(jpeg_bytes(portrait, exif=orientation_exif(6)))
    photos[1].crop((0, 100, 300, 300)).resize((150, 100)).save(folder / "flower-150x100.png")


def write_foreign_onnx(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def main() -> None:
    if FIXTURES.exists():
        shutil.rmtree(FIXTURES)
    FIXTURES.mkdir(parents=True)
    write_photos(FIXTURES / "photos")
    write_foreign_onnx(FIXTURES / "foreign.onnx")
    landscape, portrait = hostile_set_photos()
    (FIXTURES / "hostile-landscape.jpg").write_bytes(jpeg_bytes(landscape, quality=95))
    (FIXTURES / "hostile-portrait.jpg").write_bytes(jpeg_bytes(portrait, quality=95))

    torch.manual_seed(0)
    model = randomize_batchnorm(get_extractor(ARCH).build_model()).eval()
    with tempfile.TemporaryDirectory() as work:
        checkpoint = save_checkpoint(Path(work) / f"{ARCH}.pt", model, ARCH)
        fp32 = featx.export(checkpoint, FIXTURES / f"{ARCH}.onnx")
        featx.export(checkpoint, FIXTURES / f"{ARCH}-fp16.onnx", fp16=True, fp16_io=True)

    extractor = get_extractor(ARCH)
    preprocess = fp32.metadata.preprocess
    reference, _ = build_feature_model(
        model,
        layer=extractor.layer,
        pool=extractor.pool,
        normalize=False,
        input_size=preprocess.crop_size,
    )
    paths = list_inputs(FIXTURES / "photos")
    transform = reference_transform(preprocess)
    with torch.no_grad():
        expected = reference(torch.stack([transform(open_rgb(p)) for p in paths])).numpy()
    np.save(FIXTURES / f"expected-{ARCH}.npy", expected)
    ids = [Path(p).relative_to(FIXTURES / "photos").as_posix() for p in paths]
    (FIXTURES / "expected-ids.json").write_text(json.dumps(ids, indent=1) + "\n")
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print(f"wrote {FIXTURES} ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
