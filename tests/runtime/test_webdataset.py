"""WebDataset tar shards as featx extract's input: the same features as the same images as loose
files, every sample accounted for (damaged ones in errors.jsonl), the shard kinds people have
(img2dataset's layout, GNU and pax long names), and resume after SIGKILL on tar input.

Shards are written as img2dataset writes them: Python's tarfile (what webdataset's TarWriter
uses), members KEY.jpg, KEY.json, KEY.txt per sample in order, beside NNNNN.parquet and
NNNNN_stats.json files in img2dataset's output folder."""

import io
import json
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_support import featx_command

import featx
from featx.runtime.shards import read_features

SAMPLES_PER_SHARD = 48


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def _png_bytes(path):
    buffer = io.BytesIO()
    Image.open(path).save(buffer, "PNG")
    return buffer.getvalue()


def _write_shards(folder, images, loose, tar_format=tarfile.PAX_FORMAT, prefix=""):
    """img2dataset's layout of ``images`` in ``folder``, and the same images as files in
    ``loose``; every 7th image is stored as PNG (the fallback decoder's path)."""
    folder.mkdir(parents=True, exist_ok=True)
    loose.mkdir(parents=True, exist_ok=True)
    for shard in range(-(-len(images) // SAMPLES_PER_SHARD)):
        chosen = images[shard * SAMPLES_PER_SHARD : (shard + 1) * SAMPLES_PER_SHARD]
        with tarfile.open(folder / f"{shard:05d}.tar", "w", format=tar_format) as tar:
            for index, image in enumerate(chosen):
                key = f"{prefix}{shard:05d}{index:04d}"
                ext, data = (
                    ("png", _png_bytes(image)) if index % 7 == 3 else ("jpg", image.read_bytes())
                )
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
                _add(tar, f"{key}.txt", b"a caption")
                (loose / Path(key).parent).mkdir(parents=True, exist_ok=True)
                (loose / f"{key}.{ext}").write_bytes(data)
        (folder / f"{shard:05d}.parquet").write_bytes(b"PAR1 stand-in for img2dataset's table")
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": len(chosen)}))


def _tar_rows(out):
    """{sample key: feature row} of an output of tar shards, and its errors."""
    ids, features, errors = read_features(out)
    return dict(zip((i.split(".tar/", 1)[1] for i in ids), features, strict=True)), errors


def _loose_rows(out, root):
    ids, features, _ = read_features(out)
    keys = (str(Path(i).relative_to(root).with_suffix("")) for i in ids)
    return dict(zip(keys, features, strict=True))


def _extract(model, inputs, out, **options):
    return featx.extract(model, inputs, out, batch_size=4, shard_size=16, progress=False, **options)


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    """The 96-image corpus as two img2dataset shards, and as loose files."""
    root = tmp_path_factory.mktemp("webdataset")
    _write_shards(root / "shards", sorted(corpus.iterdir()), root / "loose")
    return root


def test_tar_shards_give_the_features_of_the_same_images_as_loose_files(model, shards, tmp_path):
    _extract(model, shards / "loose", tmp_path / "loose")
    expected = _loose_rows(tmp_path / "loose", shards / "loose")
    summary = _extract(model, shards / "shards", tmp_path / "tar")
    rows, errors = _tar_rows(tmp_path / "tar")
    assert summary.rows == summary.inputs == 96
    assert not errors
    assert list(rows) == sorted(expected)  # shards in order, samples in file order
    for key, feature in rows.items():
        np.testing.assert_array_equal(feature, expected[key])
    ids = read_features(tmp_path / "tar")[0]
    assert ids[0] == f"{shards / 'shards' / '00000.tar'}/000000000"


def test_every_way_of_naming_shards_lists_the_same_samples(model, shards, tmp_path):
    folder = shards / "shards"
    (tmp_path / "shards.txt").write_text(f"# the shards\n{folder}/00000.tar\n{folder}/00001.tar\n")
    named = {
        "folder": folder,
        "brace": f"{folder}/{{00000..00001}}.tar",
        "glob": f"{folder}/*.tar",
        "list": tmp_path / "shards.txt",
    }
    listed = {
        way: read_features(_extract(model, source, tmp_path / way).out_dir)[0]
        for way, source in named.items()
    }
    assert all(ids == listed["folder"] for ids in listed.values())
    single = _extract(model, folder / "00001.tar", tmp_path / "single")
    assert single.rows == 48
    with pytest.raises(featx.FeatxError, match=r"names 1 shards that do not exist .*00002.tar"):
        _extract(model, f"{folder}/{{00000..00002}}.tar", tmp_path / "missing")


def test_long_member_names_in_gnu_and_pax_tars(model, corpus, tmp_path):
    images = sorted(corpus.iterdir())[:12]
    deep = "a-folder-name-long-enough/" * 5  # member names beyond ustar's 100 + 155 bytes
    for kind, tar_format in (("gnu", tarfile.GNU_FORMAT), ("pax", tarfile.PAX_FORMAT)):
        _write_shards(tmp_path / kind, images, tmp_path / f"{kind}-loose", tar_format, deep)
        _extract(model, tmp_path / kind, tmp_path / f"{kind}-out")
        _extract(model, tmp_path / f"{kind}-loose", tmp_path / f"{kind}-loose-out")
        rows, errors = _tar_rows(tmp_path / f"{kind}-out")
        expected = _loose_rows(tmp_path / f"{kind}-loose-out", tmp_path / f"{kind}-loose")
        assert not errors
        assert sorted(rows) == sorted(expected)
        assert all(key.startswith(deep) for key in rows)
        for key, feature in rows.items():
            np.testing.assert_array_equal(feature, expected[key])


def test_damaged_shards_record_every_unusable_sample_and_extract_the_rest(model, corpus, tmp_path):
    images = sorted(corpus.iterdir())
    photo = images[0].read_bytes()
    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        _add(tar, "good-1.jpg", photo)
        _add(tar, "split.jpg", photo)
        _add(tar, "good-2.jpg", photo)
        _add(tar, "split.json", b"{}")  # split's members are not contiguous
        _add(tar, "caption-only.txt", b"no image in this sample")
        _add(tar, "not-an-image.jpg", b"these bytes are no JPEG")
        _add(tar, "good-3.webp.json", b"{}")
        _add(tar, "good-3.jpg", images[1].read_bytes())
    with tarfile.open(folder / "00001.tar", "w") as tar:
        for index in range(3):
            _add(tar, f"tail-{index}.jpg", images[2 + index].read_bytes())
    whole = (folder / "00001.tar").read_bytes()
    cut_inside_tail_1 = 512 + -(-len(images[2].read_bytes()) // 512) * 512 + 512 + 100
    (folder / "00001.tar").write_bytes(whole[:cut_inside_tail_1])
    with tarfile.open(folder / "00002.tar", "w") as tar:
        for index in range(3):
            _add(tar, f"after-damage-{index}.jpg", photo)
    damaged = bytearray((folder / "00002.tar").read_bytes())
    second_header = 512 + -(-len(photo) // 512) * 512
    damaged[second_header + 20] ^= 0xFF
    (folder / "00002.tar").write_bytes(bytes(damaged))

    summary = _extract(model, folder, tmp_path / "out")
    rows, errors = _tar_rows(tmp_path / "out")
    reasons = {e["path"].split(".tar/", 1)[1]: e["reason"] for e in errors}
    assert sorted(rows) == ["after-damage-0", "good-1", "good-2", "good-3", "tail-0"]
    assert set(reasons) == {"split", "caption-only", "not-an-image", "tail-1", f"@{second_header}"}
    assert "not contiguous" in reasons["split"]
    assert "no image member (members: txt)" in reasons["caption-only"]
    assert reasons["not-an-image"]
    assert "the tar is truncated: tail-1.jpg" in reasons["tail-1"]
    assert f"damaged tar header at byte {second_header}" in reasons[f"@{second_header}"]
    assert summary.rows + summary.errors == summary.inputs == 10
    np.testing.assert_array_equal(rows["good-1"], rows["good-2"])


def test_image_ext_chooses_the_image_member(model, corpus, tmp_path):
    jpeg, other = sorted(corpus.iterdir())[:2]
    folder = tmp_path / "shards"
    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        _add(tar, "both.jpg", jpeg.read_bytes())
        _add(tar, "both.png", _png_bytes(other))
    by_default = _tar_rows(_extract(model, folder, tmp_path / "default").out_dir)[0]["both"]
    png_first = _tar_rows(
        _extract(model, folder, tmp_path / "png", image_extensions=["png", "jpg"]).out_dir
    )[0]["both"]
    _extract(model, [jpeg, other], tmp_path / "files")
    files = read_features(tmp_path / "files")[1]
    np.testing.assert_array_equal(by_default, files[0])
    np.testing.assert_array_equal(png_first, files[1])


def test_a_changed_shard_is_another_job(model, shards, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(shards / "shards", folder)
    _extract(model, folder, tmp_path / "out")
    with tarfile.open(folder / "00001.tar", "a") as tar:
        _add(tar, "added.jpg", (shards / "loose" / "000000000.jpg").read_bytes())
    with pytest.raises(featx.FeatxError, match=r"another job .*input list"):
        _extract(model, folder, tmp_path / "out")


def test_sigkill_then_resume_on_tar_input_gives_identical_output(model, corpus, tmp_path):
    """Many small samples so that the job runs long enough to be killed mid-way (each kill is
    checked to have landed before the end)."""
    images = sorted(corpus.iterdir())
    folder = tmp_path / "shards"
    _write_shards(folder, images * 40, tmp_path / "loose")  # 3,840 samples, 80 shards
    pattern = f"{folder}/{{00000..00079}}.tar"

    def command(out):
        return featx_command(
            "extract", model, pattern, "-o", out, "--shard-size", 64, "--workers", 1, "--quiet"
        )

    reference = tmp_path / "reference"
    assert subprocess.run(command(reference)).returncode == 0
    out = tmp_path / "killed"
    for shards_before_kill in (3, 20):
        process = subprocess.Popen(command(out))
        _wait_for_manifest(out, shards_before_kill, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not json.loads((out / "manifest.json").read_text())["complete"]
    resumed = subprocess.run(command(out), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    expected_ids, expected, _ = read_features(reference)
    ids, features, errors = read_features(out)
    assert ids == expected_ids
    assert len(ids) == 3840
    assert not errors
    np.testing.assert_array_equal(features, expected)


def _wait_for_manifest(out, shards, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        manifest = out / "manifest.json"
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= shards:
            return
        time.sleep(0.005)
    raise AssertionError(f"the job did not reach {shards} shards while running")
