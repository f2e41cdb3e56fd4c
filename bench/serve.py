"""fanout serve as a gateway: what it adds to a request, what it costs, how it takes a burst.

* the latency ``/v1/chat/completions`` adds over calling the backend directly (p50/p99), at
  1, 10 and 50 clients, one persona;
* the server's CPU per ``/v1`` request (one persona, three, three and a synthesis), from the
  process's own clock;
* 1,000 runs POSTed at once to ``/api/runs`` (three personas, the backend answering after
  0.2 s): how long each ``202`` took, none lost, and the status polls made meanwhile (p99);
* RSS after each of ten such bursts;
* 1 against 2 workers (``--workers``): requests per second at 50 clients.

The backend is the loopback test server in a process of its own; ``fanout serve`` runs as a
user would start it. Ratios are taken within one run (the machine is shared).

    .venv/bin/python bench/serve.py [--quick]
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from _common import ROOT, ServerProcess, panel_file

QUICK = "--quick" in sys.argv
REQUESTS = 200 if QUICK else 600  # per latency measurement
BURST = 300 if QUICK else 1000
BURSTS = 3 if QUICK else 10


def start_server(config: Path, home: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FANOUT_HOME": home}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout", "serve", "--port", "0", "-c", str(config), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[2].rstrip("/")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def cpu_seconds(pid: int) -> float:
    """User + system time of a process and its children that were waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def chat(agents: int, synthesize: bool = False) -> dict[str, Any]:
    return {
        "model": "fanout",
        "messages": [{"role": "user", "content": "Why?"}],
        "fanout": {"agents": [f"p{i:03d}" for i in range(agents)], "synthesize": synthesize},
    }


DIRECT = {"model": "m-000", "messages": [{"role": "user", "content": "Why?"}]}


async def latencies(url: str, body: dict[str, Any], clients: int, total: int) -> list[float]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for _ in range(5):  # warm the connections up
            (await client.post("/v1/chat/completions", json=body)).raise_for_status()

        async def worker(n: int) -> None:
            for _ in range(n):
                started = time.perf_counter()
                response = await client.post("/v1/chat/completions", json=body)
                times.append(time.perf_counter() - started)
                response.raise_for_status()

        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(worker, total // clients)
    return times


def added_latency(backend: str, url: str) -> None:
    print("\n| clients | direct p50 | direct p99 | fanout p50 | fanout p99 | added p50 "
          "| added p99 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for clients in (1, 10, 50):
        # Interleaved, so both see the same machine.
        direct: list[float] = []
        via: list[float] = []
        for _ in range(3):
            direct += anyio.run(latencies, backend, DIRECT, clients, REQUESTS // 3)
            via += anyio.run(latencies, url, chat(1), clients, REQUESTS // 3)
        row = [pct(direct, 50), pct(direct, 99), pct(via, 50), pct(via, 99)]
        added = [row[2] - row[0], row[3] - row[1]]
        print(f"| {clients} | " + " | ".join(f"{v:.1f} ms" for v in [*row, *added]) + " |")


def cpu_per_request(url: str, pid: int) -> None:
    print("\n| /v1 request | server CPU per request |")
    print("|---|---|")
    for name, body in [("1 persona", chat(1)), ("3 personas", chat(3)),
                       ("3 personas + synthesis", chat(3, True))]:  # fmt: skip
        anyio.run(latencies, url, body, 1, 20)
        before = cpu_seconds(pid)
        anyio.run(latencies, url, body, 1, REQUESTS // 2)
        spent = (cpu_seconds(pid) - before) / (REQUESTS // 2 + 5)
        print(f"| {name} | {spent * 1000:.2f} ms |")


async def burst(url: str, runs: int) -> dict[str, Any]:
    """``runs`` POSTs at once; meanwhile status polls of the runs accepted so far."""
    limits = httpx.Limits(max_connections=runs + 10, max_keepalive_connections=runs + 10)
    accepts: list[float] = []
    polls: list[float] = []
    ids: list[str] = []
    codes: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await client.get("/healthz")
        posting = True

        async def submit(i: int) -> None:
            started = time.perf_counter()
            response = await client.post("/api/runs", json={"prompt": f"question {i}"})
            accepts.append(time.perf_counter() - started)
            codes.append(response.status_code)
            if response.status_code == 202:
                ids.append(response.json()["id"])

        async def poll() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=300) as poller:
                while posting or not ids:
                    if ids:
                        started = time.perf_counter()
                        await poller.get(f"/api/runs/{random.choice(ids)}")
                        polls.append(time.perf_counter() - started)
                    else:
                        await anyio.sleep(0.005)
                for run_id in list(ids):  # the rest of the burst, until every run is over
                    while True:
                        started = time.perf_counter()
                        answer = await poller.get(f"/api/runs/{run_id}")
                        polls.append(time.perf_counter() - started)
                        if answer.status_code == 200:
                            break
                        await anyio.sleep(0.05)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            async with anyio.create_task_group() as posts:
                for i in range(runs):
                    posts.start_soon(submit, i)
            posting = False
        took = time.perf_counter() - started
        listed = (await client.get(f"/api/runs?limit={min(runs + 10, 1000)}")).json()["runs"]
        completed = {r["instanceId"] for r in listed if r["runtimeStatus"] == "Completed"}
    return {
        "accepted": codes.count(202),
        "refused": len(codes) - codes.count(202),
        "lost": len(set(ids) - completed),
        "accept_max": max(accepts),
        "accept_p50": statistics.median(accepts),
        "poll_p99": pct(polls, 99) if len(polls) > 2 else float("nan"),
        "polls": len(polls),
        "all_done_s": took,
    }


def bursts(config: Path) -> None:
    home = tempfile.mkdtemp(prefix="fanout-bench-home-")
    proc, url = start_server(config, home)
    try:
        print(f"\n{BURST} runs POSTed at once (3 personas, backend 0.2 s), {BURSTS} times:\n")
        print("| burst | 202s | refused | lost | slowest 202 | median 202 | status p99 "
              "| all over | RSS after |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| before | | | | | | | | {rss_mib(proc.pid):.0f} MiB |")
        for n in range(BURSTS):
            r = anyio.run(burst, url, BURST)
            print(
                f"| {n + 1} | {r['accepted']} | {r['refused']} | {r['lost']} | "
                f"{r['accept_max'] * 1000:.0f} ms | {r['accept_p50'] * 1000:.0f} ms | "
                f"{r['poll_p99']:.0f} ms ({r['polls']}) | {r['all_done_s']:.1f} s | "
                f"{rss_mib(proc.pid):.0f} MiB |"
            )
    finally:
        stop(proc)


async def throughput(url: str, clients: int, seconds: float) -> float:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    done = 0
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                (await client.post("/v1/chat/completions", json=chat(1))).raise_for_status()
                done += 1

        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(worker)
    return done / seconds


def workers(config: Path) -> None:
    print("\n| workers | /v1 requests per second, 50 clients (1 persona) |")
    print("|---|---|")
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(2 if QUICK else 3):  # interleaved
        for n in (1, 2):
            home = tempfile.mkdtemp(prefix="fanout-bench-home-")
            proc, url = start_server(config, home, "--workers", str(n))
            try:
                anyio.run(throughput, url, 10, 2.0)  # warm up
                rates[n].append(anyio.run(throughput, url, 50, 5.0 if QUICK else 10.0))
            finally:
                stop(proc)
    for n in (1, 2):
        each = ", ".join(f"{r:.0f}" for r in rates[n])
        print(f"| {n} | {statistics.median(rates[n]):.0f} ({each}) |")
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    print(f"\n2 workers / 1 worker: {ratio:.2f}x")


def main() -> None:
    with ServerProcess(0.0) as backend:
        config = panel_file(backend, 3)
        home = tempfile.mkdtemp(prefix="fanout-bench-home-")
        proc, url = start_server(config, home)
        try:
            added_latency(backend.removesuffix("/v1"), url)
            cpu_per_request(url, proc.pid)
        finally:
            stop(proc)
        if "--no-workers" not in sys.argv:
            workers(config)
    with ServerProcess(0.2) as backend:
        bursts(panel_file(backend, 3))


if __name__ == "__main__":
    main()
