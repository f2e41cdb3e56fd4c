"""Limiter accuracy: --rpm 1200 over 200 requests, measured where it counts, at the server.

One fanout run with 200 personas against the loopback test server (zero latency),
--rpm 1200 --concurrency 200. Reports the most request starts the server saw in any 1-second
window (limit: 1200/60 = 20) and the time from first to last start versus the ideal schedule
(a burst of 20, then one start every 50 ms from 1 s on: the 200th start at 9.95 s).

    python bench/limiter_accuracy.py [--rpm 1200] [--requests 200]
Goal: never above the limit; total within 10 % of ideal.
"""

from __future__ import annotations

import argparse
import math

from _common import FakeOpenAI, panel_file, run_fanout


def most_in_window(times: list[float], width: float) -> int:
    return max(sum(1 for s in times if t - width < s <= t) for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=1200)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    with FakeOpenAI() as server:
        config = panel_file(server.base_url, args.requests)
        document = run_fanout(
            "-c", str(config), "--rpm", f"{args.rpm:g}", "--concurrency", str(args.requests), "Q"
        )
        starts = sorted(r.started for r in server.requests)
    assert document["status"] == "completed", document["status"]
    assert len(starts) == args.requests

    per_second = max(1, math.ceil(args.rpm / 60))
    interval = 60 / args.rpm
    # The limiter's own schedule: a burst, then the steady pace once the 1 s window is full.
    ideal = 1.0 + (args.requests - per_second - 1) * interval if args.requests > per_second else 0
    ideal = max(ideal, 1e-9)
    total = starts[-1] - starts[0]
    peak = most_in_window(starts, 1.0)
    print(f"limiter accuracy: --rpm {args.rpm:g}, {args.requests} requests")
    print(f"  most starts in any 1 s window: {peak} (limit {per_second})")
    print(f"  most starts in any 60 s window: {most_in_window(starts, 60.0)} (limit {args.rpm:g})")
    print(f"  first to last start: {total:.3f} s (ideal {ideal:.3f} s, {total / ideal:.3f} x)")


if __name__ == "__main__":
    main()
