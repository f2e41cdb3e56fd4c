"""One very long streamed answer shown live: is the live view's cost per piece independent of
the text already shown? One persona streams 1, 3 and 10 MB of Markdown (a word a piece) from
the loopback test server; the run is timed on a pty (160x45, the live board) and piped with
``--stream`` (the same stream, no board). Linear means the seconds per MB stay flat.

    python bench/long_answer.py [--sizes 1,3,10] [--size 160x45]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import ServerProcess, panel_file
from live_view import on_pty, piped

WORDS_PER_MB = 1_000_000 // 6  # the test answer's words are about 6 characters with a space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3,10", help="answer sizes in MB")
    parser.add_argument("--size", default="160x45")
    args = parser.parse_args()
    columns, rows = (int(n) for n in args.size.split("x"))
    print(f"one streamed answer, {columns}x{rows} pty (live board) vs piped --stream")
    print("   MB  live wall   CPU  s/MB | piped wall   CPU  s/MB | live / piped CPU")
    for megabytes in (float(s) for s in args.sizes.split(",")):
        with ServerProcess(0.0, int(megabytes * WORDS_PER_MB), 0.0) as base_url:
            config = panel_file(base_url, 1)
            ask = [sys.executable, "-m", "fanout", "ask", "-c", str(config), "--no-log"]
            ask += ["--format", "md", "--timeout", "3600", "Explain heat."]
            live_cpu, live_wall, _, _ = on_pty(ask, rows, columns)
            cpu, wall, _ = piped([*ask, "--stream"])
        print(
            f"{megabytes:5.0f}  {live_wall:9.1f} {live_cpu:5.1f} {live_wall / megabytes:5.1f} |"
            f" {wall:10.1f} {cpu:5.1f} {wall / megabytes:5.1f} | {live_cpu / cpu:5.2f} x"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
