"""featx extract end to end: parity with the PIL path, hostile inputs, crash safety."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import featx
from featx.extract import extract
from featx.features import build_feature_model
from featx.inputs import list_inputs
from featx.models import get_extractor
from featx.models.checkpoint import save_checkpoint
from featx.parity import compare
from featx.preprocess import open_rgb, reference_transform
from featx.testing.images import write_hostile_set
from featx.testing.models import randomize_batchnorm


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """An exported resnet18 and its eager feature model (the reference)."""
    folder = tmp_path_factory.mktemp("resnet18")
    torch.manual_seed(0)
    model = randomize_batchnorm(get_extractor("resnet18").build_model())
    checkpoint = save_checkpoint(folder / "resnet18.pt", model, "resnet18")
    result = featx.export(checkpoint)
    reference, _ = build_feature_model(
        model, layer="layer4", pool="avg", normalize=False, input_size=224
    )
    return result.path, reference, result.metadata.preprocess


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photographs as JPEGs of varied sizes and orientations, plus a PNG."""
    from featx.data.photos import sample_photos

    folder = tmp_path_factory.mktemp("photos")
    sizes = [(500, 375), (375, 500), (333, 500), (640, 427), (97, 61), (224, 224)]
    for i, photo in enumerate(sample_photos()):
        for j, size in enumerate(sizes):
            photo.resize(size).save(folder / f"p{i}-{j}.jpg", quality=90)
        photo.save(folder / f"p{i}.png")
    return folder


def _read_npy_output(out):
    manifest = json.loads((out / "manifest.json").read_text())
    ids, chunks = [], []
    for shard in manifest["shards"]:
        ids += json.loads((out / shard["files"]["ids"]).read_text())
        chunks.append(np.load(out / shard["files"]["features"]))
    return manifest, ids, np.concatenate(chunks)


def test_inputs_are_listed_in_documented_order(tmp_path):
    for name in ["b/2.jpg", "a.png", "b/10.JPG", "c/notes.txt", "b/1.jpeg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    expected = ["a.png", "b/1.jpeg", "b/10.JPG", "b/2.jpg"]
    assert list_inputs(tmp_path) == [str(tmp_path / n) for n in expected]
    assert list_inputs(f"{tmp_path}/b/*.jp*g") == [
        str(tmp_path / "b/1.jpeg"),
        str(tmp_path / "b/2.jpg"),
    ]
    (tmp_path / "list.txt").write_text("# selection\nb/2.jpg\n\nc/notes.txt\n")
    assert list_inputs(tmp_path / "list.txt") == [
        str(tmp_path / "b/2.jpg"),
        str(tmp_path / "c/notes.txt"),
    ]


def test_runner_matches_python_onnxruntime_and_checks_its_input(resnet18):
    from featx.ort_config import cpu_session

    path, _, _ = resnet18
    runner = featx.Runner(path)
    images = np.random.default_rng(0).standard_normal((3, 3, 224, 224), dtype=np.float32)
    expected = cpu_session(path, "float32").run(None, {"images": images})[0]
    np.testing.assert_array_equal(runner.run(images), expected)
    with pytest.raises(
        ValueError, match=r"shape \(batch >= 1, 3, 224, 224\), got \(3, 3, 112, 224\)"
    ):
        runner.run(np.ascontiguousarray(images[:, :, :112]))


def test_features_match_the_pil_torchvision_path(resnet18, photos, tmp_path):
    path, reference, preprocess = resnet18
    summary = extract(path, photos, tmp_path / "out", batch_size=5, progress=False)
    _, ids, features = _read_npy_output(tmp_path / "out")
    assert summary.rows == summary.inputs == len(ids) == 14
    assert ids == list_inputs(photos)
    transform = reference_transform(preprocess)
    batch = torch.stack([transform(open_rgb(p)) for p in ids])
    with torch.no_grad():
        expected = reference(batch).numpy()
    assert compare(expected, features).min_cosine >= 0.9999


def test_hostile_inputs_never_stop_the_job(resnet18, tmp_path):
    path, _, _ = resnet18
    expectations = write_hostile_set(tmp_path / "hostile")
    summary = extract(path, tmp_path / "hostile", tmp_path / "out", batch_size=4, progress=False)
    _, ids, features = _read_npy_output(tmp_path / "out")
    errors = [json.loads(line) for line in (tmp_path / "out/errors.jsonl").read_text().splitlines()]
    good = {str(tmp_path / "hostile" / n) for n, ok in expectations.items() if ok}
    bad = {str(tmp_path / "hostile" / n) for n, ok in expectations.items() if not ok}
    assert set(ids) == good
    assert {e["path"] for e in errors} == bad
    assert all(e["reason"] for e in errors)
    assert summary.rows + summary.errors == summary.inputs == len(expectations)
    assert np.isfinite(features).all()


def test_parquet_output_holds_ids_and_embeddings(resnet18, photos, tmp_path):
    path, _, _ = resnet18
    extract(path, photos, tmp_path / "npy", progress=False)
    extract(path, photos, tmp_path / "pq", fmt="parquet", dtype="float16", progress=False)
    _, ids, features = _read_npy_output(tmp_path / "npy")
    table = pq.read_table(tmp_path / "pq/features-00000.parquet")
    assert table.column("id").to_pylist() == ids
    embeddings = np.array(table.column("embedding").to_pylist())
    np.testing.assert_allclose(embeddings, features, rtol=1e-3, atol=1e-3)


def test_another_job_in_the_same_outdir_is_refused(resnet18, photos, tmp_path):
    path, _, _ = resnet18
    out = tmp_path / "out"
    extract(path, photos, out, progress=False)
    fewer = sorted(photos.glob("*.jpg"))[:3]
    with pytest.raises(featx.FeatxError, match=r"another job .*input list"):
        extract(path, fewer, out, progress=False)
    with pytest.raises(featx.FeatxError, match="already holds output of this job"):
        extract(path, photos, out, resume=False, progress=False)
    summary = extract(path, fewer, out, overwrite=True, progress=False)
    assert summary.rows == 3
    assert sorted(p.name for p in out.iterdir()) == [
        "errors.jsonl",
        "features-00000.npy",
        "ids-00000.json",
        "manifest.json",
    ]


def _extract_command(model, inputs, out):
    featx_bin = Path(sys.executable).parent / "featx"
    return [
        str(featx_bin),
        "extract",
        str(model),
        str(inputs),
        "-o",
        str(out),
        "--batch-size",
        "4",
        "--shard-size",
        "8",
        "--quiet",
    ]


def _wait_for_shards(out, count, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        manifest = out / "manifest.json"  # replaced by rename: never seen half-written
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the job did not reach {count} shards while running")


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory):
    from featx.bench.corpus import make_corpus

    folder = tmp_path_factory.mktemp("corpus")
    make_corpus(folder, count=96, size=(160, 120))
    return folder


def test_sigkill_at_any_moment_then_resume_gives_identical_output(resnet18, many_photos, tmp_path):
    path, _, _ = resnet18
    reference = tmp_path / "reference"
    assert subprocess.run(_extract_command(path, many_photos, reference)).returncode == 0
    _, expected_ids, expected = _read_npy_output(reference)

    out = tmp_path / "killed"
    for shards_before_kill in (2, 5):
        process = subprocess.Popen(_extract_command(path, many_photos, out))
        _wait_for_shards(out, shards_before_kill, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    resumed = subprocess.run(
        _extract_command(path, many_photos, out), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    manifest, ids, features = _read_npy_output(out)
    assert manifest["complete"]
    assert ids == expected_ids
    np.testing.assert_array_equal(features, expected)
    assert not [p for p in os.listdir(out) if ".tmp-" in p]


def test_ctrl_c_keeps_finished_shards_and_resumes(resnet18, many_photos, tmp_path):
    path, _, _ = resnet18
    out = tmp_path / "out"
    process = subprocess.Popen(
        _extract_command(path, many_photos, out), stderr=subprocess.PIPE, text=True
    )
    _wait_for_shards(out, 1, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted" in stderr
    assert "resume" in stderr
    finished = json.loads((out / "manifest.json").read_text())["shards"]
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    assert len(finished) >= 1
    summary = extract(path, many_photos, out, batch_size=4, shard_size=8, progress=False)
    assert summary.resumed_inputs == 8 * len(finished)
    assert summary.rows == 96


def test_cuda_device_runs_where_available_and_fails_clearly_elsewhere(resnet18):
    import onnxruntime

    path, _, _ = resnet18
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(featx.FeatxError, match=r"no CUDA execution provider.*onnxruntime-gpu"):
            featx.Runner(path, device="cuda")
        return
    images = np.random.default_rng(0).standard_normal((4, 3, 224, 224), dtype=np.float32)
    cuda = featx.Runner(path, device="cuda")
    assert cuda.provider == "CUDAExecutionProvider"
    cpu_features = featx.Runner(path).run(images)
    assert compare(cpu_features, cuda.run(images)).min_cosine >= 0.9999
