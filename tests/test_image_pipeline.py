"""The C++ image pipeline (featx._runner.preprocess_file / preprocess_rgb) against the PIL +
torchvision reference path.

Parity is bit-exact: decoded pixels (TurboJPEG, accurate DCT), the resize (Pillow's fixed-point
separable filters, including Pillow 13's choice of pass order) and float32 normalisation are
reproduced exactly, so tensors are compared with a 1e-6 bound in normalised units (a one-level
pixel error would be 1/255/std ~ 0.017).
"""

import math
import os
import random
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from featx import _runner
from featx.preprocess import reference_transform
from featx.runtime.decode import MAX_PIXELS, decode_rgb, open_rgb
from featx.runtime.errors import FeatxError, ImageDecodeError
from featx.runtime.metadata import Preprocess
from featx.runtime.pipeline import spec_dict
from featx.testing.images import (
    HUGE_SIZE,
    jpeg_bytes,
    orientation_exif,
    parity_photos,
    write_hostile_set,
)

BIT_EXACT = 1e-6  # normalised units
SIZES = [(224, 256), (224, 232), (32, 32), (7, 13)]  # (crop, resize)
INTERPOLATIONS = ["nearest", "bilinear", "bicubic"]
PHOTOS = parity_photos()


def extract(path, spec):
    """What a pipeline does with one file: C++ first, the PIL decoder for what C++ leaves."""
    status, message, tensor = _runner.preprocess_file(str(path), spec)
    if status != "fallback":
        return status, message, tensor
    try:
        return "ok", "", _runner.preprocess_rgb(decode_rgb(path), spec)
    except ImageDecodeError as err:
        return "error", str(err), None


def reference(path, preprocess):
    return reference_transform(preprocess)(open_rgb(path)).numpy()


def max_difference(actual, expected):
    assert actual.shape == expected.shape
    return float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, write_hostile_set(folder)


@pytest.mark.parametrize(("crop", "resize"), SIZES)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("photo", PHOTOS)
def test_preprocess_rgb_is_bit_exact_with_torchvision_on_pil(photo, interpolation, crop, resize):
    preprocess = Preprocess(crop, resize, interpolation)
    image = PHOTOS[photo]
    expected = reference_transform(preprocess)(image).numpy()
    actual = _runner.preprocess_rgb(np.asarray(image), spec_dict(preprocess))
    assert actual.dtype == np.float32
    assert max_difference(actual, expected) <= BIT_EXACT


@pytest.mark.parametrize(("crop", "resize"), [(224, 224), (192, 213)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("photo", PHOTOS)
def test_squash_policy_is_bit_exact_with_torchvision_resize_to_a_square(
    photo, interpolation, crop, resize
):
    """timm's crop_mode 'squash': both sides to ``resize`` (aspect ratio not kept), then crop."""
    preprocess = Preprocess(crop, resize, interpolation, policy="resize_squash_center_crop")
    image = PHOTOS[photo]
    expected = transforms.Compose(
        [
            transforms.Resize(
                (resize, resize), interpolation=transforms.InterpolationMode(interpolation)
            ),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(preprocess.mean, preprocess.std),
        ]
    )(image).numpy()
    actual = _runner.preprocess_rgb(np.asarray(image), spec_dict(preprocess))
    assert max_difference(actual, expected) <= BIT_EXACT


def test_unknown_policy_is_refused():
    with pytest.raises(FeatxError, match="invalid preprocessing policy 'letterbox'"):
        Preprocess(224, 256, policy="letterbox")
    spec = spec_dict(Preprocess(224, 256)) | {"policy": "letterbox"}
    with pytest.raises(ValueError, match="policy must be resize_shorter_center_crop or"):
        _runner.preprocess_rgb(np.zeros((8, 8, 3), np.uint8), spec)


SCALAR_CONFIGS = [
    (mode, crop, resize)
    for mode in ("bilinear", "bicubic")
    for crop, resize in ((224, 256), (7, 13))
]


def test_scalar_kernels_give_the_same_tensors_as_the_simd_ones(tmp_path):
    # SIMD kernels are chosen once per process; FEATX_DISABLE_AVX2 forces the scalar ones there.
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from featx import _runner
        from featx.runtime.metadata import Preprocess
        from featx.runtime.pipeline import spec_dict
        from featx.testing.images import parity_photos
        outputs = [
            _runner.preprocess_rgb(np.asarray(image), spec_dict(Preprocess(crop, resize, mode)))
            for image in parity_photos().values()
            for mode, crop, resize in {SCALAR_CONFIGS!r}
        ]
        np.savez(sys.argv[1], *outputs)
        """
    )
    out = tmp_path / "scalar.npz"
    env = {**os.environ, "FEATX_DISABLE_AVX2": "1"}
    subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True)
    with np.load(out) as data:
        scalar = [data[f"arr_{i}"] for i in range(len(data.files))]
    simd = [
        _runner.preprocess_rgb(np.asarray(image), spec_dict(Preprocess(crop, resize, mode)))
        for image in PHOTOS.values()
        for mode, crop, resize in SCALAR_CONFIGS
    ]
    assert len(scalar) == len(simd)
    for simd_tensor, scalar_tensor in zip(simd, scalar, strict=True):
        assert np.array_equal(simd_tensor, scalar_tensor)


@pytest.mark.parametrize(
    "options",
    [{}, {"subsampling": 0}, {"subsampling": 1, "progressive": True}, {"quality": 50}],
    ids=["420", "444", "422-progressive", "q50"],
)
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_jpeg_files_are_bit_exact_with_pil_decode_and_torchvision(tmp_path, options, interpolation):
    preprocess = Preprocess(224, 256, interpolation)
    for name in ("temple-640x427", "flower-333x500", "temple-97x61"):
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(jpeg_bytes(PHOTOS[name], **options))
        status, message, tensor = _runner.preprocess_file(str(path), spec_dict(preprocess))
        assert (status, message) == ("ok", "")
        assert max_difference(tensor, reference(path, preprocess)) <= BIT_EXACT, name


@pytest.mark.parametrize(("crop", "resize"), [(41, 24), (30, 24)])
def test_crop_larger_than_the_resized_image_is_zero_padded_like_torchvision(crop, resize):
    # Preprocess forbids crop > resize; the C++ spec allows it and pads like CenterCrop does.
    image = PHOTOS["temple-97x61"]  # resized to 38x24: padded in one axis or in both
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    torchvision_path = transforms.Compose(
        [
            transforms.Resize(resize, antialias=True),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    spec = {
        "crop_size": crop,
        "resize_size": resize,
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
        "output": "float32",
    }
    actual = _runner.preprocess_rgb(np.asarray(image), spec)
    assert max_difference(actual, torchvision_path(image).numpy()) <= BIT_EXACT


def test_float16_output_is_the_float32_output_rounded_to_float16(hostile):
    folder, _ = hostile
    preprocess = Preprocess(224, 256, "bicubic")
    for path in (folder / "photo.jpg", folder / "rotated-6.jpg"):
        _, _, single = _runner.preprocess_file(str(path), spec_dict(preprocess))
        status, _, half = _runner.preprocess_file(str(path), spec_dict(preprocess, "float16"))
        assert status == "ok"
        assert half.dtype == np.float16
        assert np.array_equal(half.view(np.uint16), single.astype(np.float16).view(np.uint16))
    rgb = np.asarray(PHOTOS["flower-61x97"])
    single = _runner.preprocess_rgb(rgb, spec_dict(preprocess))
    half = _runner.preprocess_rgb(rgb, spec_dict(preprocess, "float16"))
    assert np.array_equal(half.view(np.uint16), single.astype(np.float16).view(np.uint16))


def test_hostile_set_good_files_match_the_reference_and_bad_ones_are_errors(hostile):
    folder, expected = hostile
    preprocess = Preprocess(224, 256, "bilinear")
    for name, good in expected.items():
        status, message, tensor = extract(folder / name, spec_dict(preprocess))
        if good:
            assert status == "ok", f"{name}: {message}"
            assert max_difference(tensor, reference(folder / name, preprocess)) <= BIT_EXACT, name
        else:
            assert status == "error", name
            assert tensor is None
            assert message, name


def test_cpp_decodes_jpegs_itself_and_leaves_other_formats_to_the_fallback(hostile):
    folder, expected = hostile
    decoded_here = {"photo.jpg", "progressive.jpg", "gray.jpg", "rotated-6.jpg", "rotated-3.jpg"}
    decoded_here |= {"tiny-1x1.jpg"}
    for name in expected:
        status, _, _ = _runner.preprocess_file(str(folder / name), spec_dict(Preprocess(7, 13)))
        if name in decoded_here:
            assert status == "ok", name
        elif name.endswith((".png", ".webp", ".bmp")) or name in {"cmyk.jpg", "not-an-image.jpg"}:
            assert status == "fallback", name


def test_error_messages_say_what_is_wrong(hostile, tmp_path):
    folder, _ = hostile
    spec = spec_dict(Preprocess(224, 256))

    def message(name):
        status, text, _ = _runner.preprocess_file(str(folder / name), spec)
        assert status == "error"
        return text

    assert "truncated" in message("truncated.jpg")
    assert message("empty.jpg") == "empty file"
    huge = message("huge.jpg")
    assert f"{HUGE_SIZE[0]}x{HUGE_SIZE[1]}" in huge
    assert f"above the limit of {MAX_PIXELS} pixels" in huge
    assert _runner.preprocess_file(str(tmp_path / "missing.jpg"), spec) == (
        "error",
        "cannot read: No such file or directory",
        None,
    )
    assert _runner.preprocess_file(str(tmp_path), spec)[:2] == (
        "error",
        "cannot read: Is a directory",
    )
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_rgb(folder / "huge.jpg")
    with pytest.raises(ImageDecodeError, match="cannot identify"):
        decode_rgb(folder / "not-an-image.jpg")


def test_the_pixel_limit_comes_from_the_spec(hostile):
    folder, _ = hostile
    spec = spec_dict(Preprocess(32, 32)) | {"max_pixels": 320 * 240 - 1}
    status, message, _ = _runner.preprocess_file(str(folder / "photo.jpg"), spec)
    assert status == "error"
    assert "above the limit of 76799 pixels (max_pixels)" in message
    with pytest.raises(ImageDecodeError, match="above the limit of 76799 pixels"):
        decode_rgb(folder / "photo.bmp", max_pixels=76799)
    assert _runner.preprocess_file(str(folder / "photo.jpg"), spec | {"max_pixels": 76800})[0] == (
        "ok"
    )


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_like_pil_exif_transpose(tmp_path, orientation):
    photo = PHOTOS["temple-97x61"]  # not square: a wrong transpose changes the crop
    path = tmp_path / f"orientation-{orientation}.jpg"
    path.write_bytes(jpeg_bytes(photo, exif=orientation_exif(orientation)))
    preprocess = Preprocess(40, 48, "bicubic")
    status, _, tensor = _runner.preprocess_file(str(path), spec_dict(preprocess))
    assert status == "ok"
    assert max_difference(tensor, reference(path, preprocess)) <= BIT_EXACT
    unrotated = tmp_path / "unrotated.jpg"
    unrotated.write_bytes(jpeg_bytes(photo))
    _, _, upright = _runner.preprocess_file(str(unrotated), spec_dict(preprocess))
    assert (max_difference(tensor, upright) == 0) == (orientation == 1)


def test_xmp_orientation_counts_where_exif_has_none(tmp_path):
    path = tmp_path / "xmp.jpg"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    PHOTOS["temple-97x61"].save(path, "JPEG", quality=90, xmp=xmp)
    preprocess = Preprocess(40, 48)
    status, _, tensor = _runner.preprocess_file(str(path), spec_dict(preprocess))
    assert status == "ok"
    assert max_difference(tensor, reference(path, preprocess)) <= BIT_EXACT


def test_damaged_jpeg_bytes_never_crash_always_report_and_do_not_poison_the_thread(tmp_path):
    """Truncations and byte flips all over a JPEG with EXIF (headers, EXIF, scan data); after each
    one, a good JPEG still decodes to the same tensor on the same thread."""
    original = jpeg_bytes(PHOTOS["temple-97x61"], exif=orientation_exif(6))
    rng = random.Random(0)
    variants = [original[:cut] for cut in range(0, len(original), 37)]
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            at = (
                rng.randrange(min(len(data), 400))
                if rng.random() < 0.7
                else rng.randrange(len(data))
            )
            data[at] = rng.randrange(256)
        variants.append(bytes(data))
    spec = spec_dict(Preprocess(16, 20, "bicubic"))
    path = tmp_path / "damaged.jpg"
    good = tmp_path / "good.jpg"
    good.write_bytes(original)
    _, _, good_tensor = _runner.preprocess_file(str(good), spec)
    for data in variants:
        path.write_bytes(data)
        status, message, tensor = _runner.preprocess_file(str(path), spec)
        assert status in {"ok", "fallback", "error"}
        if status == "ok":
            assert tensor.shape == (3, 16, 16)
            assert np.isfinite(tensor).all()
        else:
            assert message
            assert tensor is None
        status, message, tensor = _runner.preprocess_file(str(good), spec)
        assert (status, message) == ("ok", "")
        assert np.array_equal(tensor, good_tensor)


def test_sixteen_bit_gray_is_scaled_to_eight_bits_not_clipped(hostile):
    folder, _ = hostile
    with Image.open(folder / "gray16.png") as image:
        assert image.mode.startswith("I;16")
        raw = np.asarray(image).astype(np.float64)
    assert raw.max() > 255
    rgb = decode_rgb(folder / "gray16.png")
    expected = np.rint(raw / 257).astype(np.uint8)
    assert rgb.dtype == np.uint8
    assert rgb.shape == (*raw.shape, 3)
    for channel in range(3):
        assert np.array_equal(rgb[:, :, channel], expected)


def test_threads_get_the_same_results_as_one_thread(hostile):
    folder, expected = hostile
    paths = [str(folder / name) for name in expected] * 4
    spec = spec_dict(Preprocess(32, 40, "bicubic"))
    serial = [_runner.preprocess_file(path, spec) for path in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda path: _runner.preprocess_file(path, spec), paths))
    for (status, message, tensor), (p_status, p_message, p_tensor) in zip(
        serial, parallel, strict=True
    ):
        assert (status, message) == (p_status, p_message)
        assert (tensor is None and p_tensor is None) or np.array_equal(tensor, p_tensor)


BAD_SPECS = [
    ({"crop_size": 0}, "crop_size"),
    ({"resize_size": -1}, "resize_size"),
    ({"crop_size": "224"}, "crop_size"),
    ({"interpolation": "lanczos"}, "interpolation"),
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"mean": [math.nan, 0.5, 0.5]}, "mean"),
    ({"std": [0.2, 0.0, 0.2]}, "std"),
    ({"output": "int8"}, "output"),
    ({"max_pixels": 0}, "max_pixels"),
]


@pytest.mark.parametrize(("change", "field"), BAD_SPECS)
def test_bad_spec_is_a_value_error_naming_the_field(tmp_path, change, field):
    spec = spec_dict(Preprocess(224, 256)) | change
    with pytest.raises(ValueError, match=field):
        _runner.preprocess_rgb(np.zeros((4, 4, 3), np.uint8), spec)
    with pytest.raises(ValueError, match=field):
        _runner.preprocess_file(str(tmp_path / "any.jpg"), spec)


def test_missing_spec_field_and_bad_pixel_arrays_are_value_errors():
    spec = spec_dict(Preprocess(224, 256))
    del spec["resize_size"]
    with pytest.raises(ValueError, match="resize_size"):
        _runner.preprocess_rgb(np.zeros((4, 4, 3), np.uint8), spec)
    with pytest.raises(ValueError, match="rgb"):
        _runner.preprocess_rgb(np.zeros((4, 4, 4), np.uint8), spec_dict(Preprocess(224, 256)))


def test_reference_path_sees_the_fallback_decoder_pixels(hostile):
    folder, _ = hostile
    image = open_rgb(folder / "gray16.png")
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), decode_rgb(folder / "gray16.png"))
