"""Fan-out efficiency: N personas at a fixed latency should take about as long as one.

Runs the real CLI against the loopback test server (every answer takes --latency seconds) for
N = 1, 8, 32, 128 personas, with the default flags (what a user gets) and with --concurrency N,
and reports the run's own duration (the JSON ``duration_s``) and the whole process wall time,
each as a ratio to N = 1.

    python bench/fanout_efficiency.py [--latency 1.0] [--sizes 1,8,32,128]
Goal: 32 personas at 1 s latency <= 1.10 x one persona.
"""

from __future__ import annotations

import argparse
import time

from _common import FakeOpenAI, Reply, panel_file, run_fanout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--sizes", default="1,8,32,128")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size; the best is kept")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    for label, explicit in (("default flags", False), ("--concurrency N", True)):
        rows = []
        with FakeOpenAI() as server:
            for n in sizes:
                config = panel_file(server.base_url, n)
                flags = ["--concurrency", str(n)] if explicit else []
                best_run, best_wall, peak = float("inf"), float("inf"), 0
                for _ in range(args.repeat):
                    server.reset()
                    server.default = Reply(latency=args.latency)
                    started = time.perf_counter()
                    document = run_fanout("-c", str(config), *flags, "Bench?")
                    wall = time.perf_counter() - started
                    assert document["status"] == "completed", document["status"]
                    peak = max(peak, server.max_in_flight)
                    best_run = min(best_run, document["duration_s"])
                    best_wall = min(best_wall, wall)
                rows.append((n, best_run, best_wall, peak))

        base_run, base_wall = rows[0][1], rows[0][2]
        print(f"fan-out efficiency, {label}, latency {args.latency:g} s, best of {args.repeat}")
        print(f"{'N':>5} {'run s':>8} {'run/1':>7} {'wall s':>8} {'wall/1':>7} {'in flight':>10}")
        for n, run_s, wall_s, peak in rows:
            run_ratio, wall_ratio = run_s / base_run, wall_s / base_wall
            print(
                f"{n:>5} {run_s:>8.3f} {run_ratio:>7.3f} {wall_s:>8.3f} {wall_ratio:>7.3f} "
                f"{peak:>10}"
            )


if __name__ == "__main__":
    main()
