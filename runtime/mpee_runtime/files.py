"""Atomic writes: every file and folder this project writes appears whole or not at all.

One helper for files (`write_text`) and one for folders (`AtomicFolder`), shared by the runtime's CLIs
and by every writer of the torch side (bundles, checkpoints, reference exports, reports). Outputs are
checked before any work (`check_output_file`, `check_output_folder`), so a bad path fails in a second,
not after an hour of inference or export. Files and folders get the modes open() and mkdir() would give them
(the umask applies), not the private modes of mkstemp and mkdtemp.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from .errors import MpeeRuntimeError

_TMP_MARK = ".tmp-"


def check_output_file(path: Path) -> Path:
    """Refuse an output file path that cannot be written: a folder, or a missing parent folder."""
    path = Path(path)
    if path.is_dir():
        raise MpeeRuntimeError(f"{path} is a folder; give a file path")
    parent = path.parent
    if not parent.is_dir():
        raise MpeeRuntimeError(f"folder {parent} of {path} does not exist")
    if not os.access(parent, os.W_OK):
        raise MpeeRuntimeError(f"folder {parent} of {path} is not writable")
    return path


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, renamed at the end. The file gets
    the mode a plain open() would give (0o666 less the umask), not mkstemp's private 0o600."""
    path = check_output_file(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o666 & ~umask())
        os.replace(tmp, path)
    except OSError as e:   # a full disk names no file by itself: name the output
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_place(out: Path) -> Path:
    """Refuse an output folder that cannot be made or written: a file in its place, a missing parent folder, no
    write permission (a read-only file system included). Checked before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MpeeRuntimeError(f"{out} exists and is not a folder")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise MpeeRuntimeError(f"parent folder of {out} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise MpeeRuntimeError(f"{out} is not writable")
    return out


def check_output_folder(out: Path, *, force: bool = False) -> Path:
    """Refuse an output folder that is a file, non-empty without `force`, or not writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MpeeRuntimeError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MpeeRuntimeError(f"{out} is not empty (pass --force to replace it)")
    return check_output_place(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def clean_stale_temps(out: Path) -> list[Path]:
    """Remove temporary folders beside `out` left by writers of `out` that were killed (their pid is gone)."""
    out = Path(out)
    removed = []
    prefix = f".{out.name}{_TMP_MARK}"
    parent = out.resolve().parent
    if not parent.is_dir():
        return removed
    for p in parent.glob(f"{prefix}*"):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class _Terminated(BaseException):
    """SIGTERM turned into an exception, so that cleanup code runs (Python's default is to die at once)."""


class AtomicFolder:
    """Build a folder in a hidden temporary folder beside `out`; publish it by renaming at the end.

        with AtomicFolder(out, force=True) as tmp:
            ...write into tmp...
        # out now holds exactly what was written; on any exception (or SIGTERM) nothing is left behind

    `merge=True` moves the files into an existing `out` one by one instead (each rename is atomic; the
    file named `last` goes last), keeping what else `out` holds (a checkpoint's training state).
    Temporary folders of killed writers (SIGKILL) are removed by the next writer of the same `out`.
    """

    def __init__(self, out: Path, *, force: bool = False, merge: bool = False, last: str | None = None) -> None:
        self.out, self.force, self.merge, self.last = Path(out), force, merge, last
        self.tmp: Path | None = None
        self._old_handler = None

    def __enter__(self) -> Path:
        if not self.merge:
            check_output_folder(self.out, force=self.force)
        self.out.resolve().parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.out)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}{_TMP_MARK}{os.getpid()}-",
                                         dir=self.out.resolve().parent))
        self.tmp.chmod(0o777 & ~umask())   # the published folder's mode as mkdir gives it, not mkdtemp's 0o700
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self.tmp

    @staticmethod
    def _on_sigterm(signum, frame):
        raise _Terminated("terminated (SIGTERM)")

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._publish()
        finally:
            if self.tmp is not None and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)
            if self._old_handler is not None:
                signal.signal(signal.SIGTERM, self._old_handler)
        if exc_type is _Terminated:
            raise SystemExit(128 + signal.SIGTERM)
        return False

    def _publish(self) -> None:
        tmp, out = self.tmp, self.out
        if self.merge and out.is_dir():
            names = sorted((p.name for p in tmp.iterdir()), key=lambda n: n == self.last)
            for name in names:
                target = out / name
                if target.is_dir() and not (tmp / name).is_dir():
                    raise MpeeRuntimeError(f"{target} is a folder")
                if (tmp / name).is_dir() and target.exists():
                    shutil.rmtree(target)
                os.replace(tmp / name, target)
            return
        if out.exists():
            old = out.with_name(f".{out.name}{_TMP_MARK}{os.getpid()}-old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
