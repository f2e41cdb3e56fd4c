"""Writing a user's file whole: a run's document (``-o``), an export, ``fanout init``'s panel.

A file is written beside its target under a temporary name, then renamed over it, so a reader
(or the next fanout run) sees the old file or the new one, never half of one, whatever ends the
write: a full disk, Ctrl-C, ``kill -9``. A target that exists and is not a regular file (a FIFO,
``/dev/stdout``) is written in place, as there is nothing to replace.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def write_whole(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` whole. ``exclusive``: FileExistsError if ``path`` exists
    (checked again at the rename, so two writers cannot both win). OSError as ``open`` gives."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and exclusive:
        raise FileExistsError(str(path))
    if mode is not None and not stat.S_ISREG(mode):
        with path.open("w", encoding="utf-8") as file:
            file.write(text)
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(partial, stat.S_IMODE(mode))  # keep the permissions it had
        if exclusive:
            os.link(partial, path)  # fails if path appeared meanwhile
            partial.unlink()
        else:
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
