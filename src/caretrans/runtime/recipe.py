"""The recipe base: a dataclass of checked fields, its YAML round trip, and reading presets or YAML files."""
import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

__all__ = ['RecipeFields', 'read_recipe_file', 'read_recipe']


class RecipeFields:
    """Plain-dict / YAML round trip of a recipe dataclass (tuples are lists in YAML), and one check of
    every value against its field's type and the bounds in its metadata (min/max inclusive,
    above/below exclusive, choices; ordered: a (low, high) pair), on construction and on
    `dataclasses.replace`, so that presets, YAML files and flags are checked alike."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_field(f.name, getattr(self, f.name), hints[f.name], f.metadata)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path) -> Path:
        """Write the recipe as YAML (what `read_recipe` reads back)."""
        path = Path(path)
        path.write_text(self.to_yaml())
        return path

    def with_absolute_paths(self, base: Optional[str] = None):
        """This recipe with each path field (metadata `path`) that names an existing file or folder made
        absolute against `base` (default: the working directory); other values, e.g. 'fashion-mnist', stay."""
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get('path') and isinstance(value, str) and value and not os.path.isabs(value):
                candidate = os.path.join(base or os.getcwd(), value)
                if os.path.exists(candidate):
                    changes[f.name] = os.path.normpath(candidate)
        return dataclasses.replace(self, **changes) if changes else self

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def check_values(cls, values: Dict[str, Any], source: str, names: Iterable[str]):
        """Check the fields `names` of a recorded recipe's `values` (those present) as the recipe would,
        the ValueError naming `source`: for readers of a few fields of a recipe written elsewhere."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in names:
            if name in values:
                value = values[name]
                try:
                    _check_field(name, tuple(value) if isinstance(value, list) else value, hints[name],
                                 fields[name].metadata)
                except ValueError as e:
                    raise ValueError(f'{source}: {e}') from None

    @classmethod
    def from_dict(cls, values: Dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(values) - names)
        if unknown:
            raise ValueError(f'unknown recipe field(s): {", ".join(unknown)}')
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _check_field(name: str, value: Any, annotation: Any, bounds: Dict[str, Any]):
    """Raise a ValueError naming the field, its value and what it expects, unless `value` fits."""
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        if value is None:
            return
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        kind, length = args[0], None if args[-1] is Ellipsis else len(args)
        fits = (isinstance(value, tuple) and len(value) == (length or len(value)) > 0
                and all(_fits(v, kind, bounds) for v in value)
                and not (bounds.get('ordered') and list(value) != sorted(value)))
        expected = ' '.join([f'a list of {length}' if length else 'a non-empty list of',
                             _expected(kind, bounds, plural=True)]) + (', low to high' if bounds.get('ordered') else '')
    else:
        kind = annotation
        fits, expected = _fits(value, kind, bounds), _expected(kind, bounds)
    if not fits:
        raise ValueError(f'recipe field {name}: {_show(value)} is not valid; expected {expected}'
                         + _yaml_hint(value, kind))


def _fits(value: Any, kind: type, bounds: Dict[str, Any]) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
    elif not isinstance(value, kind):
        return False
    return (('min' not in bounds or value >= bounds['min']) and ('max' not in bounds or value <= bounds['max'])
            and ('above' not in bounds or value > bounds['above'])
            and ('below' not in bounds or value < bounds['below'])
            and ('choices' not in bounds or value in bounds['choices']))


def _expected(kind: type, bounds: Dict[str, Any], plural: bool = False) -> str:
    """'an integer >= 1', 'numbers >= 0 and <= 1', "one of 'det', 'seg'"."""
    if 'choices' in bounds:
        return 'one of ' + ', '.join(repr(c) for c in bounds['choices'])
    nouns = {bool: ('true or false', 'booleans'), int: ('an integer', 'integers'), float: ('a number', 'numbers'),
             str: ('a string', 'strings')}
    limits = [f'{op} {bounds[key]}' for key, op in (('min', '>='), ('above', '>'), ('max', '<='), ('below', '<'))
              if key in bounds]
    return ' '.join([nouns[kind][plural]] + [' and '.join(limits)] * bool(limits))


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _yaml_hint(value: Any, kind: type) -> str:
    """YAML 1.1 reads `1e-3` as text: say so when a number was meant."""
    try:
        is_number_text = kind is float and isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        is_number_text = False
    return f' (YAML reads {value} as text: write it with a decimal point, e.g. 1.0e-3)' if is_number_text else ''


def read_recipe_file(path) -> Dict[str, Any]:
    """The mapping of a recipe YAML file; a ValueError naming the file if it cannot be read, is not text
    (e.g. a checkpoint given by mistake), is not valid YAML or does not hold a mapping of field names."""
    path = Path(path)
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError:
        raise ValueError(f'recipe {path} is not a text file (a YAML mapping of recipe fields was expected)') from None
    except OSError as e:
        raise ValueError(f'recipe {path} cannot be read: {e.strerror or e}') from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' (line {mark.line + 1}, column {mark.column + 1})' if mark is not None else ''
        raise ValueError(f'{path} is not valid YAML: {getattr(e, "problem", None) or e}{where}') from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise ValueError(f'{path} does not hold a mapping of recipe fields (field: value, one a line)')
    return values


def read_recipe(source: str, presets: Dict[str, Dict[str, Any]], recipe_cls, defaults: Optional[Dict[str, Any]] = None):
    """A preset by name or a YAML file (e.g. the recipe.yaml saved beside a run), as `recipe_cls`;
    `defaults` fill the fields a YAML file leaves out. A bad file or value is a ValueError naming the file."""
    if source in presets:
        return recipe_cls(**presets[source])
    path = Path(source)
    if not path.is_file():
        raise ValueError(f'recipe {source!r} is neither a preset ({", ".join(presets)}) nor a YAML file')
    values = read_recipe_file(path)
    try:
        return recipe_cls.from_dict({**(defaults or {}), **values})
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from None
