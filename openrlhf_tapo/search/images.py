"""Image helpers shared by the index, the HTTP service and the web clients: safe decoding, encoding, and the
perceptual hashes the local image index searches with (implemented here with PIL + numpy; no extra package).

All functions are synchronous and CPU-bound: call them through `workers.run_cpu` from async code.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image

from openrlhf_tapo.search.base import SearchBadImage

# Formats accepted from requests, corpora and web thumbnails. Anything else (SVG, PDF, EPS, ...) is refused:
# some PIL plugins are large attack surfaces (EPS runs Ghostscript) and none is needed here.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")

HASH_SIZE = 8  # 8x8 = 64 bits per hash


def looks_like_image_bytes(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def decode_base64_image(text: str) -> bytes | None:
    """The bytes of a base64 (or `data:image/...;base64,`) encoded image, or None when `text` is not one."""
    if text.startswith("data:image/") and ";base64," in text:
        text = text.split(";base64,", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if looks_like_image_bytes(data) else None


def decode_image(data: bytes, *, max_pixels: int = 40_000_000, max_bytes: int = 32 << 20) -> Image.Image:
    """Decode encoded image bytes into an RGB image, refusing other formats, oversized inputs and bombs.

    The size check runs on the header before any pixel is decoded, so a decompression bomb costs nothing."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SearchBadImage(f"image must be encoded bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise SearchBadImage(f"image is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise SearchBadImage(f"image is {width}x{height} pixels, over the {max_pixels}-pixel limit")
            image.load()
    except SearchBadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise SearchBadImage(f"image refused as a decompression bomb: {err}") from None
    except Exception as err:  # PIL raises many types for corrupt data (OSError, SyntaxError, ValueError, ...)
        raise SearchBadImage(f"cannot decode image ({type(err).__name__}: {err})") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def encode_image(image: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        to_rgb(image).save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format=fmt)
    return buf.getvalue()


def thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    """A copy no larger than max_side on either side (aspect kept); the image itself when already small."""
    if max(image.size) <= max_side:
        return image
    out = image.copy()
    out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return out


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    mat = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    mat[0] /= np.sqrt(2.0)
    return mat


_DCT32 = _dct_matrix(32)
_BIT_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def _pack_bits(bits: np.ndarray) -> int:
    return int(np.bitwise_or.reduce(bits.reshape(-1).astype(np.uint64) * _BIT_WEIGHTS))


def perceptual_hashes(image: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) of an image, 64 bits each.

    pHash: 32x32 greyscale, 2-D DCT, the 8x8 lowest frequencies compared with their median (DC excluded from
    the median). dHash: 9x8 greyscale, each pixel compared with its right neighbour. Together they tolerate
    rescaling, recompression and mild colour changes; the Hamming distance of the pair ranks neighbours."""
    grey = image.convert("L")
    small = np.asarray(grey.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    freq = (_DCT32 @ small @ _DCT32.T)[:HASH_SIZE, :HASH_SIZE]
    median = np.median(freq.reshape(-1)[1:])
    phash = _pack_bits(freq > median)
    tiny = np.asarray(grey.resize((HASH_SIZE + 1, HASH_SIZE), Image.Resampling.LANCZOS), dtype=np.int16)
    dhash = _pack_bits(tiny[:, 1:] > tiny[:, :-1])
    return phash, dhash


def hamming_distances(hashes: np.ndarray, query: tuple[int, int]) -> np.ndarray:
    """Hamming distance (0..128) between every row of an (N, 2) uint64 hash array and the query pair."""
    q = np.array(query, dtype=np.uint64)
    return np.bitwise_count(hashes ^ q).sum(axis=1, dtype=np.int64)
