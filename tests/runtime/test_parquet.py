"""Parquet files as featx extract's input: the same features as the same images as loose files,
the column layouts people have (img2dataset's binary ``jpg`` column, Hugging Face's Image struct
``{bytes, path}``), ids and kept columns, every row accounted for (damaged ones in errors.jsonl),
resume from the middle of a row group, and the block reader's bounded read-ahead."""

import io
import json
import threading
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import featx
from featx.runtime.metadata import Preprocess
from featx.runtime.native import native
from featx.runtime.pipeline import spec_dict
from featx.runtime.shards import read_features

FIXTURES = Path(__file__).parent / "fixtures"

ROW_GROUP_ROWS = 20


def _png_bytes(path):
    buffer = io.BytesIO()
    Image.open(path).save(buffer, "PNG")
    return buffer.getvalue()


def _images(corpus):
    """The corpus's images as (name, encoded bytes); every 7th one as PNG (the fallback path)."""
    return [
        (f"{path.stem}.png", _png_bytes(path)) if index % 7 == 3 else (path.name, path.read_bytes())
        for index, path in enumerate(sorted(corpus.iterdir()))
    ]


def _img2dataset_table(images, first_key=0):
    """Columns as img2dataset's parquet output format writes them."""
    keys = [f"{first_key + i:09d}" for i in range(len(images))]
    return pa.table(
        {
            "url": [f"https://example.com/{name}" for name, _ in images],
            "caption": [f"a photo called {name}" for name, _ in images],
            "key": keys,
            "status": ["success"] * len(images),
            "width": pa.array([256] * len(images), pa.int32()),
            "jpg": pa.array([data for _, data in images], pa.binary()),
        }
    )


def _hugging_face_table(images):
    """A Hugging Face ``datasets`` Image column ({bytes, path}) and a label, with the schema
    metadata datasets writes."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}
    return pa.table(
        {
            "image": pa.array([{"bytes": data, "path": name} for name, data in images], image_type),
            "label": pa.array([i % 3 for i in range(len(images))], pa.int64()),
        }
    ).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})


@pytest.fixture(scope="module")
def dataset(corpus, tmp_path_factory):
    """The 96-image corpus as two img2dataset parquet files, and as loose files."""
    root = tmp_path_factory.mktemp("parquet")
    images = _images(corpus)
    (root / "parquet").mkdir()
    for part, first in enumerate((0, 48)):
        table = _img2dataset_table(images[first : first + 48], first)
        pq.write_table(table, root / "parquet" / f"{part:05d}.parquet", row_group_size=20)
    (root / "loose").mkdir()
    for name, data in images:
        (root / "loose" / name).write_bytes(data)
    return root


def _extract(model, inputs, out, **options):
    return featx.extract(model, inputs, out, batch_size=4, shard_size=16, progress=False, **options)


def _loose_features(model, folder, out):
    """{file name: feature} of a folder of loose images."""
    _extract(model, folder, out)
    ids, features, _ = read_features(out)
    return {i.rsplit("/", 1)[1]: f for i, f in zip(ids, features, strict=True)}


def test_parquet_rows_give_the_features_of_the_same_images_as_loose_files(model, dataset, tmp_path):
    expected = _loose_features(model, dataset / "loose", tmp_path / "loose")
    summary = _extract(model, dataset / "parquet", tmp_path / "parquet")
    ids, features, errors = read_features(tmp_path / "parquet")
    assert summary.rows == summary.inputs == 96
    assert not errors
    first_file = dataset / "parquet" / "00000.parquet"
    assert ids[:2] == [f"{first_file}/0", f"{first_file}/1"]
    assert ids[48] == f"{dataset / 'parquet' / '00001.parquet'}/0"
    for name, feature in zip(sorted(expected), features, strict=True):
        np.testing.assert_array_equal(feature, expected[name])


def test_hugging_face_image_column_is_detected_and_id_and_kept_columns_are_written(
    model, corpus, tmp_path
):
    images = _images(corpus)[:30]
    images[5] = ("broken.jpg", b"\xff\xd8 not really a JPEG")
    table = _hugging_face_table(images)
    nulled = table.column("image").combine_chunks()
    mask = pa.array([i == 9 for i in range(len(images))])
    image_column = pa.StructArray.from_arrays(nulled.flatten(), fields=list(nulled.type), mask=mask)
    table = table.set_column(0, "image", image_column).append_column(
        "name", pa.array([name for name, _ in images])
    )
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet", row_group_size=8)
    (tmp_path / "loose").mkdir()
    for name, data in images:
        (tmp_path / "loose" / name).write_bytes(data)
    expected = _loose_features(model, tmp_path / "loose", tmp_path / "loose-out")

    summary = _extract(
        model,
        tmp_path / "train-00000-of-00001.parquet",
        tmp_path / "out",
        id_column="name",
        keep_columns=["label", "name"],
        fmt="parquet",
    )
    assert (summary.rows, summary.errors, summary.inputs) == (28, 2, 30)
    ids, features, errors = read_features(tmp_path / "out")
    assert {e["path"] for e in errors} == {"broken.jpg", images[9][0]}
    assert "null" in next(e["reason"] for e in errors if e["path"] == images[9][0])
    usable = [name for i, (name, _) in enumerate(images) if i not in (5, 9)]
    assert ids == usable
    for name, feature in zip(ids, features, strict=True):
        np.testing.assert_array_equal(feature, expected[name])
    written = pa.concat_tables(
        pq.read_table(tmp_path / "out" / name) for name in sorted(_feature_files(tmp_path / "out"))
    )
    assert written.column_names == ["id", "embedding", "label", "name"]
    labels = {name: i % 3 for i, (name, _) in enumerate(images)}
    assert written.column("name").to_pylist() == usable
    assert written.column("label").to_pylist() == [labels[name] for name in usable]


def _feature_files(out):
    manifest = json.loads((out / "manifest.json").read_text())
    return [shard["files"]["features"] for shard in manifest["shards"]]


def test_resume_from_the_middle_of_row_groups_gives_identical_output(model, dataset, tmp_path):
    """Shards of 10 rows over row groups of 20: the pending shards of a resumed job start and end
    inside row groups."""
    options = {"shard_size": 10, "batch_size": 3, "progress": False}
    reference = featx.extract(model, dataset / "parquet", tmp_path / "reference", **options)
    out = tmp_path / "out"
    featx.extract(model, dataset / "parquet", out, **options)
    manifest = json.loads((out / "manifest.json").read_text())
    kept = [s for s in manifest["shards"] if s["index"] % 3 == 0]
    for shard in manifest["shards"]:
        if shard not in kept:
            for name in shard["files"].values():
                (out / name).unlink()
    manifest["shards"], manifest["complete"] = kept, False
    (out / "manifest.json").write_text(json.dumps(manifest))

    resumed = featx.extract(model, dataset / "parquet", out, **options)
    assert resumed.resumed_inputs == sum(s["inputs"] for s in kept)
    expected_ids, expected, _ = read_features(reference.out_dir)
    ids, features, errors = read_features(out)
    assert ids == expected_ids
    assert not errors
    np.testing.assert_array_equal(features, expected)


def test_a_damaged_row_group_is_recorded_and_the_rest_extracted(model, corpus, tmp_path):
    images = _images(corpus)[:40]
    path = tmp_path / "data.parquet"
    pq.write_table(_img2dataset_table(images), path, row_group_size=10, compression="none")
    metadata = pq.ParquetFile(path).metadata
    image_column = metadata.schema.to_arrow_schema().get_field_index("jpg")
    page = metadata.row_group(2).column(image_column).data_page_offset
    damaged = bytearray(path.read_bytes())
    damaged[page : page + 16] = b"\xff" * 16  # the page header no longer parses
    path.write_bytes(bytes(damaged))

    summary = _extract(model, path, tmp_path / "out")
    ids, _, errors = read_features(tmp_path / "out")
    assert (summary.rows, summary.errors, summary.inputs) == (30, 10, 40)
    assert [e["path"] for e in errors] == [f"{path}/{row}" for row in range(20, 30)]
    assert all("cannot read row group 2 of" in e["reason"] for e in errors)
    assert ids == [f"{path}/{row}" for row in range(40) if not 20 <= row < 30]


def test_unusable_parquet_input_is_refused_with_what_to_do(model, corpus, tmp_path):
    images = _images(corpus)[:4]
    truncated = tmp_path / "truncated.parquet"
    pq.write_table(_img2dataset_table(images), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(featx.FeatxError, match=r"truncated.parquet is not a readable parquet"):
        _extract(model, truncated, tmp_path / "a")

    two = tmp_path / "two-image-columns.parquet"
    pq.write_table(_img2dataset_table(images).append_column("thumb", pa.array([b""] * 4)), two)
    with pytest.raises(featx.FeatxError, match=r"several columns .*\(jpg, thumb\).*--image-column"):
        _extract(model, two, tmp_path / "b")
    assert _extract(model, two, tmp_path / "c", image_column="jpg").rows == 4

    none = tmp_path / "metadata-only.parquet"
    pq.write_table(_img2dataset_table(images).drop_columns(["jpg"]), none)
    with pytest.raises(featx.FeatxError, match=r"no image column.*Its columns: url \(string\)"):
        _extract(model, none, tmp_path / "d")
    with pytest.raises(featx.FeatxError, match=r"column 'caption' is string"):
        _extract(model, none, tmp_path / "e", image_column="caption")
    with pytest.raises(featx.FeatxError, match=r"has no column 'wrong'"):
        _extract(model, two, tmp_path / "f", image_column="jpg", id_column="wrong")
    with pytest.raises(featx.FeatxError, match=r"--keep-columns .* add --format parquet"):
        _extract(model, two, tmp_path / "g", image_column="jpg", keep_columns=["url"])
    with pytest.raises(featx.FeatxError, match=r"cannot copy a column named 'id'"):
        _extract(model, two, tmp_path / "h", image_column="jpg", keep_columns=["id"], fmt="parquet")
    with pytest.raises(featx.FeatxError, match=r"apply to parquet input"):
        _extract(model, corpus, tmp_path / "i", image_column="jpg")

    other = tmp_path / "mixed"
    other.mkdir()
    pq.write_table(_img2dataset_table(images), other / "a.parquet")
    pq.write_table(
        _img2dataset_table(images).cast(_large_binary_schema(images)), other / "b.parquet"
    )
    with pytest.raises(featx.FeatxError, match=r"b.parquet: column 'jpg' has type large_binary"):
        _extract(model, other, tmp_path / "j")


def _large_binary_schema(images):
    schema = _img2dataset_table(images).schema
    return schema.set(schema.get_field_index("jpg"), pa.field("jpg", pa.large_binary()))


def test_large_binary_and_sliced_chunks_reach_the_decoder_unchanged(model, corpus, tmp_path):
    images = _images(corpus)[:12]
    table = _img2dataset_table(images)
    pq.write_table(table.cast(_large_binary_schema(images)), tmp_path / "large.parquet")
    pq.write_table(table, tmp_path / "plain.parquet", row_group_size=5)
    large = read_features(_extract(model, tmp_path / "large.parquet", tmp_path / "l").out_dir)[1]
    plain = read_features(_extract(model, tmp_path / "plain.parquet", tmp_path / "p").out_dir)[1]
    np.testing.assert_array_equal(large, plain)


class _Buffer(bytearray):
    """A block's data buffer that can be watched with a weak reference."""


def test_block_reader_is_called_ahead_of_the_workers_by_a_bounded_number_of_blocks(corpus):
    """Memory stays flat: while the consumer has taken b batches, the reader has been asked for
    at most b + prefetch + blocks held (2) + 1 blocks, and the blocks still alive are few."""
    photo = sorted(corpus.iterdir())[0].read_bytes()
    blocks, rows_per_block, prefetch = 40, 4, 3
    taken = {"batches": 0}
    lock = threading.Lock()
    alive: list[weakref.ref] = []
    ahead_at_call: list[int] = []
    most_alive = [0]

    def read_block():
        with lock:
            if len(alive) == blocks:
                return None
            ahead_at_call.append(len(alive) - taken["batches"])
            most_alive[0] = max(most_alive[0], sum(ref() is not None for ref in alive))
            data = _Buffer(photo * rows_per_block)
            alive.append(weakref.ref(data))
        starts = np.arange(rows_per_block, dtype=np.int64) * len(photo)
        return data, starts, np.full(rows_per_block, len(photo), np.int64)

    spec = spec_dict(Preprocess(32, 36))
    ends = list(range(rows_per_block, blocks * rows_per_block + 1, rows_per_block))
    pipeline = native().BatchPipeline(ends, spec, 2, prefetch, blocks=read_block)
    reference = native().preprocess_file(str(sorted(corpus.iterdir())[0]), spec)[2]
    while (batch := pipeline.next()) is not None:
        _, rows, tensor, statuses = batch
        assert statuses == [("ok", "")] * rows
        np.testing.assert_array_equal(tensor[rows - 1], reference)
        with lock:
            taken["batches"] += 1
    assert len(alive) == blocks
    assert max(ahead_at_call) <= prefetch + 2 + 1
    assert most_alive[0] <= prefetch + 2 + 1
    del pipeline
    assert all(ref() is None for ref in alive)


def test_block_reader_failures_stop_the_pipeline_with_their_error(corpus):
    spec = spec_dict(Preprocess(32, 36))
    photo = sorted(corpus.iterdir())[0].read_bytes()

    def failing():
        raise KeyError("the reader's own bug")

    with pytest.raises(KeyError, match="the reader's own bug"):
        native().BatchPipeline([2], spec, 1, 2, blocks=failing).next()
    with pytest.raises(RuntimeError, match="ended after 0 of 2 items"):
        native().BatchPipeline([2], spec, 1, 2, blocks=lambda: None).next()

    def outside():
        return photo, np.array([0], np.int64), np.array([len(photo) + 1], np.int64)

    with pytest.raises(ValueError, match="row 0 lies outside the block's"):
        native().BatchPipeline([1], spec, 1, 2, blocks=outside).next()
    errors = iter([(2, "cannot read row group 0 of x.parquet: damaged")])
    batch = native().BatchPipeline([2], spec, 1, 2, blocks=lambda: next(errors, None)).next()
    assert batch[3] == [("error", "cannot read row group 0 of x.parquet: damaged")] * 2


def test_a_parquet_file_written_by_hugging_face_datasets(model, fixture_photos, tmp_path):
    """fixtures/hf-photos.parquet: fixtures/photos written by Hugging Face datasets 5.2.0 as it
    stores an image dataset on the Hub (``Dataset.from_dict({"image": paths, "label": ...})``,
    ``cast_column("image", Image())``, bytes embedded with ``embed_table_storage``,
    ``to_parquet``)."""
    expected = _loose_features(model, fixture_photos, tmp_path / "files")
    _extract(
        model,
        FIXTURES / "hf-photos.parquet",
        tmp_path / "out",
        keep_columns=["label"],
        fmt="parquet",
    )
    table = pq.read_table(tmp_path / "out" / "features-00000.parquet")
    assert table.column("label").to_pylist() == list(range(7))
    ids, features, errors = read_features(tmp_path / "out")
    assert not errors
    assert ids == [f"{FIXTURES / 'hf-photos.parquet'}/{row}" for row in range(7)]
    for name, feature in zip(sorted(expected), features, strict=True):
        np.testing.assert_array_equal(feature, expected[name])


def test_image_values_holding_a_path_instead_of_bytes_are_read_from_that_file(
    model, corpus, tmp_path
):
    """``Dataset.to_parquet`` of images loaded from files writes ``{bytes: null, path}``."""
    photos = sorted(corpus.iterdir())[:6]
    (tmp_path / "data" / "images").mkdir(parents=True)
    for photo in photos[:4]:
        (tmp_path / "data" / "images" / photo.name).write_bytes(photo.read_bytes())
    rows = [
        {"bytes": photos[0].read_bytes(), "path": None},
        {"bytes": None, "path": f"images/{photos[1].name}"},  # relative to the parquet file
        {"bytes": None, "path": str(tmp_path / "data" / "images" / photos[2].name)},
        {"bytes": None, "path": "images/missing.jpg"},
        {"bytes": photos[4].read_bytes(), "path": "kept.jpg"},
        {"bytes": None, "path": f"images/{photos[3].name}"},
    ]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array(rows, image_type)}), tmp_path / "data" / "t.parquet")
    summary = _extract(model, tmp_path / "data" / "t.parquet", tmp_path / "out")
    _, features, errors = read_features(tmp_path / "out")
    assert (summary.rows, summary.errors) == (5, 1)
    assert "no image bytes but the path images/missing.jpg" in errors[0]["reason"]
    direct = read_features(
        _extract(model, [*photos[:3], photos[4], photos[3]], tmp_path / "f").out_dir
    )
    np.testing.assert_array_equal(features, direct[1])
