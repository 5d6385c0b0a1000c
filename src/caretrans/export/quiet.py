"""A command's own output: the converters' and runtimes' log lines kept out of it, its progress bars in it.

ExecuTorch, LiteRT's converter and interpreter, Core ML tools and torch.export write what their own
developers need to stderr: C++ logs (absl, cpuinfo, TensorFlow Lite), import-time notices, Python
warnings and progress bars of internal passes. A user of `caretrans export` needs the one report the
command prints. Within `quiet_libraries()` everything written to file descriptor 2 goes to a
temporary file instead, and the command's own progress bars write to the terminal (`terminal()`).
CARETRANS_VERBOSE=1 turns this off, to see what the libraries say.
"""
import contextlib
import os
import sys
import tempfile
from typing import Iterator, Optional, TextIO

__all__ = ['quiet_libraries', 'terminal', 'progress_bar', 'stage']

_terminal: Optional[TextIO] = None


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within the block, what is written to stderr (fd 2 by C++, sys.stderr by Python) is dropped, but for
    what goes through `terminal()`."""
    global _terminal
    if _terminal is not None or os.environ.get('CARETRANS_VERBOSE') == '1':
        yield
        return
    before = sys.stderr
    before.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        # The command's own output goes where stderr went: the real one (a copy of fd 2), or the stream that
        # stood in for it (a test's capture, a redirection inside Python).
        _terminal = open(os.dup(saved), 'w', buffering=1, encoding='utf-8', errors='replace') \
            if _on_fd2(before) else before
        sys.stderr = open(os.dup(2), 'w', buffering=1, encoding='utf-8', errors='replace')
        try:
            yield
        finally:
            sys.stderr.close()
            sys.stderr = before
            if _terminal is not before:
                _terminal.close()
            _terminal = None
            os.dup2(saved, 2)
            os.close(saved)


def _on_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.StringIO and pytest's capture have no descriptor
        return False


def terminal() -> TextIO:
    """Where the command's own progress goes: the real stderr, also inside `quiet_libraries()`."""
    return _terminal if _terminal is not None else sys.stderr


def progress_bar(total: int, desc: str, unit: str = 'step'):
    """A tqdm bar on the terminal over an export's steps (calibration images, lowering, checking, evaluation
    batches: minutes in all)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0, file=terminal())


@contextlib.contextmanager
def stage(bar, name: str):
    """One step of a progress bar (or of None): named while it runs, counted when done."""
    if bar is not None:
        bar.set_postfix_str(name)
    yield
    if bar is not None:
        bar.update()
