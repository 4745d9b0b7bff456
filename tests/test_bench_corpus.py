import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from featx.bench.corpus import make_corpus
from featx.bench.eager import eager_extract
from featx.features import extractor_feature_model
from featx.models import get_extractor
from featx.preprocess import reference_transform
from featx.runtime.decode import open_rgb
from featx.testing.models import randomize_batchnorm

COUNT = 40
LANDSCAPE = (500, 375)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), count=COUNT, size=LANDSCAPE)


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corpus_files_are_jpegs_of_the_requested_sizes(corpus):
    assert [path.name for path in corpus] == [f"img-{i:05d}.jpg" for i in range(COUNT)]
    sizes = []
    for path in corpus:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            image.load()
            sizes.append(image.size)
    portrait = LANDSCAPE[::-1]
    assert set(sizes) == {LANDSCAPE, portrait}
    assert 0.15 <= sizes.count(portrait) / COUNT <= 0.5


def test_corpus_images_are_varied(corpus):
    assert len({_sha256(path) for path in corpus}) == COUNT
    mean_colours = {
        tuple(np.asarray(open_rgb(path), dtype=np.float64).mean(axis=(0, 1)).round(1))
        for path in corpus
    }
    assert len(mean_colours) == COUNT


def test_corpus_is_deterministic_across_folders(corpus, tmp_path):
    again = make_corpus(tmp_path / "again", count=COUNT, size=LANDSCAPE)
    assert [path.read_bytes() for path in again] == [path.read_bytes() for path in corpus]
    other_seed = make_corpus(tmp_path / "other", count=COUNT, size=LANDSCAPE, seed=1)
    assert _sha256(other_seed[0]) != _sha256(corpus[0])


def test_corpus_reuses_a_complete_folder_and_repairs_an_incomplete_one(tmp_path):
    size = (64, 48)
    paths = make_corpus(tmp_path, count=6, size=size)
    written = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in paths}

    assert make_corpus(tmp_path, count=6, size=size) == paths
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in paths} == written

    paths[2].unlink()
    assert make_corpus(tmp_path, count=6, size=size) == paths
    assert [path.read_bytes() for path in paths] == [written[path][1] for path in paths]

    fewer = make_corpus(tmp_path, count=4, size=size)
    assert sorted(tmp_path.glob("img-*.jpg")) == fewer == paths[:4]


def test_eager_extract_writes_the_features_of_every_image(corpus, tmp_path):
    extractor = get_extractor("small_cnn")
    preprocess = extractor.preprocess
    torch.manual_seed(0)
    model = randomize_batchnorm(extractor.build_model())
    feature_model, _ = extractor_feature_model(extractor, model, preprocess.crop_size)
    paths = corpus[:16]
    out_file = tmp_path / "features.npy"

    # batch 5 leaves a partial last batch: no image may be lost or repeated.
    result = eager_extract(feature_model, paths, preprocess, out_file, batch_size=5, workers=2)

    transform = reference_transform(preprocess)
    with torch.inference_mode():
        expected = feature_model(torch.stack([transform(open_rgb(path)) for path in paths]))
    features = np.load(out_file)
    assert result.images == features.shape[0] == len(paths)
    assert features.shape == tuple(expected.shape)
    torch.testing.assert_close(torch.from_numpy(features), expected)
    assert result.seconds > 0
