"""A FastAPI server busy with CPU work on the process backend: does ``/ping`` still answer at once?

Starts uvicorn on 127.0.0.1 (a free port) with ``makeparallel.fastapi.lifespan``
in this process. A pinger process pings ``/ping`` over one kept-alive connection:
first with the server idle (the floor of the figure), then, once a load process
has sent N concurrent requests whose handlers each await a pure-Python CPU task
on the process backend, until the last of them is answered. It prints the
requests' throughput and the ``/ping`` latencies (p50, p99, worst) idle and under
load: the event loop is free while the work runs, so a ping should take well
under 50 ms. The clients run in processes of their own so that they do not
share this process's GIL with the server; on a small machine they still share
its cores with the server and the workers, so run it on a quiet machine for
the figure that matters.

    python benchmarks/web_ping.py [--requests 200] [--limit 20000] [--workers N] [--nice 10]

Workers that fill every core compete with the server's event loop for the CPU;
``--nice N`` starts them at a lower priority (``os.nice`` as the pool's
initializer), which the operating system's scheduler then honours.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import threading
import time
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

import makeparallel as mp
from makeparallel.fastapi import lifespan

IDLE_PINGS = 50
PAUSE = 0.005  # seconds between two pings


@mp.parallel(backend="process")
def count_primes(limit: int) -> int:
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


def make_app(workers: int, nice: int) -> FastAPI:
    if nice:  # a lower priority for the workers than for the server's event loop
        mp.configure_process_pool(initializer=os.nice, initargs=(nice,))
    app = FastAPI(lifespan=lifespan(num_workers=workers, prestart=True, shutdown_timeout=10))

    @app.get("/primes/{limit}")
    async def primes(limit: int) -> int:
        return await count_primes(limit)

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    return app


def pinger(base: str, loaded: Any, stop: Any, results: Any) -> None:
    """Ping while idle, then from ``loaded`` until ``stop``; put (idle, loaded) latencies in ``results``."""

    async def run() -> tuple[list[float], list[float]]:
        idle: list[float] = []
        busy: list[float] = []
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            while len(idle) < IDLE_PINGS or not loaded.is_set():
                sent = time.perf_counter()
                await client.get("/ping")
                (busy if loaded.is_set() and len(idle) >= IDLE_PINGS else idle).append(time.perf_counter() - sent)
                await asyncio.sleep(PAUSE)
            while not stop.is_set():
                sent = time.perf_counter()
                await client.get("/ping")
                busy.append(time.perf_counter() - sent)
                await asyncio.sleep(PAUSE)
        return idle[:IDLE_PINGS], busy

    results.put(asyncio.run(run()))


def loader(base: str, requests: int, limit: int, loaded: Any, results: Any) -> None:
    """Send ``requests`` concurrent requests; put (seconds, all answered 200) in ``results``."""

    async def run() -> tuple[float, bool]:
        connections = httpx.Limits(max_connections=requests + 10, max_keepalive_connections=requests + 10)
        async with httpx.AsyncClient(base_url=base, limits=connections, timeout=600) as client:
            start = time.perf_counter()
            work = asyncio.gather(*(client.get(f"/primes/{limit}") for _ in range(requests)))
            await asyncio.sleep(0.5)  # the requests are sent and their tasks queued
            loaded.set()
            answers = await work
            return time.perf_counter() - start, all(a.status_code == 200 for a in answers)

    results.put(asyncio.run(run()))


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(samples: list[float]) -> str:
    return (
        f"{len(samples)} pings: p50 {statistics.median(samples) * 1e3:.1f} ms, "
        f"p99 {percentile(samples, 0.99) * 1e3:.1f} ms, worst {max(samples) * 1e3:.1f} ms"
    )


def main(requests: int, limit: int, workers: int, nice: int) -> None:
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on connections
    # accepted from a socket that says it is TCP, and without it Nagle's algorithm
    # holds each response's body until the client's delayed ACK of its headers,
    # about 40 ms on Linux, on every request. `uvicorn --port` binds this way itself.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(make_app(workers, nice), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    while not server.started:
        time.sleep(0.01)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    spawn = multiprocessing.get_context("spawn")
    loaded, stop = spawn.Event(), spawn.Event()
    pings, answers = spawn.Queue(), spawn.Queue()
    clients = [
        spawn.Process(target=pinger, args=(base, loaded, stop, pings)),
        spawn.Process(target=loader, args=(base, requests, limit, loaded, answers)),
    ]
    try:
        for client in clients:
            client.start()
        elapsed, all_ok = answers.get()
        stop.set()
        idle, busy = pings.get()
        for client in clients:
            client.join()
    finally:
        server.should_exit = True
        thread.join()
    niced = f", niced by {nice}" if nice else ""
    print(f"{requests} concurrent requests, each count_primes({limit}) on {workers} worker processes{niced}")
    print(f"  all answered in {elapsed:.2f} s ({requests / elapsed:.0f} requests/s), all 200: {all_ok}")
    print(f"  /ping on the idle server: {describe(idle)}")
    print(f"  /ping under load:         {describe(busy)} (target: under 50 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--limit", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=mp.get_thread_pool_info()["num_threads"])
    parser.add_argument("--nice", type=int, default=0, help="run the workers at this lower priority (os.nice)")
    arguments = parser.parse_args()
    main(arguments.requests, arguments.limit, arguments.workers, arguments.nice)
