"""featx eval: k-NN and linear-probe accuracy on the shards featx extract wrote."""

import json

import numpy as np
import pytest

import featx
from featx.cli import main
from featx.evaluation import score_features
from featx.runtime.errors import FeatxError
from featx.runtime.shards import ShardWriter


def _write_features(out, ids, features, errors=(), shard_size=4):
    """An OUTDIR as featx extract leaves it: shards + manifest (several shards)."""
    writer = ShardWriter(out, "npy", "float32")
    shards = []
    for index, start in enumerate(range(0, len(ids), shard_size)):
        chunk = slice(start, start + shard_size)
        shards.append(
            writer.write(
                index,
                start,
                len(ids[chunk]),
                ids[chunk],
                features[chunk],
                list(errors) if index == 0 else [],
            )
        )
    manifest = {
        "featx_manifest": 1,
        "featx_version": featx.__version__,
        "model": {"path": "m.onnx", "sha256": "0"},
        "inputs": {"count": len(ids), "sha256": "0"},
        "settings": {},
        "complete": True,
        "rows": len(ids),
        "errors": len(errors),
        "shards": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture
def clustered(tmp_path):
    """Two well separated classes in folders a/ and b/, plus one unlabeled-by-CSV row."""
    rng = np.random.default_rng(0)
    ids = [str(tmp_path / "imgs" / ("a" if i % 2 else "b") / f"{i}.jpg") for i in range(40)]
    centers = {"a": np.full(8, 3.0), "b": np.full(8, -3.0)}
    centers["b"][0] = 3.0
    features = np.stack([centers[i.split("/")[-2]] + rng.normal(size=8) for i in ids])
    out = tmp_path / "features"
    out.mkdir()
    return _write_features(out, ids, features.astype(np.float32)), ids


def test_folder_labels_and_csv_labels_agree(tmp_path, clustered):
    out, ids = clustered
    by_folder = featx.evaluate(out, "folder")
    table = tmp_path / "imgs" / "labels.csv"
    table.parent.mkdir(exist_ok=True)
    table.write_text(
        "path,label\n" + "".join(f"{i.split('imgs/')[1]},{i.split('/')[-2]}\n" for i in ids)
    )
    by_csv = featx.evaluate(out, table)
    assert by_folder.scores == by_csv.scores
    assert by_folder.rows == 40
    assert by_folder.scores.knn_accuracy == 1.0
    assert by_folder.scores.linear_probe_accuracy == 1.0
    assert by_folder.classes == ["a", "b"]


def test_random_labels_score_near_chance():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, 16)).astype(np.float32)
    scores = score_features(features, rng.integers(0, 4, size=400))
    assert scores.knn_accuracy < 0.45
    assert scores.linear_probe_accuracy < 0.45


def test_cli_json_and_errors(tmp_path, clustered, capsys):
    out, _ = clustered
    assert main(["eval", str(out), "--labels", "folder", "--json", "--k", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["k"] == 3
    assert report["knn_accuracy"] == 1.0
    assert report["rows"] == 40

    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\nimgs/a/999.jpg,a\n")
    assert main(["eval", str(out), "--labels", str(missing)]) == 2
    assert "not among the extracted features" in capsys.readouterr().err.replace("\n", " ")
    assert main(["eval", str(tmp_path), "--labels", "folder"]) == 2
    assert "not an output folder" in capsys.readouterr().err.replace("\n", " ")


def test_damaged_shard_is_an_error(clustered):
    out, _ = clustered
    shard = out / "features-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(FeatxError, match="does not match its checksum"):
        featx.evaluate(out, "folder")


def test_one_class_is_an_error():
    with pytest.raises(FeatxError, match="at least two"):
        score_features(np.zeros((10, 4)), ["x"] * 10)
