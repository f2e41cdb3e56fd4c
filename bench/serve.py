"""fanout serve as a gateway: what it adds to a request, what it costs, how it takes a burst.

* the latency ``/v1/chat/completions`` adds over calling the backend directly (p50/p99), at
  1, 10 and 50 clients, one persona;
* the server's CPU per ``/v1`` request (one persona, three, three and a synthesis), from the
  process's own clock;
* 1,000 runs POSTed at once to ``/api/runs`` (three personas, the backend answering after
  0.2 s): how long each ``202`` took, none lost, and the status polls made meanwhile (p99);
* RSS after each of ten such bursts; three more with ``--workers 2``;
* 1 against 2 workers (``--workers``): requests per second at 50 clients.

The backend is the loopback test server in a process of its own; ``fanout serve`` runs as a
user would start it. Ratios are taken within one run (the machine is shared).

    .venv/bin/python bench/serve.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


async def post_raw(host: str, port: int, body: bytes) -> tuple[int, bytes]:
    """One ``POST /api/runs`` on a connection of its own, written and read by hand: a Python
    HTTP client costs ~1.5 ms of CPU a request, on the cores the server is measured on."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /api/runs HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (host.encode(), port, len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        payload = await reader.readexactly(int(length[1])) if length else await reader.read()
        return status, payload
    finally:
        writer.close()


POLLERS = 4  # clients polling at once during a burst


def poller_main(url: str) -> None:
    """``serve.py --poller URL``: status polls of the run ids read from stdin (as the burst's
    202s give them), ``POLLERS`` at a time, until stdin closes; then their times as JSON. A
    process of its own, so that no poll waits behind the burst's client for the GIL."""
    ids: list[str] = []
    over = threading.Event()
    times: list[float] = []

    def read() -> None:
        for line in sys.stdin:
            ids.append(line.strip())
        over.set()

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            while not over.is_set():
                if not ids:
                    over.wait(0.002)
                    continue
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"/api/runs/{random.choice(ids)}")
                times.append(time.perf_counter() - started)

    threads = [threading.Thread(target=poll) for _ in range(POLLERS)]
    for thread in [*threads, threading.Thread(target=read, daemon=True)]:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(times))


def burst(url: str, runs: int) -> dict[str, Any]:
    """``runs`` POSTs at once, with a status poller in a process of its own."""
    poller = subprocess.Popen(
        [sys.executable, __file__, "--poller", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        return anyio.run(_burst, url, runs, poller)
    finally:
        poller.kill()
        poller.wait()


async def _burst(url: str, runs: int, poller: subprocess.Popen[str]) -> dict[str, Any]:
    """``runs`` POSTs at once; meanwhile status polls of the runs accepted so far; then every
    run waited for."""
    split = urlsplit(url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    accepts: list[float] = []
    ids: list[str] = []
    codes: list[int] = []
    assert poller.stdin is not None
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        await client.get("/healthz")

        async def submit(i: int) -> None:
            started = time.perf_counter()
            try:
                status, payload = await post_raw(host, port, b'{"prompt": "question %d"}' % i)
            except (OSError, asyncio.IncompleteReadError):  # closed: counted as refused
                codes.append(0)
                return
            accepts.append(time.perf_counter() - started)
            codes.append(status)
            if status == 202:
                ids.append(json.loads(payload)["id"])
                poller.stdin.write(ids[-1] + "\n")
                poller.stdin.flush()

        started = time.perf_counter()
        async with anyio.create_task_group() as posts:
            for i in range(runs):
                posts.start_soon(submit, i)
        out, _ = await anyio.to_thread.run_sync(poller.communicate)  # stdin closed: over
        polls: list[float] = json.loads(out)
        for run_id in list(ids):  # every run, until it is over
            while True:
                answer = await client.get(f"/api/runs/{run_id}")
                if answer.status_code == 200:
                    break
                await anyio.sleep(0.05)
        took = time.perf_counter() - started
        listed = (await client.get(f"/api/runs?limit={min(runs + 10, 1000)}")).json()["runs"]
        completed = {r["instanceId"] for r in listed if r["runtimeStatus"] == "Completed"}
    return {
        "accepted": codes.count(202),
        "refused": len(codes) - codes.count(202),
        "lost": len(set(ids) - completed),
        "accept_max": max(accepts),
        "accept_p50": statistics.median(accepts),
        "poll_p50": pct(polls, 50) if len(polls) > 2 else float("nan"),
        "poll_p99": pct(polls, 99) if len(polls) > 2 else float("nan"),
        "polls": len(polls),
        "all_done_s": took,
    }


def bursts(config: Path, times: int, *args: str) -> None:
    home = tempfile.mkdtemp(prefix="fanout-bench-home-")
    proc, url = start_server(config, home, *args)
    try:
        shown = f" ({' '.join(args)})" if args else ""
        print(f"\n{BURST} runs POSTed at once (3 personas, backend 0.2 s){shown}, {times} times:\n")
        print("| burst | 202s | refused | lost | slowest 202 | median 202 | status p50 "
              "| status p99 | all over | RSS after |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| before | | | | | | | | | {rss_mib(proc.pid):.0f} MiB |")
        for n in range(times):
            r = burst(url, BURST)
            print(
                f"| {n + 1} | {r['accepted']} | {r['refused']} | {r['lost']} | "
                f"{r['accept_max'] * 1000:.0f} ms | {r['accept_p50'] * 1000:.0f} ms | "
                f"{r['poll_p50']:.0f} ms | {r['poll_p99']:.0f} ms ({r['polls']}) | "
                f"{r['all_done_s']:.1f} s | {rss_mib(proc.pid):.0f} MiB |"
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
        bursts(panel_file(backend, 3), BURSTS)
        bursts(panel_file(backend, 3), 3, "--workers", "2")  # (its RSS: the supervisor's)


if __name__ == "__main__":
    if "--poller" in sys.argv:
        poller_main(sys.argv[sys.argv.index("--poller") + 1])
    else:
        main()
