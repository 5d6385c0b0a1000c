"""Hostile image files for the data tests: truncated files and decompression bombs, a few KB each."""
import struct
import zlib

import numpy as np
from PIL import Image


def truncated_png(path):
    """A PNG whose header opens but whose pixels end half way: it fails only when decoded."""
    noise = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    path.write_bytes(path.read_bytes()[:1500])
    return path


def png_claiming(path, width, height, decodable=True):
    """A 1-bit PNG of width x height: all-zero rows compressed to a few KB (a decompression bomb),
    or with `decodable=False` a valid header and a token IDAT (refusable from the header alone)."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    rows = zlib.compress(b'\0' * ((width + 7) // 8 + 1) * height, 9) if decodable else zlib.compress(b'\0')
    header = struct.pack('>IIBBBBB', width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', rows) + chunk(b'IEND', b''))
    return path
