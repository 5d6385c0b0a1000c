"""Opening image files: one pixel limit against decompression bombs, one error for unreadable files."""
import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Optional, Tuple

from PIL import Image

__all__ = ['MAX_IMAGE_PIXELS', 'UnreadableImageError', 'image_size', 'read_image']

# The most pixels an image file may claim: 100 MP, 300 MB once decoded to RGB. ImageNet, COCO and
# ADE20K images are far smaller; a file claiming more is refused from its header, before it is
# decoded (a decompression bomb: a few KB that inflate to GBs). PIL reads this limit; it warns
# above it, which _reading turns into an error, and raises above twice it.
MAX_IMAGE_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class UnreadableImageError(ValueError):
    """An image file that does not exist, cannot be decoded or claims too many pixels; the message names it."""


@contextlib.contextmanager
def _reading(path) -> Iterator[None]:
    """Turn what PIL raises for a bad file into an UnreadableImageError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            yield
    except FileNotFoundError:
        raise UnreadableImageError(f'image {path} does not exist') from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImageError(f'image {path} refused: {e}') from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # UnidentifiedImageError is an OSError
        raise UnreadableImageError(f'image {path} cannot be read: {e}') from e


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the file's header alone: cheap, and refuses what cannot be opened or is too large."""
    with _reading(path), Image.open(path) as img:
        return img.size


def read_image(path: Path, mode: Optional[str] = 'RGB') -> Image.Image:
    """Decode an image fully (so that a truncated file fails here), converted to `mode` if given."""
    with _reading(path), Image.open(path) as img:
        img.load()
        return img.convert(mode) if mode else img.copy()
