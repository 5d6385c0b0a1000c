"""The package's layout: no import cycles between caretrans modules, and no room imports from a room above it."""
import ast
from pathlib import Path
from typing import Dict, List, Set


SRC = Path(__file__).resolve().parents[1] / 'src'
# The package and the `caretrans` command's entry point (docs/architecture.md, "Package layout").
PACKAGES = ('caretrans', 'caretrans_command')


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph() -> Dict[str, Set[str]]:
    """caretrans (and caretrans_command) module -> the modules of ours it imports, at the top or inside functions
    alike.

    `from package import name` points at the submodule when `name` is one, else at the package.
    """
    paths = {_module_name(p): p for package in PACKAGES for p in (SRC / package).rglob('*.py')}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parent = package.split('.')[:len(package.split('.')) - node.level + 1]
                    base = '.'.join(parent + ([node.module] if node.module else []))
                targets |= {f'{base}.{a.name}' if f'{base}.{a.name}' in paths else base for a in node.names}
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per back edge of a depth-first walk: empty exactly when the graph is acyclic."""
    state, path, cycles = {}, [], []

    def visit(node):
        state[node] = 'open'
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 'done'

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _importers(graph, room: str, outside: str = '') -> List[str]:
    """Modules (outside `outside`, if given) that import anything of `room`."""
    return sorted(m for m, targets in graph.items()
                  if not (outside and (m == outside or m.startswith(outside + '.')))
                  and any(t == room or t.startswith(room + '.') for t in targets))


def test_the_cycle_finder_finds_cycles():
    assert find_cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c', 'a']]
    assert find_cycles({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) == []


def test_no_import_cycles_between_caretrans_modules():
    graph = import_graph()
    assert {'caretrans.models.care', 'caretrans.models.checkpoint', 'caretrans.cli.export'} <= set(graph)
    assert 'caretrans.models.checkpoint' in graph['caretrans.models.care']
    assert find_cycles(graph) == []


def test_only_the_command_line_imports_cli():
    assert _importers(import_graph(), 'caretrans.cli', outside='caretrans.cli') == [
        'caretrans.__main__', 'caretrans_command']


def test_the_command_entry_point_imports_the_command_line_only():
    """caretrans_command runs before caretrans is imported (its --help loads no torch): it starts caretrans.cli,
    and nothing of the package depends on it."""
    graph = import_graph()
    assert graph['caretrans_command'] == {'caretrans.cli'}
    assert graph['caretrans_command.__main__'] == {'caretrans_command'}
    assert _importers(graph, 'caretrans_command', outside='caretrans_command') == []


def test_only_the_command_line_imports_the_benchmarks():
    importers = _importers(import_graph(), 'caretrans.bench', outside='caretrans.bench')
    assert importers and all(m.startswith('caretrans.cli.') for m in importers), importers


# What each room may import (docs/architecture.md, "Package layout"): lower rooms only.
ROOM_IMPORTS = {
    'limits': set(), 'lazy': set(), 'kernels': set(), 'data': set(),
    'models': {'kernels', 'limits'},
    'export': {'models', 'data', 'limits'},
    'bench': {'models', 'export', 'limits'},
    'runtime': {'models', 'data', 'lazy'},
    'train': {'runtime', 'data', 'models', 'limits'},
    'dense': {'runtime', 'data', 'models', 'limits', 'lazy'},
    'inference': {'models', 'data', 'limits', 'dense'},
}


def _room(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_each_room_imports_only_the_rooms_below_it():
    graph = import_graph()
    found = {}
    for module, targets in graph.items():
        room = _room(module)
        if room in ROOM_IMPORTS:
            found.setdefault(room, set()).update(_room(t) for t in targets if _room(t) not in ('', room))
    upward = {room: sorted(rooms - ROOM_IMPORTS[room]) for room, rooms in found.items() if rooms - ROOM_IMPORTS[room]}
    assert upward == {}
    assert found['train'] >= {'runtime', 'models'} and found['dense'] >= {'runtime', 'models'}
