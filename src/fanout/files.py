"""Writing a user's file whole: a run's document (``-o``), an export, ``fanout init``'s panel.

A file is written beside its target under a temporary name, then renamed over it, so a reader
(or the next fanout run) sees the old file or the new one, never half of one, whatever ends the
write: a full disk, Ctrl-C. A symlink is followed (the file it points at is replaced, the link
stays). Where a rename would change what the user meant, the file is written in place as
before: a target that is not a regular file (a FIFO, ``/dev/stdout``, anything under ``/dev``
or ``/proc``), a file with several hard links, or a directory fanout may not create files in.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_SPECIAL = ("/dev/", "/proc/")
# Why a temporary file beside the target may not be possible, though the target is writable.
_NO_BESIDE = {errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.EROFS, errno.EXDEV}


def write_whole(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` whole. ``exclusive``: FileExistsError if ``path`` exists
    (checked again at the rename, so two writers cannot both win). OSError as ``open`` gives."""
    real = Path(os.path.realpath(path))
    try:
        info: os.stat_result | None = real.stat()
    except FileNotFoundError:
        info = None
    if info is not None and exclusive:
        raise FileExistsError(str(path))
    special = any(str(p).startswith(_SPECIAL) for p in (path.absolute(), real))
    if special or (info is not None and (not stat.S_ISREG(info.st_mode) or info.st_nlink > 1)):
        _in_place(path, text, exclusive)
        return
    partial = real.with_name(f".{real.name}.{os.getpid()}.partial")
    try:
        file = partial.open("x", encoding="utf-8")
    except OSError as exc:
        if exc.errno not in _NO_BESIDE:
            raise
        _in_place(path, text, exclusive)  # no room beside it: as before, in place
        return
    try:
        with file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if info is not None:
            os.chmod(partial, stat.S_IMODE(info.st_mode))  # keep the permissions it had
        if exclusive:
            try:
                os.link(partial, real)  # fails if the target appeared meanwhile
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                _in_place(path, text, exclusive)  # a file system without hard links
        else:
            os.replace(partial, real)
    finally:
        partial.unlink(missing_ok=True)


def _in_place(path: Path, text: str, exclusive: bool) -> None:
    with path.open("x" if exclusive else "w", encoding="utf-8") as file:
        file.write(text)
