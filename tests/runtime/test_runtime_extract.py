"""featx extract on the runtime alone: features equal the user's eager model, hostile inputs,
output formats, one job per folder, crash safety (tests that hold the job so that it cannot
finish before the signal lands)."""

import errno
import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pyarrow.parquet as pq
import pytest
from PIL import Image
from runtime_support import cosines, featx_command, held_input, read_npy_output

import featx
from featx.runtime.errors import OutputWriteError
from featx.runtime.extract import extract
from featx.runtime.inputs import list_inputs
from featx.runtime.ort_config import cpu_session
from featx.testing.images import jpeg_bytes, write_hostile_set

MIN_COSINE = 0.9999
"""What test_extract.py asks of featx extract against the eager PIL + torchvision path."""


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


def test_runner_matches_python_onnxruntime_and_checks_its_input(model):
    runner = featx.Runner(model)
    assert (runner.arch, runner.embedding_dim) == ("small_cnn", 128)
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    expected = cpu_session(model, "float32").run(None, {"images": images})[0]
    np.testing.assert_array_equal(runner.run(images), expected)
    with pytest.raises(ValueError, match=r"shape \(batch >= 1, 3, 32, 32\), got \(3, 3, 16, 32\)"):
        runner.run(np.ascontiguousarray(images[:, :, :16]))


def test_features_equal_the_eager_model_on_real_photos(
    model, fixture_photos, expected_features, tmp_path
):
    expected_ids, expected = expected_features
    summary = extract(model, fixture_photos, tmp_path / "out", batch_size=3, progress=False)
    _, ids, features = read_npy_output(tmp_path / "out")
    assert summary.rows == summary.inputs == len(expected_ids)
    assert [os.path.relpath(p, fixture_photos) for p in ids] == expected_ids
    assert cosines(expected, features).min() >= MIN_COSINE


def test_fp16_model_takes_and_gives_half_precision(fixture_photos, expected_features, tmp_path):
    fp16 = fixture_photos.parent / "small_cnn-fp16.onnx"
    runner = featx.Runner(fp16)
    assert runner.input_dtype == np.float16
    assert runner.metadata.io_dtype == "float16"
    extract(fp16, fixture_photos, tmp_path / "out", progress=False)
    _, _, features = read_npy_output(tmp_path / "out")
    # fp16 export gate (featx.parity.FP16_MIN_COSINE)
    assert cosines(expected_features[1], features).min() >= 0.999


def test_hostile_inputs_never_stop_the_job(model, hostile_photos, tmp_path):
    expectations = write_hostile_set(tmp_path / "hostile", hostile_photos)
    summary = extract(model, tmp_path / "hostile", tmp_path / "out", batch_size=4, progress=False)
    _, ids, features = read_npy_output(tmp_path / "out")
    errors = [json.loads(line) for line in (tmp_path / "out/errors.jsonl").read_text().splitlines()]
    good = {str(tmp_path / "hostile" / n) for n, ok in expectations.items() if ok}
    bad = {str(tmp_path / "hostile" / n) for n, ok in expectations.items() if not ok}
    assert set(ids) == good
    assert {e["path"] for e in errors} == bad
    assert all(e["reason"] for e in errors)
    assert summary.rows + summary.errors == summary.inputs == len(expectations)
    assert np.isfinite(features).all()


def test_parquet_output_holds_ids_and_embeddings(model, fixture_photos, tmp_path):
    extract(model, fixture_photos, tmp_path / "npy", progress=False)
    extract(model, fixture_photos, tmp_path / "pq", fmt="parquet", dtype="float16", progress=False)
    _, ids, features = read_npy_output(tmp_path / "npy")
    table = pq.read_table(tmp_path / "pq/features-00000.parquet")
    assert table.column("id").to_pylist() == ids
    embeddings = np.array(table.column("embedding").to_pylist())
    np.testing.assert_allclose(embeddings, features, rtol=1e-3, atol=1e-3)


def test_another_job_in_the_same_outdir_is_refused(model, fixture_photos, tmp_path):
    out = tmp_path / "out"
    extract(model, fixture_photos, out, progress=False)
    fewer = sorted(fixture_photos.glob("*.jpg"))[:3]
    with pytest.raises(featx.FeatxError, match=r"another job .*input list"):
        extract(model, fewer, out, progress=False)
    with pytest.raises(featx.FeatxError, match="already holds output of this job"):
        extract(model, fixture_photos, out, resume=False, progress=False)
    summary = extract(model, fewer, out, overwrite=True, progress=False)
    assert summary.rows == 3
    assert sorted(p.name for p in out.iterdir()) == [
        ".featx.lock",
        "errors.jsonl",
        "features-00000.npy",
        "ids-00000.json",
        "manifest.json",
    ]


SHARD_SIZE = 8
HELD_AT = 51
"""The held input's place among the 97 inputs: in shard 6, so shards 0-5 can finish while it is
held and the job cannot."""


def _extract_command(model, inputs, out):
    return featx_command(
        "extract",
        model,
        inputs,
        "-o",
        out,
        "--batch-size",
        4,
        "--shard-size",
        SHARD_SIZE,
        "--quiet",
    )


def _wait_for_shards(out, count, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        manifest = out / "manifest.json"  # replaced by rename: never seen half-written
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the job did not reach {count} shards while running")


def _wait_for_line(stream, text, timeout=60):
    """Reads the unbuffered binary ``stream`` until a line holding ``text``; returns everything
    read. Unbuffered, so that nothing read ahead is hidden from a later ``communicate``."""
    seen = ""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while text not in seen:
            if not selector.select(max(deadline - time.monotonic(), 0)):
                raise AssertionError(f"no {text!r} within {timeout}s; got {seen!r}")
            line = stream.readline()
            if not line:
                raise AssertionError(f"the process ended without {text!r}; got {seen!r}")
            seen += line.decode()
    return seen


@pytest.fixture
def held_corpus(corpus, tmp_path):
    """The 96-image corpus plus one input that the test holds (a named pipe)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for path in corpus.iterdir():
        (folder / path.name).symlink_to(path)
    held = folder / f"{HELD_AT:03d}-held.jpg"
    photo = jpeg_bytes(Image.open(corpus / "000.jpg").convert("RGB"))
    with held_input(held, photo) as release:
        assert list_inputs(folder).index(str(held)) == HELD_AT
        yield folder, release


def test_sigkill_at_any_moment_then_resume_gives_identical_output(model, held_corpus, tmp_path):
    inputs, release = held_corpus
    reference = tmp_path / "reference"
    release()
    assert subprocess.run(_extract_command(model, inputs, reference)).returncode == 0
    _, expected_ids, expected = read_npy_output(reference)
    assert len(expected_ids) == 97

    out = tmp_path / "killed"
    for shards_before_kill in (2, 5):
        process = subprocess.Popen(_extract_command(model, inputs, out))
        _wait_for_shards(out, shards_before_kill, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    release()
    resumed = subprocess.run(_extract_command(model, inputs, out), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    manifest, ids, features = read_npy_output(out)
    assert manifest["complete"]
    assert ids == expected_ids
    np.testing.assert_array_equal(features, expected)
    assert not [p for p in os.listdir(out) if ".tmp-" in p]


def test_ctrl_c_keeps_finished_shards_and_resumes(model, held_corpus, tmp_path):
    inputs, release = held_corpus
    out = tmp_path / "out"
    # Ctrl-C's default action, even where the suite runs in a background job (whose shell
    # ignores SIGINT, which children inherit and Python then leaves ignored).
    process = subprocess.Popen(
        _extract_command(model, inputs, out),
        stderr=subprocess.PIPE,
        bufsize=0,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    finishable = HELD_AT // SHARD_SIZE
    _wait_for_shards(out, finishable, process)
    process.send_signal(signal.SIGINT)
    # The job is held: Ctrl-C must be seen while the pipeline waits on the held read, and the
    # command says it is stopping before the read is let go.
    seen = _wait_for_line(process.stderr, "interrupted: stopping the decode workers")
    release().join()
    rest = process.communicate(timeout=60)[1].decode()
    assert process.returncode == 130, seen + rest
    assert "resume" in rest
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"]
    assert len(manifest["shards"]) == finishable

    release()
    summary = extract(model, inputs, out, batch_size=4, shard_size=SHARD_SIZE, progress=False)
    assert summary.resumed_inputs == SHARD_SIZE * finishable
    assert summary.rows == 97


def test_cuda_device_runs_where_available_and_fails_clearly_elsewhere(model):
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(featx.FeatxError, match=r"no CUDA execution provider.*onnxruntime-gpu"):
            featx.Runner(model, device="cuda")
        return
    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    cuda = featx.Runner(model, device="cuda")
    assert cuda.provider == "CUDAExecutionProvider"
    assert cosines(featx.Runner(model).run(images), cuda.run(images)).min() >= MIN_COSINE


def test_one_run_per_output_folder_and_a_killed_run_never_blocks_the_next(
    model, held_corpus, tmp_path
):
    inputs, release = held_corpus
    out = tmp_path / "out"
    first = subprocess.Popen(_extract_command(model, inputs, out))
    _wait_for_shards(out, 2, first)
    second = subprocess.run(_extract_command(model, inputs, out), capture_output=True, text=True)
    assert second.returncode == 2, second.stderr
    assert "being written by another featx extract" in second.stderr
    assert f"pid {first.pid} on {socket.gethostname()}, started " in second.stderr
    assert first.poll() is None  # the refused run touched nothing of the first one's
    first.send_signal(signal.SIGKILL)
    first.wait()
    release()
    third = subprocess.run(_extract_command(model, inputs, out), capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert "resuming" in third.stderr
    manifest, ids, _ = read_npy_output(out)
    assert manifest["complete"]
    assert len(ids) == 97


def _can_mount_tmpfs(folder):
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(folder)}"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_a_full_or_read_only_disk_stops_clearly_keeps_finished_shards_and_resumes(
    model, corpus, tmp_path
):
    """On a real 64 KiB tmpfs (in a private mount namespace): the disk fills after a few shards;
    then, read-only, the rerun is refused; then, with room, the rerun resumes to the output of an
    uninterrupted run."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("unshare") is None or not _can_mount_tmpfs(str(disk)):
        pytest.skip("needs unshare and a mountable tmpfs (user namespaces)")
    reference = tmp_path / "reference"
    assert subprocess.run(_extract_command(model, corpus, reference)).returncode == 0
    _, expected_ids, expected = read_npy_output(reference)

    extract_there = shlex.join(map(str, _extract_command(model, corpus, disk / "out")))
    steps = {
        "full": "",
        "read-only": "mount -o remount,ro {disk}",
        "roomy": "mount -o remount,rw,size=16m {disk}",
    }
    script = [f"mount -t tmpfs -o size=64k tmpfs {disk} || exit 99"]
    for step, before in steps.items():
        script += [
            before.format(disk=disk),
            f"{extract_there} 2> {tmp_path / step}.err; echo $? > {tmp_path / step}.rc",
            f"cp -a {disk / 'out'} {tmp_path / step}",
        ]
    ran = subprocess.run(["unshare", "-rm", "sh", "-c", "\n".join(script)])
    assert ran.returncode == 0

    def outcome(step):
        return int((tmp_path / f"{step}.rc").read_text()), (tmp_path / f"{step}.err").read_text()

    code, message = outcome("full")
    assert code == OutputWriteError.exit_code, message
    assert "the file system is full (ENOSPC)" in message
    assert "free." in message
    assert "Free space there" in message
    assert "resume" in message
    after_full = tmp_path / "full"
    manifest, ids, features = read_npy_output(after_full)  # every listed shard is intact
    assert 1 <= len(manifest["shards"]) < 12
    listed = {name for s in manifest["shards"] for name in s["files"].values()}
    shard_files = {p.name for p in after_full.iterdir() if p.name.startswith(("features", "ids"))}
    assert shard_files == listed  # the shard in flight left nothing behind
    assert not [p for p in os.listdir(after_full) if ".tmp-" in p]
    assert ids == expected_ids[: len(ids)]
    np.testing.assert_array_equal(features, expected[: len(ids)])

    code, message = outcome("read-only")
    assert code == OutputWriteError.exit_code, message
    assert "read-only (EROFS)" in message
    assert "Make the folder writable" in message

    code, message = outcome("roomy")
    assert code == 0, message
    assert "resuming" in message
    manifest, ids, features = read_npy_output(tmp_path / "roomy")
    assert manifest["complete"]
    assert ids == expected_ids
    np.testing.assert_array_equal(features, expected)


def test_a_refused_write_is_reported_and_the_rerun_resumes(model, corpus, tmp_path, monkeypatch):
    """Permission denied, injected at the rename that finishes shard 3's features file (where a
    tmpfs cannot show it: root may write anywhere)."""
    reference = extract(
        model, corpus, tmp_path / "reference", batch_size=4, shard_size=8, progress=False
    )
    out = tmp_path / "out"
    rename = os.replace

    def refuse_shard_3(source, target):
        if Path(target).name == "features-00003.npy":
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        rename(source, target)

    monkeypatch.setattr(os, "replace", refuse_shard_3)
    with pytest.raises(
        OutputWriteError, match=r"features-00003.npy: permission denied \(EACCES\)"
    ) as err:
        extract(model, corpus, out, batch_size=4, shard_size=8, progress=False)
    assert "3 of 12 shards are finished" in str(err.value)
    assert "Make the folder writable" in str(err.value)
    monkeypatch.undo()
    resumed = extract(model, corpus, out, batch_size=4, shard_size=8, progress=False)
    assert resumed.resumed_inputs == 24
    assert resumed.rows == reference.rows == 96
    np.testing.assert_array_equal(
        read_npy_output(out)[2], read_npy_output(tmp_path / "reference")[2]
    )
