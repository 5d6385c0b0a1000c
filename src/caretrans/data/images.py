"""Opening image files: one pixel and shape limit, one error for unreadable files, and one conversion of
every PIL mode to RGB or L by the range of its values."""
import contextlib
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image

__all__ = ['MAX_IMAGE_PIXELS', 'MAX_ASPECT_RATIO', 'IMAGE_MODES', 'SINGLE_CHANNEL_MODES', 'UnreadableImageError',
           'ImageHeader', 'image_header', 'image_size', 'read_image', 'convert_image', 'mode_channels',
           'original_message']

# The most pixels an image file may claim: 100 MP, 300 MB once decoded to RGB. ImageNet, COCO and
# ADE20K images are far smaller; a file claiming more is refused from its header, before it is
# decoded (a decompression bomb: a few KB that inflate to GBs). PIL reads this limit; it warns
# above it, which _reading turns into an error, and raises above twice it.
MAX_IMAGE_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# The longest side may be at most this many times the shortest. Transforms resize the shorter side to
# the input size, so the resized image grows with the ratio: a 1x20000 strip (60 KB) would become
# 256 x 5.1 M pixels (4 GB) in timm's evaluation transform. Panoramas stay within 32:1; a detector's
# 1333-px longer side still leaves 41 px to the shorter one, more than the network's stride of 32.
MAX_ASPECT_RATIO = 32

# The modes read as one channel (L); any other mode PIL opens files in is colour (RGB).
SINGLE_CHANNEL_MODES = frozenset({'1', 'L', 'LA', 'La', 'I', 'F', 'I;16', 'I;16L', 'I;16B', 'I;16N'})
IMAGE_MODES = SINGLE_CHANNEL_MODES | {'P', 'PA', 'RGB', 'RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr', 'LAB', 'HSV'}
# The 16-bit modes (and I, 32-bit integers, as which older Pillows decode 16-bit PNGs): 0..65535.
_INT_MODES = frozenset({'I', 'I;16', 'I;16L', 'I;16B', 'I;16N'})
# A float image (F) is read as 0..1; one with more of its pixels outside that is on another scale.
_FLOAT_OUTSIDE_LIMIT = 0.01


class UnreadableImageError(ValueError):
    """An image file that does not exist, cannot be decoded, or is refused (too many pixels, too long
    and thin, a mode or range that cannot be read as RGB or L); the message names it."""

    def __init__(self, message: str = ''):
        super().__init__(original_message(message, type(self)))


def original_message(message: str, error: type) -> str:
    """The message of an `error` raised in a DataLoader worker, which torch re-raises in the main process
    with "Caught <error> in DataLoader worker process N. Original Traceback ..." (the worker's whole
    stack) as its message; any other message as it is. Data errors take their message through this, so
    that a bad file in a worker reads as one line, as it does without workers."""
    if not (isinstance(message, str) and message.startswith('Caught ') and '\nOriginal Traceback' in message):
        return message
    # The stack ends with "package.module.Error: the message"; the last such line is the error's own
    # (an exception it was raised from comes earlier).
    head = f'{error.__module__}.{error.__qualname__}: '
    start = message.rfind('\n' + head)
    return message[start + 1 + len(head):].rstrip('\n') if start >= 0 else message


class ImageHeader(NamedTuple):
    size: Tuple[int, int]  # (width, height)
    mode: str              # PIL's mode, e.g. 'RGB', 'L', 'I;16'


@contextlib.contextmanager
def _reading(path) -> Iterator[None]:
    """Turn what PIL raises for a bad file into an UnreadableImageError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            yield
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError(f'image {path} does not exist') from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImageError(f'image {path} refused: {e}') from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # UnidentifiedImageError is an OSError
        raise UnreadableImageError(f'image {path} cannot be read: {e}') from e


def _check_header(img: Image.Image, path) -> ImageHeader:
    """Refuse, from the header, a shape the transforms cannot afford or a mode that is not read as RGB or L."""
    width, height = img.size
    if min(width, height) < 1:
        raise UnreadableImageError(f'image {path} is {width}x{height}: it holds no pixels')
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise UnreadableImageError(
            f'image {path} refused: it is {width}x{height}, and images whose longer side exceeds '
            f'{MAX_ASPECT_RATIO} times the shorter are refused (resizing the shorter side to the input size '
            f'would make it {max(width, height) // min(width, height)} times as long)')
    if img.mode not in IMAGE_MODES:
        raise UnreadableImageError(f'image {path} refused: PIL mode {img.mode} is not one read as RGB or L')
    return ImageHeader((width, height), img.mode)


def image_header(path: Path) -> ImageHeader:
    """Size and mode from the file's header alone: cheap, and refuses what cannot be opened or read."""
    with _reading(path), Image.open(path) as img:
        return _check_header(img, path)


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the file's header alone (see `image_header`)."""
    return image_header(path).size


def mode_channels(mode: str) -> int:
    """The channels a PIL mode is read as: 1 (L) or 3 (RGB)."""
    return 1 if mode in SINGLE_CHANNEL_MODES else 3


def read_image(path: Path, mode: Optional[str] = 'RGB') -> Image.Image:
    """Decode an image fully (so that a truncated file fails here), converted to `mode` ('RGB' or 'L', by
    `convert_image`) if given; with `mode=None` the pixels as stored (e.g. a label map's class indices)."""
    with _reading(path), Image.open(path) as img:
        _check_header(img, path)
        img.load()
        return convert_image(img, mode, path) if mode else img.copy()


def convert_image(image: Image.Image, mode: str = 'RGB', source=None) -> Image.Image:
    """`image` as RGB or L by the range of its values: 16-bit integers (I;16*, and I within 0..65535)
    scaled to 8 bits, floats (F) read as 0..1 and clipped; palettes (with their transparency),
    alpha (dropped), CMYK, YCbCr, LAB and HSV as PIL converts them. PIL's own convert would saturate
    16-bit images to white and floats to black. A float image with more than 1 % of its pixels outside
    0..1, an integer image outside 0..65535 or non-finite pixels are refused (UnreadableImageError
    naming `source`)."""
    if mode not in ('RGB', 'L'):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if image.mode == mode:
        return image
    source = source if source is not None else 'image'
    if image.mode in _INT_MODES or image.mode == 'F':
        image = Image.fromarray(_to_uint8(np.asarray(image), image.mode, source), 'L')
    elif image.mode == 'La':  # premultiplied alpha: PIL converts it to LA only
        image = image.convert('LA')
    elif image.mode == 'P' and 'transparency' in image.info:  # PIL asks for RGBA first (it warns otherwise)
        image = image.convert('RGBA')
    if mode == 'L' and image.mode not in SINGLE_CHANNEL_MODES:  # e.g. LAB: PIL converts it to RGB only
        image = image.convert('RGB')
    try:
        return image.convert(mode)
    except ValueError as e:
        raise UnreadableImageError(f'{source}: PIL cannot convert mode {image.mode} to {mode}: {e}') from None


def _to_uint8(pixels: np.ndarray, mode: str, source) -> np.ndarray:
    """16-bit (or I) pixels scaled from 0..65535, or float pixels clipped from 0..1, to 0..255."""
    if mode == 'F':
        if not np.isfinite(pixels).all():
            raise UnreadableImageError(f'{source} refused: its float pixels include NaN or infinity')
        outside = np.count_nonzero((pixels < 0) | (pixels > 1)) / max(pixels.size, 1)
        if outside > _FLOAT_OUTSIDE_LIMIT:
            raise UnreadableImageError(
                f'{source} refused: float images are read as 0..1, but {100 * outside:.0f} % of its pixels lie '
                f'outside (range {pixels.min():g}..{pixels.max():g}); save it as 8 or 16 bits, or scaled to 0..1')
        return np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    low, high = int(pixels.min()), int(pixels.max())
    if low < 0 or high > 65535:
        raise UnreadableImageError(f'{source} refused: its integer pixels range {low}..{high}, beyond the 16-bit '
                                   '0..65535 read as 0..255')
    return np.round(pixels.astype(np.float32) / 257).astype(np.uint8)  # 65535 / 255 = 257

