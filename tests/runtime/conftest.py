"""Fixtures of the runtime tests. Everything here, and every test in this folder, runs in an
environment without the PyTorch side: models and expected features come from the committed files
in fixtures/ (scripts/make-test-fixtures.py), images are made with PIL."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def model():
    return FIXTURES / "small_cnn.onnx"


@pytest.fixture(scope="session")
def fixture_photos():
    return FIXTURES / "photos"


@pytest.fixture(scope="session")
def expected_features():
    """The eager PyTorch features of fixtures/photos, by file name."""
    ids = json.loads((FIXTURES / "expected-ids.json").read_text())
    return ids, np.load(FIXTURES / "expected-small_cnn.npy")


@pytest.fixture(scope="session")
def hostile_photos():
    """The landscape and portrait the hostile image set is made of."""
    return tuple(
        Image.open(FIXTURES / f"hostile-{name}.jpg").convert("RGB")
        for name in ("landscape", "portrait")
    )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """96 JPEGs of varied sizes, cut from the fixture photos."""
    folder = tmp_path_factory.mktemp("corpus")
    photos = [Image.open(p).convert("RGB") for p in sorted((FIXTURES / "photos").iterdir())]
    rng = np.random.default_rng(0)
    for index in range(96):
        photo = photos[index % len(photos)]
        width, height = photo.size
        left, top = int(rng.integers(0, width // 4 + 1)), int(rng.integers(0, height // 4 + 1))
        crop = photo.crop((left, top, width, height))
        size = (int(rng.integers(40, 200)), int(rng.integers(40, 200)))
        crop.resize(size).save(folder / f"{index:03d}.jpg", quality=int(rng.integers(70, 95)))
    return folder
