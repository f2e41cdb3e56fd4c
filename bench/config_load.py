"""Reading large files: an agents file of N personas (``load_panel``) and a flow file of N
stages (``load_flow``, what `fanout flow check` and `flow run` do first). CPU seconds of the
load alone (best of --repeat, each in a fresh process), and the cost per persona or stage,
which stays flat when the load is linear.

    python bench/config_load.py [--personas 5000,10000,20000,40000] [--stages 100,200,500]
                                [--repeat 3] [--baseline /path/to/other/src]

--baseline measures another fanout source tree (e.g. a checkout of an earlier commit) in the
same run, interleaved: the ratio column is baseline / this tree.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

SRC = Path(__file__).resolve().parents[1] / "src"

# Runs in a fresh interpreter: imports first (not timed), then the load (timed).
PROBE = """
import sys, time
from pathlib import Path
from fanout.config import load_panel
kind, path, agents = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if kind == "flow":
    from fanout.flow import load_flow
    panel = load_panel(agents)
    started = time.process_time()
    load_flow(path, panel)
else:
    started = time.process_time()
    load_panel(path)
print(time.process_time() - started)
"""


def agents_file(directory: Path, personas: int) -> Path:
    document = {
        "defaults": {"base_url": "http://127.0.0.1:9/v1", "temperature": 0.2},
        "agents": [
            {
                "name": f"p{i}",
                "model": f"m-{i % 7}",
                "description": f"persona number {i}",
                "instructions": "Answer in one paragraph.",
            }
            for i in range(personas)
        ],
    }
    path = directory / f"agents-{personas}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def flow_file(directory: Path, stages: int) -> Path:
    """A chain of stages, each quoting the one before, over a small panel."""
    lines = ["inputs:\n  topic: {default: ice}\nstages:\n"]
    for i in range(stages):
        prompt = "Start on {{topic}}" if i == 0 else f"Improve {{{{s{i - 1}}}}}"
        lines.append(f"  - id: s{i}\n    panel: [a, b]\n    prompt: {prompt!r}\n")
    path = directory / f"flow-{stages}.yaml"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def measure(src: Path, kind: str, path: Path, agents: Path, repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    best = float("inf")
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, "-c", PROBE, kind, str(path), str(agents)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        best = min(best, float(done.stdout))
    return best


def report(label: str, sizes: list[int], unit: str, rows: list[tuple[float, float | None]]) -> None:
    compared = ", baseline / this" if rows[0][1] is not None else ""
    print(f"{label}: CPU s (best of N), ms per {unit}{compared}")
    for size, (mine, theirs) in zip(sizes, rows, strict=True):
        line = f"  {size:>7,} {unit}s  {mine:7.2f} s  {mine / size * 1000:6.3f} ms/{unit}"
        if theirs is not None:
            line += f"   baseline {theirs:7.2f} s  {theirs / size * 1000:6.3f} ms/{unit}"
            line += f"   x{theirs / mine:.1f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", default="5000,10000,20000,40000")
    parser.add_argument("--stages", default="100,200,500")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another fanout's src/ to compare")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="fanout-bench-load-"))
    small = directory / "small.yaml"
    small.write_text(
        "defaults: {base_url: 'http://127.0.0.1:9/v1'}\nagents:\n  - {name: a}\n  - {name: b}\n"
    )
    for label, kind, unit, sizes, make in (
        ("agents file", "agents", "persona", args.personas, agents_file),
        ("flow file", "flow", "stage", args.stages, flow_file),
    ):
        numbers = [int(n) for n in sizes.split(",")]
        rows: list[tuple[float, float | None]] = []
        for size in numbers:
            path = make(directory, size)
            theirs = None
            if args.baseline is not None:
                theirs = measure(args.baseline, kind, path, small, args.repeat)
            rows.append((measure(SRC, kind, path, small, args.repeat), theirs))
        report(label, numbers, unit, rows)


if __name__ == "__main__":
    main()
