"""Class names of dense data in the model's output order, and one colour per class for drawing."""
import colorsys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Sequence, Tuple

from .data import DataError

if TYPE_CHECKING:
    from pycocotools.coco import COCO

__all__ = ['BACKGROUND', 'ADE_CLASS_FILE', 'ade_class_names', 'read_ade_class_file', 'coco_label_names', 'colour']

BACKGROUND = '__background__'  # detection's label 0, as torchvision's weights.meta["categories"]
# ADEChallengeData2016's class list: a header, then Idx, Ratio, Train, Val, Name (tab-separated; the name's
# synonyms separated by ', ', e.g. "building, edifice"). Idx is the value in the label maps.
ADE_CLASS_FILE = 'objectInfo150.txt'


def read_ade_class_file(path: Path) -> Dict[int, str]:
    """Label value -> the first of its names, from an ADE20K `objectInfo150.txt`."""
    names = {}
    for number, line in enumerate(Path(path).read_text(encoding='utf-8').splitlines()[1:], start=2):
        if not line.strip():
            continue
        columns = line.split('\t') if '\t' in line else line.split(maxsplit=4)
        try:
            value = int(columns[0])
            name = columns[-1].split(',')[0].split(';')[0].strip()
        except (ValueError, IndexError):
            value, name = None, ''
        if len(columns) < 2 or value is None or not name:
            raise DataError(f'{path}, line {number}: expected "Idx Ratio Train Val Name", got {line!r:.80}')
        names[value] = name
    return names


def ade_class_names(root, num_classes: int, reduce_zero_label: bool) -> Tuple[str, ...]:
    """The names of classes 0..num_classes-1: the data's `objectInfo150.txt` where it names them, else 'class_N'.

    With `reduce_zero_label` class c is label value c + 1 (value 0, "other", is ignored)."""
    path = Path(root) / ADE_CLASS_FILE
    named = read_ade_class_file(path) if path.is_file() else {}
    return _unique(named.get(c + int(reduce_zero_label), f'class_{c}') for c in range(num_classes))


def coco_label_names(coco: 'COCO', category_ids: Sequence[int]) -> Tuple[str, ...]:
    """'__background__' then the names of `category_ids` (labels 1..K); names are how labels are matched,
    so two categories of one name are refused."""
    names = [str(coco.cats[c]['name']) for c in category_ids]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        ids = {n: [c for c, m in zip(category_ids, names) if m == n] for n in repeated}
        raise DataError('categories share a name, so their labels cannot be told apart: '
                        + '; '.join(f'{n!r} (ids {", ".join(map(str, i))})' for n, i in ids.items()))
    if BACKGROUND in names:
        raise DataError(f'a category is named {BACKGROUND!r}, the name of the background label 0')
    return (BACKGROUND,) + tuple(names)


def _unique(names) -> Tuple[str, ...]:
    """Names made distinct: a repeated one gets its class index ('bed', 'bed (class_7)')."""
    out = []
    for i, name in enumerate(names):
        out.append(name if name not in out else f'{name} (class_{i})')
    return tuple(out)


def colour(index: int) -> Tuple[int, int, int]:
    """A distinct, saturated colour per class index: hues a golden-ratio step apart."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 0.95 if index % 2 else 0.75)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))
