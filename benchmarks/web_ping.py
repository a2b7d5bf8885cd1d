"""A FastAPI server busy with CPU work on the process backend: does ``/ping`` still answer at once?

Starts uvicorn on 127.0.0.1 (a free port) with ``makeparallel.fastapi.lifespan``,
then sends N concurrent requests whose handlers await a pure-Python CPU task on
the process backend, while one client pings ``/ping`` in a loop. It prints the
requests' throughput and the ``/ping`` latencies (p50, p99, worst): the event
loop is free while the work runs, so a ping should take well under 50 ms. The
clients run in this process too, so on a small machine they compete with the
server for the CPU: run it on a quiet machine for the figure that matters. The
idle server's ``/ping`` time is printed first, as the floor of the figure.

    python benchmarks/web_ping.py [--requests 200] [--limit 20000] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI

import makeparallel as mp
from makeparallel.fastapi import lifespan


@mp.parallel(backend="process")
def count_primes(limit: int) -> int:
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


def make_app(workers: int) -> FastAPI:
    app = FastAPI(lifespan=lifespan(num_workers=workers, prestart=True, shutdown_timeout=10))

    @app.get("/primes/{limit}")
    async def primes(limit: int) -> int:
        return await count_primes(limit)

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    return app


async def ping_times(client: httpx.AsyncClient, count: int) -> list[float]:
    times = []
    for _ in range(count):
        sent = time.perf_counter()
        await client.get("/ping")
        times.append(time.perf_counter() - sent)
    return times


async def load(base: str, requests: int, limit: int) -> tuple[float, list[float], list[float]]:
    connections = httpx.Limits(max_connections=requests + 10, max_keepalive_connections=requests + 10)
    async with httpx.AsyncClient(base_url=base, limits=connections, timeout=600) as client:
        idle = await ping_times(client, 50)
        start = time.perf_counter()
        work = asyncio.gather(*(client.get(f"/primes/{limit}") for _ in range(requests)))
        pings: list[float] = []
        while not work.done():
            sent = time.perf_counter()
            await client.get("/ping")
            pings.append(time.perf_counter() - sent)
            await asyncio.sleep(0.005)
        answers = await work
        elapsed = time.perf_counter() - start
    assert all(a.status_code == 200 for a in answers)
    return elapsed, idle, pings


def main(requests: int, limit: int, workers: int) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(make_app(workers), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        elapsed, idle, pings = asyncio.run(load(f"http://127.0.0.1:{sock.getsockname()[1]}", requests, limit))
    finally:
        server.should_exit = True
        thread.join()
    ordered = sorted(pings)
    print(f"{requests} concurrent requests, each count_primes({limit}) on {workers} worker processes")
    print(f"  all answered in {elapsed:.2f} s ({requests / elapsed:.0f} requests/s)")
    print(f"  /ping on the idle server first: p50 {statistics.median(idle) * 1e3:.1f} ms, worst {max(idle) * 1e3:.1f} ms")
    print(
        f"  /ping meanwhile, {len(pings)} pings: p50 {statistics.median(pings) * 1e3:.1f} ms, "
        f"p99 {ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3:.1f} ms, "
        f"worst {ordered[-1] * 1e3:.1f} ms (target: under 50 ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--limit", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=mp.get_thread_pool_info()["num_threads"])
    arguments = parser.parse_args()
    main(arguments.requests, arguments.limit, arguments.workers)
