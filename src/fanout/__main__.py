"""``python -m fanout``: the ``fanout`` command (``fanout.launch.main``: the signal handlers
first, the live board's first frame, then the command line)."""

from __future__ import annotations

from fanout.launch import main

if __name__ == "__main__":
    main()
