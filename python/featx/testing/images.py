"""Image files for tests and benchmarks of the image pipeline, built from real photos.

`parity_photos` are the photos (and odd-sized crops and rescales of them) on which the C++
preprocessing is compared with the PIL/torchvision reference; `write_hostile_set` writes the
files a production pipeline meets: every format, broken files, EXIF rotations, decompression bombs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from featx.data.photos import sample_photos

# Declared size of the decompression bomb: 2e8 pixels, above featx's and PIL's limit.
HUGE_SIZE = (20000, 10000)


def parity_photos() -> dict[str, Image.Image]:
    """Real photos at the sizes that stress the resize: odd, portrait, landscape, tall, tiny."""
    temple, flower = sample_photos()
    return {
        "temple-640x427": temple,
        "flower-640x427": flower,
        "temple-500x375": temple.crop((70, 20, 570, 395)),
        "flower-333x500": flower.crop((150, 0, 434, 427)).resize((333, 500), Image.BICUBIC),
        "temple-97x61": temple.crop((300, 150, 397, 211)),
        "flower-61x97": flower.crop((290, 160, 351, 257)),
        # Tall: Pillow runs the vertical pass first when the height shrinks far more than the width.
        "temple-60x400": temple.crop((200, 10, 260, 410)),
        "flower-640x50": flower.crop((0, 200, 640, 250)),
    }


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **{"quality": 90, **options})
    return buffer.getvalue()


def orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    return exif.tobytes()


def _with_frame_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with the size in its SOF0 header replaced; the scan data is left as it was."""
    data = bytearray(jpeg)
    at = 2
    while at + 4 <= len(data):
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xC0:
            data[at + 5 : at + 7] = height.to_bytes(2, "big")
            data[at + 7 : at + 9] = width.to_bytes(2, "big")
            return bytes(data)
        at += 2 + length
    raise ValueError("no SOF0 segment in the JPEG")


def _with_junk_after_first_segment(jpeg: bytes) -> bytes:
    """Three stray bytes between two header segments: libjpeg warns ("extraneous bytes before
    marker"), PIL decodes the image anyway."""
    end = 4 + int.from_bytes(jpeg[4:6], "big")  # SOI, then the first segment (JFIF APP0)
    return jpeg[:end] + b"\x00\x01\x02" + jpeg[end:]


def hostile_set_photos() -> tuple[Image.Image, Image.Image]:
    """The two photos the hostile set is made of: a 320x240 landscape and a 180x240 portrait,
    cropped from scikit-learn's sample photos."""
    temple, flower = sample_photos()
    return temple.crop((100, 60, 420, 300)), flower.crop((200, 40, 380, 280))


def write_hostile_set(
    folder: str | Path, photos: tuple[Image.Image, Image.Image] | None = None
) -> dict[str, bool]:
    """Writes the hostile image set into `folder`, made of ``photos`` (a landscape and a
    portrait RGB image; default `hostile_set_photos()`).

    Returns file name -> whether a correct pipeline must extract it (True) or report it as an
    error (False). Every file is small (the bomb only declares its size), so writing is fast.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photo, portrait = photos or hostile_set_photos()
    luma = np.asarray(photo.convert("L"), dtype=np.int32)
    # 16 bits with real content: luma * 257 plus a ramp, so values need rounding, not clipping.
    ramp = (np.arange(luma.size).reshape(luma.shape) % 257) - 128
    gray16 = np.clip(luma * 257 + ramp, 0, 65535).astype(np.uint16)
    alpha = Image.linear_gradient("L").resize(photo.size)
    photo_jpeg = jpeg_bytes(photo)

    files: dict[str, tuple[bytes | None, bool]] = {
        "photo.jpg": (photo_jpeg, True),
        "progressive.jpg": (jpeg_bytes(portrait, progressive=True, subsampling=0), True),
        "gray.jpg": (jpeg_bytes(photo.convert("L")), True),
        "cmyk.jpg": (jpeg_bytes(photo.convert("CMYK")), True),
        "rotated-6.jpg": (jpeg_bytes(portrait, exif=orientation_exif(6)), True),
        "rotated-3.jpg": (jpeg_bytes(photo, exif=orientation_exif(3)), True),
        "tiny-1x1.jpg": (jpeg_bytes(photo.resize((1, 1))), True),
        "junk-before-marker.jpg": (_with_junk_after_first_segment(photo_jpeg), True),
        "truncated.jpg": (photo_jpeg[: len(photo_jpeg) // 2], False),
        "empty.jpg": (b"", False),
        "not-an-image.jpg": (b"This is a text file with a .jpg name.\n", False),
        "huge.jpg": (_with_frame_size(jpeg_bytes(photo.resize((20, 10))), *HUGE_SIZE), False),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)

    pil_written = {
        "gray16.png": (Image.fromarray(gray16), {}),
        "rgba.png": (Image.merge("RGBA", (*photo.split(), alpha)), {}),
        "palette.png": (photo.convert("P", palette=Image.Palette.ADAPTIVE), {}),
        "photo.webp": (photo, {"quality": 90}),
        "photo.bmp": (photo, {}),
    }
    for name, (image, options) in pil_written.items():
        image.save(folder / name, **options)

    return {name: good for name, (_, good) in files.items()} | dict.fromkeys(pil_written, True)
