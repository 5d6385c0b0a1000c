"""Stopping a run cleanly on SIGTERM or SIGINT, what it prints, and the exit status it ends with."""
import signal
from typing import Optional

__all__ = ['GracefulStop', 'stop_notice', 'run_exit_code']


class GracefulStop:
    """Within `with GracefulStop() as stop:`, SIGTERM and SIGINT set `stop.requested` (and `stop.signal`)
    instead of killing the process, so a loop can finish its step and save; a second SIGINT raises
    KeyboardInterrupt. Handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the step to end
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


def stop_notice(stop: GracefulStop, epoch: int, batch: int, resume: str) -> str:
    """What a run stopped by a signal prints: where it stopped and how to continue it."""
    return (f'stopped by {stop.signal or "a signal on another rank"} at epoch {epoch}, batch {batch}; '
            f'resume with {resume}')


def run_exit_code(status: str) -> int:
    """A training command's exit status: 0 when the run finished (or had already); when a signal stopped
    it (after saving), the shell's 128 + signal number: 143 for SIGTERM, 130 for SIGINT (or another
    rank's signal)."""
    return {'finished': 0, 'already finished': 0, 'SIGTERM': 143}.get(status, 130)
