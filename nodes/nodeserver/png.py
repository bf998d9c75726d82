"""Real PNG files from the standard library alone (zlib, struct), for the simulator's images.

An image is a grid of 8 x 8 flat colour tiles whose colours come from a hash of
the seed (the prompt and the image's index), so the same request always gives
the same pixels. Rows repeat within a band of tiles, which keeps both building
the raw scanlines and deflating them cheap even at 1024x1792.
"""
from __future__ import annotations

import hashlib
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRID = 8


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, seed: bytes) -> bytes:
    """An 8-bit RGB PNG of ``width`` x ``height`` pixels, deterministic in ``seed``."""
    if not (1 <= width <= 8192 and 1 <= height <= 8192):
        raise ValueError("width and height must be between 1 and 8192")
    digest = hashlib.shake_256(seed).digest(GRID * GRID * 3)
    colours = [digest[i : i + 3] for i in range(0, len(digest), 3)]
    cuts = [x * width // GRID for x in range(GRID + 1)]
    bands = []
    for band in range(GRID):
        row = b"".join(colours[band * GRID + t] * (cuts[t + 1] - cuts[t]) for t in range(GRID))
        bands.append(b"\x00" + row)  # filter type 0 (None) before every scanline
    raw = b"".join(bands[y * GRID // height] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """Check a PNG made like ours (signature, chunk CRCs, one 8-bit RGB image whose
    scanlines inflate to the right length); return its width, height and raw scanlines."""
    if not data.startswith(SIGNATURE):
        raise ValueError("not a PNG: bad signature")
    pos, width, height, idat, seen_end = len(SIGNATURE), None, None, b"", False
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"bad CRC on chunk {kind!r}")
        if kind == b"IHDR":
            width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", body)
            if (depth, colour) != (8, 2):
                raise ValueError("not an 8-bit RGB PNG")
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            seen_end = True
        pos += 12 + length
    if width is None or not seen_end:
        raise ValueError("PNG without IHDR or IEND")
    raw = zlib.decompress(idat)
    if len(raw) != height * (1 + 3 * width):
        raise ValueError("scanlines do not match the image size")
    return width, height, raw
