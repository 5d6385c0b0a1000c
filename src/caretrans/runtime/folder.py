"""The run folder: created and checked writable before any work, and locked for one run at a time."""
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Optional

__all__ = ['RunFolder', 'RunFolderError', 'LOCK_FILE']

LOCK_FILE = '.lock'  # holds the pid of the run that has the folder; the lock itself is an fcntl lock on it


class RunFolderError(ValueError):
    """A run folder that cannot be created or written, or that another run is using."""


class RunFolder:
    """`with RunFolder(path):` the folder exists, is writable, and no other run uses it until the block ends.

    The lock is an fcntl lock, which the system releases when its process ends however it ends: a lock
    file left by a killed run is stale and taken over. Only the primary process (`primary`) creates and
    locks the folder; the others of a job write nothing.
    """

    def __init__(self, path, primary: bool = True):
        self.path = Path(path)
        self.primary = primary
        self._fd: Optional[int] = None
        self._created = False

    def __enter__(self) -> 'RunFolder':
        if not self.primary:
            return self
        self._check_writable()
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors='replace').strip() or 'unknown'
            os.close(fd)
            raise RunFolderError(f'{self.path} is in use by another run (pid {holder}); wait for it to end, stop '
                                 'it, or choose another --output') from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type, *exc):
        if self._fd is None:
            return False
        if exc_type is not None and self._created and os.listdir(self.path) == [LOCK_FILE]:
            os.unlink(self.path / LOCK_FILE)  # a run refused before it wrote anything leaves no folder behind
            os.rmdir(self.path)
        else:
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)  # the file stays: removing it could let two runs lock two different files
        self._fd = None
        return False

    def _check_writable(self):
        """Create the folder and write a file in it, or raise a RunFolderError saying why not."""
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except FileExistsError:
            raise RunFolderError(f'run folder {self.path}: a file of that name exists') from None
        except NotADirectoryError:
            raise RunFolderError(f'run folder {self.path}: a part of that path is a file, not a folder') from None
        except OSError as e:
            raise RunFolderError(f'run folder {self.path} cannot be written: {e.strerror or e}') from None
