"""Stopping a run cleanly on SIGTERM or SIGINT, what it prints, and the exit status it ends with."""
import contextlib
import os
import signal
import sys
from typing import Iterator, Optional

__all__ = ['GracefulStop', 'Terminated', 'signals_as_exceptions', 'stop_notice', 'run_exit_code']


class GracefulStop:
    """Within `with GracefulStop() as stop:`, SIGTERM and SIGINT set `stop.requested` (and `stop.signal`)
    instead of killing the process, so a loop can finish its step and save. Later signals change nothing:
    interrupting the save would lose the run (a terminal's Ctrl-C reaches every process of its group, and
    an impatient second one comes soon after), so the process says once that it is saving, and does.
    DataLoader workers forked inside the block inherit the handler and stay quiet. Handlers are restored
    on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal: Optional[str] = None
        self._previous = {}
        self._owner = os.getpid()
        self._told = False

    def _handle(self, signum, frame):
        if os.getpid() != self._owner:  # a forked worker: its parent stops the run
            return
        if self.requested:
            if not self._told:
                self._told = True
                print(f'{signal.Signals(signum).name} again: finishing the step and saving the run, then exiting',
                      file=sys.stderr, flush=True)
            return
        self.requested = True
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> 'GracefulStop':
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


class Terminated(Exception):
    """SIGTERM, raised where the process was (as KeyboardInterrupt is for SIGINT)."""


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt and SIGTERM raises Terminated in this process,
    and both are ignored by processes forked from it (DataLoader workers): a Ctrl-C that reaches the
    whole process group ends the command once, in its own process, where the caller reports it."""
    owner = os.getpid()

    def handle(signum, frame):
        if os.getpid() != owner:
            return
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()

    try:
        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay with their owner
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_notice(stop: GracefulStop, epoch: int, batch: int, resume: str) -> str:
    """What a run stopped by a signal prints: where it stopped (`epoch` epochs done, `batch` batches into the
    next) and how to continue it."""
    where = f'in epoch {epoch + 1}, after batch {batch}' if batch else f'after epoch {epoch}'
    return f'stopped by {stop.signal or "a signal on another rank"} {where}; resume with {resume}'


def run_exit_code(status: str) -> int:
    """A training command's exit status: 0 when the run finished (or had already); when a signal stopped
    it (after saving), the shell's 128 + signal number: 143 for SIGTERM, 130 for SIGINT (or another
    rank's signal)."""
    return {'finished': 0, 'already finished': 0, 'SIGTERM': 143}.get(status, 130)
