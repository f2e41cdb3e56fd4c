"""fanout serve under load: 200 runs submitted at once (none may be lost), and the latency
``/v1/chat/completions`` adds over calling the backend directly, at 1 and 50 clients.

The backend is the loopback test server in a process of its own (answers at once, so what is
measured is fanout's overhead); ``fanout serve`` runs as a user would start it.

    .venv/bin/python bench/serve.py
"""

from __future__ import annotations

import os
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

RUNS = 200
REQUESTS = 400  # per latency measurement


def start_server(config: Path, home: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "FANOUT_HOME": home}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fanout",
            "serve",
            "--port",
            "0",
            "-c",
            str(config),
            "--max-runs",
            str(RUNS + 50),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[2].rstrip("/")


async def submit_at_once(url: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=RUNS, max_keepalive_connections=RUNS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await client.get("/healthz")
        ids: list[str] = []
        codes: list[int] = []

        async def submit(i: int) -> None:
            response = await client.post("/api/runs", json={"prompt": f"question {i}"})
            codes.append(response.status_code)
            if response.status_code == 202:
                ids.append(response.json()["id"])

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(RUNS):
                tg.start_soon(submit, i)
        accepted = time.perf_counter() - started
        pending = set(ids)
        while pending:  # poll every run until it is over
            for run_id in list(pending):
                if (await client.get(f"/api/runs/{run_id}")).status_code == 200:
                    pending.discard(run_id)
        took = time.perf_counter() - started
        listed = (await client.get(f"/api/runs?limit={RUNS + 50}")).json()["runs"]
        completed = {r["instanceId"] for r in listed if r["runtimeStatus"] == "Completed"}
    return {
        "submitted": RUNS,
        "accepted_202": codes.count(202),
        "completed": len(completed & set(ids)),
        "lost": RUNS - len(completed & set(ids)),
        "accept_s": accepted,
        "all_done_s": took,
    }


async def latencies(url: str, body: dict[str, Any], clients: int) -> list[float]:
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
                tg.start_soon(worker, REQUESTS // clients)
    return times


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


def main() -> None:
    with ServerProcess(0.0) as backend:
        config = panel_file(backend, 3)
        home = tempfile.mkdtemp(prefix="fanout-bench-home-")
        proc, url = start_server(config, home)
        try:
            burst = anyio.run(submit_at_once, url)
            print(
                f"{burst['submitted']} runs at once (3 personas each): {burst['accepted_202']} "
                f"accepted (202) in {burst['accept_s']:.2f} s, {burst['completed']} completed, "
                f"{burst['lost']} lost; all done in {burst['all_done_s']:.2f} s"
            )
            direct = {"model": "m-000", "messages": [{"role": "user", "content": "Why?"}]}
            via = {
                "model": "fanout",
                "messages": [{"role": "user", "content": "Why?"}],
                "fanout": {"agents": ["p000"], "synthesize": False},
            }
            columns = ["direct p50", "direct p99", "fanout p50", "fanout p99"]
            print("\n| clients | " + " | ".join([*columns, "added p50", "added p99"]) + " |")
            print("|---|---|---|---|---|---|---|")
            for clients in (1, 50):
                d = anyio.run(latencies, backend.removesuffix("/v1"), direct, clients)
                f = anyio.run(latencies, url, via, clients)
                row = [pct(d, 50), pct(d, 99), pct(f, 50), pct(f, 99)]
                added = [row[2] - row[0], row[3] - row[1]]
                cells = " | ".join(f"{v:.1f} ms" for v in [*row, *added])
                print(f"| {clients} | {cells} |")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
