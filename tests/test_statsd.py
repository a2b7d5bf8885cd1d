"""StatsD export: a real UDP socket on loopback receives what the exporter sends.

Flushes are made with ``exporter.flush()`` (not the timer) so that each test
knows which packets belong to which flush: the last line of every flush is the
``busy`` gauge of the last pool, so a flush has arrived once that line has
(datagrams from one socket over loopback arrive in order).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pool_helpers import (
    child_exit_code,
    interrupted_once_it_says,
    two_queued_behind_a_busy_executor,
    two_queued_in_an_executors_pool,
)

import makeparallel
import makeparallel as mp
from makeparallel import _metrics, _runtime
from makeparallel._states import SUCCEEDED

_BOUND_BEFORE = "statsd" in vars(makeparallel)
from makeparallel import statsd as statsd_module  # noqa: E402
from makeparallel.statsd import StatsdExporter  # noqa: E402

if not _BOUND_BEFORE:
    # Importing a submodule binds it on the package, and test_public_api checks the
    # package's public attributes: leave the package as this file found it.
    del makeparallel.statsd

pytestmark = pytest.mark.usefixtures("own_metrics")  # conftest: the suite's other records stay out

MAX_PACKET = 1432
LINE = re.compile(r"^(?P<name>[^:|\n]+):(?P<value>-?[0-9.e+-]+)\|(?P<type>c|ms|g)(?:\|@(?P<rate>[0-9.e+-]+))?$")


def unique_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Line:
    name: str
    value: float
    type: str
    rate: float | None

    @classmethod
    def parse(cls, text: str) -> Line:
        match = LINE.match(text)
        assert match, f"not a StatsD line: {text!r}"
        rate = match["rate"]
        return cls(match["name"], float(match["value"]), match["type"], None if rate is None else float(rate))


class StatsdServer:
    """A UDP socket on ``host`` (127.0.0.1 or ::1, port 0), read by a thread into a list of packets."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.socket.settimeout(0.05)  # so that the reader notices stop() promptly
        self.port: int = self.socket.getsockname()[1]
        self.packets: list[bytes] = []
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="statsd-test-receiver", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                packet = self.socket.recv(65535)
            except TimeoutError:
                continue
            with self._changed:
                self.packets.append(packet)
                self._changed.notify_all()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        self.socket.close()

    def lines(self, since: int = 0) -> list[str]:
        with self._changed:
            packets = self.packets[since:]
        return [line for packet in packets for line in packet.decode().split("\n")]

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def flush(self, exporter: StatsdExporter, prefix: str = "test") -> list[Line]:
        """``exporter.flush()``, then every line of that flush, once it all arrived.

        Its end is a marker sent once ``flush()`` returned: on loopback a datagram is
        queued at the receiver within ``sendto``, so the marker comes after every
        packet of the flush, whatever the flush's last line is.
        """
        with self._changed:
            start = len(self.packets)
        exporter.flush()
        marker = f"end-of-flush-{uuid.uuid4().hex}".encode()
        with socket.socket(self.family, socket.SOCK_DGRAM) as sender:
            sender.sendto(marker, (self.host, self.port))
        arrived = self.wait(lambda: marker in self.packets[start:], timeout=30)  # a loaded machine's receiver is late
        assert arrived, f"the flush never arrived whole; got {self.lines(start)}"
        with self._changed:
            self.packets.remove(marker)
        return [Line.parse(text) for text in self.lines(start)]


def sanitised(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", name).strip("_") or "unnamed"


@pytest.fixture
def server() -> Iterator[StatsdServer]:
    receiver = StatsdServer()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def exporter(server: StatsdServer) -> Iterator[StatsdExporter]:
    sender = StatsdExporter("127.0.0.1", server.port, prefix="test", interval=3600)
    try:
        yield sender
    finally:
        sender.stop()


def of(lines: list[Line], base: str) -> dict[str, list[Line]]:
    """The lines under ``base.``, by the rest of their name."""
    found: dict[str, list[Line]] = {}
    for line in lines:
        if line.name.startswith(base + "."):
            found.setdefault(line.name[len(base) + 1 :], []).append(line)
    return found


def counter(lines: dict[str, list[Line]], key: str) -> float:
    entries = lines.get(key, [])
    assert all(line.type == "c" for line in entries)
    return sum(line.value for line in entries)


def sent_mean(lines: dict[str, list[Line]], key: str) -> float:
    """The mean a StatsD server computes from the timer lines: each value counted 1/rate times."""
    entries = lines[key]
    total = sum(line.value * (1.0 if line.rate is None else 1.0 / line.rate) for line in entries)
    return total / sampled_count(lines, key)


def sampled_count(lines: dict[str, list[Line]], key: str) -> float:
    """How many samples the timer lines stand for: the sum of 1/rate."""
    entries = lines.get(key, [])
    assert all(line.type == "ms" for line in entries)
    return sum(1.0 if line.rate is None else 1.0 / line.rate for line in entries)


def make_work(name: str, backend: str = "sync") -> Any:
    @mp.parallel(backend=backend, name=name)
    def work(seconds: float = 0.0, fail: bool = False) -> None:
        if seconds:
            time.sleep(seconds)  # the workload: a known duration
        if fail:
            raise ValueError("failed on purpose")

    return work


def run(work: Any, succeed: int = 0, fail: int = 0, seconds: float = 0.0) -> None:
    for _ in range(succeed):
        work(seconds).get(10)
    for _ in range(fail):
        with pytest.raises(ValueError):
            work(seconds, fail=True).get(10)


# -- what one flush says ------------------------------------------------------------------------


def test_counters_timers_and_pool_gauges(server: StatsdServer, exporter: StatsdExporter) -> None:
    name = unique_name("statsd")
    work = make_work(name)
    run(work, succeed=4, fail=2, seconds=0.02)
    lines = server.flush(exporter)
    mine = of(lines, f"test.{name}")
    assert counter(mine, "completed") == 4
    assert counter(mine, "failed") == 2
    assert counter(mine, "submitted") == 6
    assert "cancelled" not in mine and "timed_out" not in mine  # nothing changed: nothing sent
    assert [line.value for line in mine["completed"]] == [4]  # one line per counter
    # Timers: one line per bucket, sampled so that the server counts every task.
    assert round(sampled_count(mine, "duration")) == 6
    assert round(sampled_count(mine, "queue_wait")) == 6
    metrics = mp.get_metrics(name)
    assert metrics is not None and metrics.min_execution_time_ms >= 20.0
    # The lines add up to the time measured: their mean is the tasks' own.
    assert sent_mean(mine, "duration") == pytest.approx(metrics.average_execution_time_ms, rel=1e-4)
    # Gauges for every pool started so far.
    pools = mp.metrics_snapshot()["pools"]
    for pool in pools:
        gauges = of(lines, f"test.pool.{sanitised(pool)}")
        assert [g.type for g in gauges["queued"]] == ["g"] and [g.type for g in gauges["busy"]] == ["g"]
        assert gauges["queued"][0].value >= 0 and gauges["busy"][0].value >= 0
    assert of(lines, "test.pool.sync")["queued"][0].value == 0


def test_timer_lines_add_up_to_the_time_measured_in_each_flush(server: StatsdServer, exporter: StatsdExporter) -> None:
    # Each line was its bucket's midpoint, 2.5 L of (L, 4L]: ten tasks of about 21 ms
    # were sent as 40.96 ms each, and the server's sum and mean were twice the truth.
    # Scaled by one factor per flush, they add up to what was measured since the last.
    name = unique_name("statsd-mean")
    work = make_work(name)
    totals = []
    for seconds in (0.02, 0.001):
        before = mp.metrics_snapshot()["functions"].get(name, {}).get("execution_time_sum_seconds", 0.0)
        run(work, succeed=5, seconds=seconds)
        mine = of(server.flush(exporter), f"test.{name}")
        measured = mp.metrics_snapshot()["functions"][name]["execution_time_sum_seconds"] - before
        assert round(sampled_count(mine, "duration")) == 5
        assert sent_mean(mine, "duration") * 5 == pytest.approx(measured * 1000.0, rel=1e-4)
        totals.append(measured)
    assert totals[0] > totals[1]  # each flush its own time, not the running total


@pytest.mark.timeout(30)
def test_a_timer_whose_samples_are_all_zero_sends_zero(server: StatsdServer, exporter: StatsdExporter) -> None:
    # @profiled counts every call's queue wait as 0.0: the flush's total did not grow,
    # and the lines were sent unscaled, 0.0005 ms each, a server's sum and mean not 0.
    name = unique_name("statsd-no-wait")
    work = mp.profiled(name=name)(lambda: None)
    for _ in range(5):
        work()
    mine = of(server.flush(exporter), f"test.{name}")
    assert round(sampled_count(mine, "queue_wait")) == 5
    assert sent_mean(mine, "queue_wait") == 0.0
    assert sent_mean(mine, "duration") > 0.0


@pytest.mark.timeout(20)
def test_pool_gauges_show_queued_and_busy(
    server: StatsdServer, exporter: StatsdExporter, gate: threading.Event
) -> None:
    mp.configure_thread_pool(1)
    running = threading.Event()

    @mp.parallel(backend="thread", name=unique_name("statsd-held"))
    def held() -> None:
        running.set()
        assert gate.wait(10)

    first = held()
    assert running.wait(10)
    rest = [held() for _ in range(2)]
    gauges = of(server.flush(exporter), "test.pool.thread")
    assert gauges["queued"][0].value == 2
    assert gauges["busy"][0].value >= 1
    gate.set()
    for handle in [first, *rest]:
        handle.get(10)
    gauges = of(server.flush(exporter), "test.pool.thread")
    assert gauges["queued"][0].value == 0  # gauges are sent every flush, changed or not


@pytest.mark.timeout(20)
def test_an_executor_pool_gauge_counts_its_queued_tasks(server: StatsdServer, exporter: StatsdExporter) -> None:
    # It read 0 for an executor given as backend=, with tasks queued behind its busy worker.
    with two_queued_behind_a_busy_executor(unique_name("statsd-executor")) as pool:
        gauges = of(server.flush(exporter), f"test.pool.executor-{id(pool):x}")
        assert gauges["queued"][0].value == 2
        assert gauges["busy"][0].value == 1  # it read 0 too


@pytest.mark.timeout(20)
def test_an_mp_executors_own_pool_has_gauges(server: StatsdServer, exporter: StatsdExporter) -> None:
    # It had none: its pool was missing from the pools exported (and from health()).
    with two_queued_in_an_executors_pool(unique_name("statsd-mp-executor")) as executor:
        gauges = of(server.flush(exporter), f"test.pool.Executor-{id(executor):x}")
        assert (gauges["queued"][0].value, gauges["busy"][0].value) == (2, 1)


def test_cancelled_and_timed_out_counters(server: StatsdServer, exporter: StatsdExporter, gate: threading.Event) -> None:
    name = unique_name("statsd-outcomes")
    running = threading.Event()

    @mp.parallel(backend="thread", name=name)
    def poll() -> None:
        running.set()
        while not gate.wait(0.005):
            mp.check_cancelled()

    cancelled = poll()
    assert running.wait(10)
    assert cancelled.cancel()
    with pytest.raises(mp.TaskTimeoutError):
        poll.options(timeout=0.05)().get(10)
    mine = of(server.flush(exporter), f"test.{name}")
    assert counter(mine, "cancelled") == 1
    assert counter(mine, "timed_out") == 1
    assert counter(mine, "submitted") == 2
    assert "completed" not in mine and "duration" not in mine  # neither ran to its end
    assert round(sampled_count(mine, "queue_wait")) == 2


# -- deltas ---------------------------------------------------------------------------------------


def test_a_second_flush_sends_only_the_increase(server: StatsdServer, exporter: StatsdExporter) -> None:
    name = unique_name("statsd-delta")
    work = make_work(name)
    run(work, succeed=3, fail=1)
    first = of(server.flush(exporter), f"test.{name}")
    assert (counter(first, "completed"), counter(first, "failed"), counter(first, "submitted")) == (3, 1, 4)
    run(work, succeed=2)
    second = of(server.flush(exporter), f"test.{name}")
    assert counter(second, "completed") == 2
    assert counter(second, "submitted") == 2
    assert "failed" not in second
    assert round(sampled_count(second, "duration")) == 2
    assert round(sampled_count(second, "queue_wait")) == 2
    third = of(server.flush(exporter), f"test.{name}")
    assert third == {}  # nothing happened: nothing is sent


def test_a_sample_rate_is_written_as_digits_and_a_point(server: StatsdServer, exporter: StatsdExporter) -> None:
    """A bucket that gained over 10,000 samples in one flush (fast tasks, a busy second).

    Its rate, 1/count, is below 1e-4, which ``{:g}`` writes as ``8.33333e-05``.
    The reference StatsD server reads a rate as ``@([\\d.]+)``: ``8``, which it
    cannot use, so it counted one sample where there were 12,000.
    """
    name = unique_name("statsd-many-samples")
    samples = 12_000
    counts = _metrics.metrics_for(name).counted()
    with counts.lock:  # what the sync backend counts for 12,000 tasks of 1 ms
        for _ in range(samples):
            counts.total += 1
            counts.count_end(SUCCEEDED, 0.001, 0.0)
    start = len(server.packets)
    assert counter(of(server.flush(exporter), f"test.{name}"), "completed") == samples
    for timer in ("duration", "queue_wait"):
        rates = [line.rpartition("|@")[2] for line in server.lines(start) if line.startswith(f"test.{name}.{timer}:")]
        assert rates and all(re.fullmatch(r"[0-9]*\.[0-9]+", rate) for rate in rates), rates
        assert round(sum(1 / float(rate) for rate in rates)) == samples


@pytest.mark.timeout(30)
def test_a_timer_value_is_written_as_digits_and_a_point(server: StatsdServer, exporter: StatsdExporter) -> None:
    """Scaled to the time measured, a value can be far from every bucket's midpoint.

    ``{:.6g}`` wrote 40 ns as ``4e-05`` ms and 2,000 s as ``2e+06`` ms, where
    a StatsD value is a decimal (a midpoint was always between 0.0005 and
    167,772 ms, which it wrote so). Written as digits and a point, the values
    still add up to the time measured.
    """
    name = unique_name("statsd-far-values")
    counts = _metrics.metrics_for(name).counted()
    for seconds in (4e-8, 2000.0):  # one flush each: one value each, scaled to it alone
        with counts.lock:
            counts.total += 1
            counts.count_end(SUCCEEDED, seconds, seconds)
        start = len(server.packets)
        mine = of(server.flush(exporter), f"test.{name}")
        for timer in ("duration", "queue_wait"):
            sent = [line for line in server.lines(start) if line.startswith(f"test.{name}.{timer}:")]
            values = [line.partition(":")[2].partition("|")[0] for line in sent]
            assert values and all(re.fullmatch(r"[0-9]+(\.[0-9]+)?", value) for value in values), values
            assert sent_mean(mine, timer) == pytest.approx(seconds * 1000.0, rel=1e-4)


def test_counts_restart_after_reset_metrics_without_negative_numbers(
    server: StatsdServer, exporter: StatsdExporter
) -> None:
    name = unique_name("statsd-reset")
    work = make_work(name)
    run(work, succeed=3, seconds=0.02)  # every duration in the bucket (16 ms, 65 ms]
    assert counter(of(server.flush(exporter), f"test.{name}"), "completed") == 3
    mp.reset_metrics()
    run(work, succeed=2, seconds=0.02)
    lines = server.flush(exporter)
    assert all(line.value >= 0 for line in lines), [line for line in lines if line.value < 0]
    assert all(line.rate is None or line.rate > 0 for line in lines)
    mine = of(lines, f"test.{name}")
    assert counter(mine, "completed") == 2
    assert counter(mine, "submitted") == 2
    assert round(sampled_count(mine, "duration")) == 2


def test_after_reset_more_tasks_than_before_are_all_counted(server: StatsdServer, exporter: StatsdExporter) -> None:
    """After ``reset_metrics()`` the next flush must send every task since the reset.

    The exporter tells a reset from growth only by a count going down, so when
    as many or more tasks end after the reset than had been sent before it, it
    sends only the difference (here 1 instead of 3).
    """
    name = unique_name("statsd-reset-more")
    work = make_work(name)
    run(work, succeed=2)
    assert counter(of(server.flush(exporter), f"test.{name}"), "completed") == 2
    mp.reset_metrics()
    run(work, succeed=3)
    mine = of(server.flush(exporter), f"test.{name}")
    assert counter(mine, "completed") == 3, "tasks that ended after reset_metrics() were lost"
    assert counter(mine, "submitted") == 3


def test_after_reset_every_timer_sample_is_sent(server: StatsdServer, exporter: StatsdExporter) -> None:
    """Timers after ``reset_metrics()``: the same guess, made per bucket, loses samples.

    Before the reset: one 20 ms task and two 100 ms tasks (buckets (16, 65] ms and
    (65, 262] ms). After it: two 20 ms tasks. The counters see 3 -> 2 and restart
    correctly, but the 20 ms bucket went 1 -> 2, which reads as growth by one.
    """
    name = unique_name("statsd-reset-timers")
    work = make_work(name)
    run(work, succeed=1, seconds=0.02)
    run(work, succeed=2, seconds=0.1)
    assert round(sampled_count(of(server.flush(exporter), f"test.{name}"), "duration")) == 3
    mp.reset_metrics()
    run(work, succeed=2, seconds=0.02)
    mine = of(server.flush(exporter), f"test.{name}")
    assert counter(mine, "completed") == 2  # the counter restarts right
    assert round(sampled_count(mine, "duration")) == 2, f"timer samples lost after reset_metrics(): {mine['duration']}"


def run_beside_a_paused_one(
    paused: threading.Thread, reached: threading.Event, resume: threading.Event, meanwhile: threading.Thread, what: str
) -> None:
    """Start ``paused``; once it ``reached`` its pause, run ``meanwhile`` beside it; then let ``paused`` go on, and both end.

    ``meanwhile`` gets 2 s: the library may make it wait for ``paused``, which
    then goes on after that bounded wait. ``what``: the failure if ``paused``
    never reaches its pause.
    """
    paused.start()
    try:
        assert reached.wait(10), what
        meanwhile.start()
        meanwhile.join(2)  # done, or waiting for the paused one to go on
    finally:
        resume.set()
        paused.join(10)
        if meanwhile.ident is not None:
            meanwhile.join(10)
    assert not paused.is_alive() and not meanwhile.is_alive()


def test_a_flush_racing_reset_metrics_sends_no_negative_counts(
    server: StatsdServer, exporter: StatsdExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timer flush may land while ``reset_metrics()`` is half done.

    The reset is held right after this test's record was zeroed, and a flush
    runs then (on its own thread, in case the library makes it wait for the
    reset: after a bounded wait the reset goes on). Whatever the interleaving,
    the counts sent after the reset must add up to the tasks run after it, and
    none may be negative.
    """
    name = unique_name("statsd-reset-race")
    work = make_work(name)
    run(work, succeed=5)
    assert counter(of(server.flush(exporter), f"test.{name}"), "completed") == 5

    zeroed, resume = threading.Event(), threading.Event()
    original_reset = _metrics.FunctionMetrics.reset

    def reset_then_pause(record: _metrics.FunctionMetrics) -> None:
        original_reset(record)
        if record.name == name:
            zeroed.set()
            resume.wait(10)

    monkeypatch.setattr(_metrics.FunctionMetrics, "reset", reset_then_pause)
    during: list[Line] = []
    resetter = threading.Thread(target=mp.reset_metrics, name="test-statsd-resetter")
    flusher = threading.Thread(target=lambda: during.extend(server.flush(exporter)), name="test-statsd-flusher")
    run_beside_a_paused_one(resetter, zeroed, resume, flusher, "reset_metrics() never reached this test's record")
    run(work, succeed=2)
    after = server.flush(exporter)
    sent = [line for line in during + after if line.name.startswith(f"test.{name}.")]
    assert all(line.value >= 0 for line in sent), [line for line in sent if line.value < 0]
    completed = sum(line.value for line in sent if line.name.endswith(".completed"))
    assert completed == 2, f"after the reset, 2 tasks completed; the flushes sent {completed}: {sent}"


def test_a_flush_made_while_another_flushes_sends_each_change_once(
    server: StatsdServer, exporter: StatsdExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flush()`` called while the exporter's thread flushes (a job that flushes as it ends).

    The first flush is held right after it read what the last flush sent of
    this test's function; the second runs meanwhile (on its own thread, in case
    the library makes it wait for the first: after a bounded wait the first goes
    on). Both compared with the same last flush, and the server counted each
    task twice.
    """
    name = unique_name("statsd-two-flushes")
    run(make_work(name), succeed=3)
    statsd = sys.modules[StatsdExporter.__module__]
    compared, resume = threading.Event(), threading.Event()
    delta: Callable[[int, int], int] = statsd._delta

    def delta_then_pause(now: int, before: int) -> int:
        if threading.current_thread() is first and not compared.is_set():
            compared.set()
            resume.wait(10)
        return delta(now, before)

    monkeypatch.setattr(statsd, "_delta", delta_then_pause)
    first = threading.Thread(target=exporter.flush, name="test-statsd-first-flush")
    second = threading.Thread(target=exporter.flush, name="test-statsd-second-flush")
    start = len(server.packets)
    run_beside_a_paused_one(first, compared, resume, second, "the first flush never compared this test's counts")
    server.flush(exporter)  # after every packet of the two flushes: a third, with nothing new
    mine = of([Line.parse(text) for text in server.lines(start)], f"test.{name}")
    assert counter(mine, "completed") == 3, mine["completed"]
    assert counter(mine, "submitted") == 3


# -- where the server is --------------------------------------------------------------------------


def ipv6_loopback_missing() -> str | None:
    """Why this machine cannot bind a UDP socket to ::1; None where it can."""
    if not socket.has_ipv6:
        return "this Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        return f"no IPv6 loopback here: binding ::1 failed ({error})"
    return None


needs_ipv6 = pytest.mark.skipif(ipv6_loopback_missing() is not None, reason=str(ipv6_loopback_missing()))


class Names:
    """Made-up host names (``*.statsd.test``) that resolve to test servers, or fail; other names resolve as usual.

    ``socket.getaddrinfo`` is replaced for the test; each lookup of a made-up
    name is counted, so that a test waits for the exporter's flushes by them.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: dict[str, list[StatsdServer] | OSError] = {}
        self.lookups = 0
        self._changed = threading.Condition()
        system = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
            if not (isinstance(host, str) and host.endswith(".statsd.test")):
                return system(host, port, family, type, proto, flags)
            with self._changed:
                self.lookups += 1
                self._changed.notify_all()
                answer = self.answers[host]
            if isinstance(answer, OSError):
                raise answer
            return [(server.family, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", address(server, port)) for server in answer]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    def wait_for_lookups(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.lookups >= count, 30), f"{self.lookups} lookups, not {count}"


def address(server: StatsdServer, port: int) -> tuple[Any, ...]:
    """``server``'s socket address with ``port``, as ``getaddrinfo`` gives one: 4 fields for IPv6."""
    return (server.host, port, 0, 0) if server.family == socket.AF_INET6 else (server.host, port)


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    return Names(monkeypatch)


@contextlib.contextmanager
def listening(host: str) -> Iterator[StatsdServer]:
    receiver = StatsdServer(host)
    try:
        yield receiver
    finally:
        receiver.stop()


@contextlib.contextmanager
def exporting_to(host: str, port: int, interval: float = 3600) -> Iterator[StatsdExporter]:
    sender = StatsdExporter(host, port, prefix="test", interval=interval)
    try:
        yield sender
    finally:
        sender.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_an_address_of_either_family_receives_the_flush(host: str) -> None:
    # The exporter's socket was IPv4 only: every packet for ::1 was refused, and the metrics were lost silently.
    name = unique_name("statsd-family")
    run(make_work(name), succeed=2)
    with listening(host) as server, exporting_to(host, server.port) as exporter:
        mine = of(server.flush(exporter), f"test.{name}")
    assert counter(mine, "completed") == 2


@needs_ipv6
def test_a_name_that_resolves_only_to_ipv6_receives_the_flush(names: Names) -> None:
    name = unique_name("statsd-ipv6-name")
    run(make_work(name), succeed=3)
    with listening("::1") as server, exporting_to("v6only.statsd.test", server.port) as exporter:
        names.answers["v6only.statsd.test"] = [server]
        mine = of(server.flush(exporter), f"test.{name}")
    assert counter(mine, "completed") == 3


@contextlib.contextmanager
def on_one_port(first: str, second: str) -> Iterator[tuple[StatsdServer, StatsdServer]]:
    """A server on address ``first`` and one on ``second``, on the same port: where a name of both addresses sends."""
    for _ in range(20):
        one = StatsdServer(first)
        try:
            other = StatsdServer(second, one.port)
        except OSError as error:
            one.stop()
            if error.errno == errno.EADDRNOTAVAIL:
                pytest.skip(f"{second} is no address of this machine: {error}")
            continue  # that port is taken there: try another
        try:
            yield one, other
        finally:
            one.stop()
            other.stop()
        return
    raise AssertionError(f"found no port free on both {first} and {second} in 20 tries")


@needs_ipv6
def test_a_name_of_both_families_is_sent_to_its_ipv4_address(names: Names) -> None:
    """The reference StatsD server listens on IPv4 only by default, and ``localhost`` resolves to ::1 first on many systems."""
    name = unique_name("statsd-both")
    run(make_work(name), succeed=1)
    with on_one_port("127.0.0.1", "::1") as (v4, v6), exporting_to("both.statsd.test", v4.port) as exporter:
        names.answers["both.statsd.test"] = [v6, v4]  # IPv6 first, as getaddrinfo orders them by default
        assert counter(of(v4.flush(exporter), f"test.{name}"), "completed") == 1
        v6.flush(exporter)  # its marker, sent after the second flush, is all it may have received
        assert v6.lines() == [], "a flush went to the IPv6 address too"


@pytest.mark.parametrize("second", ["127.0.0.2", pytest.param("::1", marks=needs_ipv6)])
def test_the_name_is_looked_up_again_once_its_address_is_old(
    names: Names, second: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A StatsD server that moved (a new pod: its name now gives another address) receives the flushes after the next lookup.

    Not a lookup at every flush: in a container without a resolver cache, that
    was a DNS query every second.
    """
    now = [1000.0]
    monkeypatch.setattr(statsd_module, "_now", lambda: now[0])
    name = unique_name("statsd-moved")
    work = make_work(name)
    run(work, succeed=1)
    with on_one_port("127.0.0.1", second) as (first, moved), exporting_to("moving.statsd.test", first.port) as exporter:
        names.answers["moving.statsd.test"] = [first]
        assert counter(of(first.flush(exporter), f"test.{name}"), "completed") == 1
        assert names.lookups == 1
        names.answers["moving.statsd.test"] = [moved]
        run(work, succeed=2)
        now[0] += statsd_module._LOOKUP_EVERY - 1
        assert counter(of(first.flush(exporter), f"test.{name}"), "completed") == 2  # not looked up yet
        assert names.lookups == 1
        run(work, succeed=3)
        now[0] += 1
        assert counter(of(moved.flush(exporter), f"test.{name}"), "completed") == 3
        assert names.lookups == 2


def test_a_name_that_does_not_resolve_is_logged_once_per_failure_and_its_counts_wait(
    names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    """The flushing thread goes on while the name does not resolve; the counts of that time arrive once it does.

    A container's StatsD sidecar may get its name after the program started.
    One warning per kind of failure, not one per flush (every second).
    """
    caplog.set_level(logging.INFO, logger="makeparallel")
    name = unique_name("statsd-unresolved")
    run(make_work(name), succeed=3)
    host = "sidecar.statsd.test"
    names.answers[host] = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with listening("127.0.0.1") as server, exporting_to(host, server.port, interval=0.01) as exporter:
        exporter.flush()  # called directly, it does not raise either
        exporter.start()
        names.wait_for_lookups(5)
        names.answers[host] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        names.wait_for_lookups(names.lookups + 5)
        thread = exporter._thread
        assert thread is not None and thread.is_alive()
        names.answers[host] = [server]
        wanted = f"test.{name}.completed:3|c"
        assert server.wait(lambda: wanted in server.lines()), f"the counts never arrived: {server.lines()}"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "StatsD" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert all(f"cannot resolve {host!r}" in text for text in warnings), warnings
    assert "Name or service not known" in warnings[0] and "Temporary failure" in warnings[1]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a failed lookup killed or failed a flush"
    assert any(f"sends to {host!r} again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


# -- robustness --------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback UDP port nothing listens on (bound, noted, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_nothing_listening_neither_raises_nor_blocks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="makeparallel")
    name = unique_name("statsd-nobody")
    work = make_work(name, backend="thread")
    exporter = StatsdExporter("127.0.0.1", closed_port(), prefix="test", interval=0.01)
    try:
        started = time.monotonic()
        for _ in range(5):
            run(work, succeed=2, fail=1)
            exporter.flush()  # ICMP "port unreachable" comes back: must not raise
        assert time.monotonic() - started < 10.0
        exporter.start()  # the timer thread flushes into the void too
        handles = [work() for _ in range(20)]
        assert mp.gather(handles, timeout=10) == [None] * 20
    finally:
        exporter.stop()
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert (metrics.completed_tasks, metrics.failed_tasks) == (30, 5)
    assert not [r for r in caplog.records if "StatsD" in r.getMessage()]


@pytest.mark.parametrize("started_before", [True, False])
def test_a_stopped_exporter_refuses_to_start_again(server: StatsdServer, started_before: bool) -> None:
    # Said "already started" where it was stopped; never started, it started a
    # thread that ended at once, with the sockets closed: nothing was ever sent.
    exporter = StatsdExporter("127.0.0.1", server.port, prefix="test", interval=3600)
    if started_before:
        exporter.start()
    exporter.stop()
    with pytest.raises(RuntimeError, match="stopped.*make a new StatsdExporter"):
        exporter.start()


def test_start_runs_the_timer_thread_and_stop_joins_it(server: StatsdServer) -> None:
    name = unique_name("statsd-timer")
    work = make_work(name)
    exporter = StatsdExporter("127.0.0.1", server.port, prefix="test", interval=0.02)
    assert exporter.start() is exporter
    try:
        with pytest.raises(RuntimeError, match="already started"):
            exporter.start()
        thread = exporter._thread
        assert thread is not None and thread.is_alive() and thread.daemon
        run(work, succeed=3)
        wanted = f"test.{name}.completed:3|c"
        assert server.wait(lambda: wanted in server.lines()), "the timer never flushed"
    finally:
        exporter.stop()
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "makeparallel-statsd"]


def test_stop_flushes_once_more(server: StatsdServer) -> None:
    name = unique_name("statsd-final")
    work = make_work(name)
    exporter = StatsdExporter("127.0.0.1", server.port, prefix="test", interval=3600).start()
    try:
        run(work, succeed=2)
    finally:
        exporter.stop()  # the timer would not fire for an hour: this flush is stop()'s
    wanted = f"test.{name}.completed:2|c"
    assert server.wait(lambda: wanted in server.lines()), server.lines()


# A Ctrl-C in a program's first second, its exporter stopped at exit: stop()'s flush, on the
# exporter's thread, built the first TaskMetrics there, a dataclass whose methods exec makes.
# Source run by exec after a KeyboardInterrupt ended the main module clears CPython's record
# of it, and the program exited with status 1, not killed by SIGINT as a shell expects (_load).
STOPPED_AT_EXIT_AFTER_CTRL_C = """
import atexit
import sys
import makeparallel as mp
from makeparallel.statsd import StatsdExporter

exporter = StatsdExporter("127.0.0.1", int(sys.argv[1]), interval=3600).start()
atexit.register(exporter.stop)
mp.gather([mp.parallel(abs)(-i) for i in range(3)])
raise KeyboardInterrupt  # as a Ctrl-C here would
"""


@pytest.mark.skipif(sys.platform == "win32", reason="death by a signal is POSIX-only")
def test_a_program_interrupted_with_its_exporter_stopped_at_exit_dies_of_sigint(server: StatsdServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}  # its exit runs no code of coverage's
    result = subprocess.run(
        [sys.executable, "-c", STOPPED_AT_EXIT_AFTER_CTRL_C, str(server.port)],
        capture_output=True, text=True, timeout=30, check=False, env=env,
    )
    assert result.returncode == -signal.SIGINT, f"exit status {result.returncode}\n{result.stderr}"
    assert "KeyboardInterrupt" in result.stderr, result.stderr
    assert server.wait(lambda: any(".abs.completed:3|c" in line for line in server.lines())), server.lines()


def test_stop_without_start_opens_no_socket() -> None:
    exporter = StatsdExporter("127.0.0.1", closed_port())
    exporter.stop()
    assert exporter._sockets == {}


def test_stop_closes_the_sockets_and_a_flush_after_it_opens_none(server: StatsdServer) -> None:
    exporter = StatsdExporter("127.0.0.1", server.port, prefix="test", interval=3600)
    server.flush(exporter)
    sockets = list(exporter._sockets.values())
    assert len(sockets) == 1
    exporter.stop()
    assert [sender.fileno() for sender in sockets] == [-1]
    exporter.flush()  # sends nothing, and does not raise
    assert exporter._sockets == {}


def test_packets_never_exceed_the_ethernet_payload(server: StatsdServer, exporter: StatsdExporter) -> None:
    base = unique_name("statsd-many")
    names = [f"{base}-{i:03d}-{'x' * 60}" for i in range(60)]
    for function_name in names:
        run(make_work(function_name), succeed=1)
    server.flush(exporter)
    packets = list(server.packets)
    assert all(len(packet) <= MAX_PACKET for packet in packets), max(map(len, packets))
    carrying = [p for p in packets if base.encode() in p]
    assert len(carrying) >= 2, "60 functions' lines cannot fit one packet"
    for packet in packets:
        for text in packet.decode().split("\n"):
            Line.parse(text)  # lines are never split across packets
    received = server.lines()
    for function_name in names:
        assert f"test.{function_name}.completed:1|c" in received


def test_packets_are_sized_in_bytes_with_a_prefix_that_is_not_ascii(server: StatsdServer) -> None:
    # Sized in characters, a packet of "é" (two bytes each) went out past the payload.
    prefix = "é" * 40
    exporter = StatsdExporter("127.0.0.1", server.port, prefix=prefix, interval=3600)
    base = unique_name("statsd-bytes")
    names = [f"{base}-{i:03d}" for i in range(40)]
    for function_name in names:
        run(make_work(function_name), succeed=1)
    server.flush(exporter)
    exporter.stop()
    packets = list(server.packets)
    assert all(len(packet) <= MAX_PACKET for packet in packets), max(map(len, packets))
    received = server.lines()
    for function_name in names:
        assert f"{prefix}.{function_name}.completed:1|c" in received


# An infinite interval killed the flushing thread at its first wait (OverflowError), and
# an int too large for a float was refused with OverflowError.
@pytest.mark.parametrize(
    "interval", [0, -1, float("nan"), "1", None, float("inf"), pytest.param(10**400, id="int too large for a float")]
)
def test_bad_interval_is_rejected(interval: Any) -> None:
    with pytest.raises(ValueError, match="interval must be a finite number of seconds > 0"):
        StatsdExporter(interval=interval)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"port": "8125"}, TypeError, "port must be an int"),  # read from the environment, say
        ({"port": True}, TypeError, "port must be an int"),
        ({"port": 70000}, ValueError, "port must be an int"),
        ({"port": -1}, ValueError, "port must be an int"),
        ({"port": 0}, ValueError, "port must be an int from 1"),  # no destination: every packet refused, silently
        ({"host": None}, TypeError, "host must be"),
        ({"host": ""}, ValueError, "host must name"),
        ({"host": "statsd..example"}, ValueError, "host must be a host name or an address"),  # an empty label
        ({"host": "x" * 64 + ".example"}, ValueError, "host must be a host name or an address"),  # a label over 63
        ({"host": "127.0.0.1:8125"}, ValueError, "give the port as port="),
        ({"host": "statsd.example:8125"}, ValueError, "give the port as port="),
        ({"host": "[::1]"}, ValueError, "without brackets"),
        ({"host": " 127.0.0.1"}, ValueError, "no spaces"),
        ({"host": "statsd .example"}, ValueError, "no spaces"),  # inside: no lookup finds it either
        ({"host": "stats\td.example"}, ValueError, "no spaces"),
        ({"prefix": None}, TypeError, "prefix must be a str"),
        # Each broke every line of every flush: the server read "a" as the name and "b.fn..." as its value.
        ({"prefix": "a:b"}, ValueError, "prefix must be metric name labels"),
        ({"prefix": "x|y"}, ValueError, "prefix must be metric name labels"),
        ({"prefix": "rate@2"}, ValueError, "prefix must be metric name labels"),
        ({"prefix": "my app"}, ValueError, "prefix must be metric name labels"),
        ({"prefix": "line\nbreak"}, ValueError, "prefix must be metric name labels"),
        ({"prefix": "myapp..makeparallel"}, ValueError, "an empty label"),  # a path segment of nothing
        ({"prefix": ".myapp"}, ValueError, "an empty label"),
        # os.fsdecode() of bytes that are not UTF-8 (an environment variable's): no line could be encoded.
        ({"prefix": "myapp\udcff"}, ValueError, r"prefix must be encodable in UTF-8 .*'myapp\\udcff'"),
    ],
)
def test_a_bad_address_or_prefix_is_refused_at_construction(arguments: dict[str, Any], error: type, message: str) -> None:
    """Accepted, it failed every flush in the exporter's thread, logged, and nothing was ever sent."""
    with pytest.raises(error, match=message):
        StatsdExporter(**arguments)


def test_an_empty_prefix_puts_nothing_before_the_names(server: StatsdServer) -> None:
    """Each name began with a dot: an empty first path segment, which Graphite stores as a folder of no name."""
    name = unique_name("unprefixed")
    run(make_work(name), succeed=1)
    exporter = StatsdExporter("127.0.0.1", server.port, prefix="", interval=3600)
    try:
        lines = server.flush(exporter)
    finally:
        exporter.stop()
    assert counter(of(lines, sanitised(name)), "completed") == 1
    assert lines
    assert not [line.name for line in lines if line.name.startswith(".")]


def test_names_with_dots_and_spaces_are_sanitised(server: StatsdServer) -> None:
    token = uuid.uuid4().hex
    name = f"my.module fn {token}: v|2"
    run(make_work(name), succeed=1)
    exporter = StatsdExporter("127.0.0.1", server.port, prefix="test.app.", interval=3600)
    try:
        lines = server.flush(exporter, prefix="test.app")
    finally:
        exporter.stop()
    expected = f"test.app.my_module_fn_{token}_v_2"
    assert counter(of(lines, expected), "completed") == 1
    for line in lines:
        assert " " not in line.name
        assert line.name.startswith("test.app.")  # the prefix's trailing dot is not doubled


def test_names_of_other_scripts_stay_apart_and_ascii(server: StatsdServer) -> None:
    """Their letters were dropped: every name of Chinese characters was sent as "unnamed",
    and "größe" and "grüße" both as "gr_e", one series for several functions."""
    token = uuid.uuid4().hex
    names = [f"处理_{token}", f"处置_{token}", f"größe_{token}", f"grüße_{token}", "处理", "函数"]
    for name in names:
        run(make_work(name), succeed=1)
    exporter = StatsdExporter("127.0.0.1", server.port, prefix="test", interval=3600)
    try:
        lines = server.flush(exporter)
    finally:
        exporter.stop()
    completed = {line.name.removesuffix(".completed") for line in lines if line.name.endswith(".completed")}
    sent = {name: statsd_module._safe(name) for name in names}
    assert len(set(sent.values())) == len(names), sent
    for name, safe in sent.items():
        assert f"test.{safe}" in completed
        assert re.fullmatch(r"[A-Za-z0-9_\-]+", safe), safe
    assert sent[f"größe_{token}"].startswith(f"gro_e_{token}_")  # what can be read is kept
    assert statsd_module._safe("Worker.run") == "Worker_run"  # an ASCII name is sent as it always was


# A program that started an exporter and never stopped it (a batch job, a service ended by
# its process manager) lost every count since the last flush: its thread is a daemon,
# killed at exit without a last flush. With an interval longer than the program, nothing
# at all was sent. The exporter flushes at exit, after the pools have waited for their
# tasks. In the second program the exporter is started after the first pool, whose exit
# hook was registered first and so runs last: a plain atexit hook flushed before that
# wait. Its task ends at exit (the main thread done) once the last flush was made, or
# after 2 s without one: the flush made first misses it, whatever the timing.
NEVER_STOPPED = """
import sys
import threading
import makeparallel as mp
from makeparallel.statsd import StatsdExporter

port = int(sys.argv[1])
flushed = threading.Event()


class Exporter(StatsdExporter):
    def flush(self):
        super().flush()
        flushed.set()


if sys.argv[2] == "before":
    Exporter("127.0.0.1", port, prefix="atexit", interval=3600).start()
    mp.gather([mp.parallel(abs)(-i) for i in range(3)])
else:
    mp.gather([mp.parallel(abs)(-i) for i in range(3)])
    Exporter("127.0.0.1", port, prefix="atexit", interval=3600).start()
    started = threading.Event()

    @mp.parallel
    def last():
        started.set()
        threading.main_thread().join(20)
        flushed.wait(2)
        return 1

    last()
    started.wait(10)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("started", ["before", "after"])
def test_an_exporter_never_stopped_flushes_at_exit(server: StatsdServer, started: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NEVER_STOPPED, str(server.port), started],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    wanted = ["atexit.abs.completed:3|c"] + (["atexit.last.completed:1|c"] if started == "after" else [])
    assert server.wait(lambda: all(line in server.lines() for line in wanted)), server.lines()


def test_stop_takes_back_the_flush_at_exit(server: StatsdServer) -> None:
    # Or each exporter started and stopped (one per test, per reconfiguration) stayed
    # referenced until exit, to be stopped again there.
    exporter = StatsdExporter("127.0.0.1", server.port, prefix="test", interval=3600).start()
    assert exporter._stop_at_exit in _runtime._after_exit
    exporter.stop()
    assert exporter._stop_at_exit not in _runtime._after_exit


# The last flush hangs, as a lookup of a host whose resolver never answers does.
STUCK_AT_EXIT = """
import threading, sys
import makeparallel as mp
from makeparallel import statsd
from makeparallel.statsd import StatsdExporter

statsd.EXIT_FLUSH_WAIT = 0.2


class Exporter(StatsdExporter):
    def flush(self):  # the first is the exit's (interval=3600)
        threading.Event().wait()  # for good: only the exit's bound ends the wait for it


Exporter("127.0.0.1", int(sys.argv[1]), prefix="stuck", interval=3600).start()
mp.gather([mp.parallel(abs)(-1)])
print("exiting", flush=True)
"""


# The same, the wait ended by a Ctrl-C; a second exporter's flush is skipped, and an
# exit hook the program registered before the first pool still runs. Without a pool (a
# program ended before its first task), the exporters' hooks are atexit's own: the one
# started last runs first, and the Ctrl-C must skip the other there too.
INTERRUPTED_AT_EXIT = """
import atexit, os, sys, threading
import makeparallel as mp
from makeparallel import statsd
from makeparallel.statsd import StatsdExporter

statsd.EXIT_FLUSH_WAIT = 600
atexit.register(print, "program's hook ran", flush=True)


class Exporter(StatsdExporter):
    def flush(self):  # the first is the exit's (interval=3600)
        print("flushing", flush=True)
        threading.Event().wait()


if sys.argv[2] == "pool":
    mp.gather([mp.parallel(abs)(-1)])
Exporter("127.0.0.1", int(sys.argv[1]), prefix="one", interval=3600).start()
Exporter("127.0.0.1", int(sys.argv[1]), prefix="two", interval=3600).start()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pools", ["pool", "no pool"])
def test_a_ctrl_c_during_the_last_flush_ends_the_exit_quietly(server: StatsdServer, pools: str) -> None:
    # It escaped the pools' exit hook, printed with its traceback as an exception ignored;
    # without a pool, it escaped atexit's own call of the hook, and the next exporter's
    # flush was waited for still.
    result = interrupted_once_it_says(
        [sys.executable, "-c", INTERRUPTED_AT_EXIT, str(server.port), pools], "flushing", timeout=30
    )
    assert (result.stdout, result.returncode) == ("program's hook ran\n", 0), result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.timeout(60)
def test_a_stuck_last_flush_does_not_hold_the_exit(server: StatsdServer) -> None:
    # Waited for as stop() waits (5 * interval + 5 seconds), it held the exit for an hour.
    result = subprocess.run(
        [sys.executable, "-c", STUCK_AT_EXIT, str(server.port)], capture_output=True, text=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout) == (0, "exiting\n"), result.stderr


# -- across os.fork() ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: a fork of a threaded process; the case itself
def test_a_started_exporter_goes_on_in_a_forked_child(server: StatsdServer, exporter: StatsdExporter) -> None:
    """A forking server's worker (``--preload``) sent nothing: the flushing thread is not copied by a fork.

    The child has a thread and a socket of its own, and sends its own tasks
    only: the parent's, flushed before the fork, are not sent again.
    """
    name = unique_name("statsd-fork")
    work = make_work(name, backend="thread")
    exporter.start()
    run(work, succeed=3)
    assert counter(of(server.flush(exporter), f"test.{name}"), "completed") == 3
    parents_thread, parents_sockets = exporter._thread, list(exporter._sockets.values())
    pid = os.fork()
    if pid == 0:  # the child: its exit code says how it went
        code = 1
        try:
            run(work, succeed=2)
            thread = exporter._thread
            assert thread is not parents_thread and thread is not None and thread.is_alive(), thread
            assert [sender.fileno() for sender in parents_sockets] == [-1]  # the child's copies, closed
            exporter.stop()  # its thread's last flush sends the child's two tasks
            code = 0
        except BaseException:  # noqa: BLE001  # anything: printed, and the exit code says so
            traceback.print_exc()
        finally:
            os._exit(code)
    assert child_exit_code(pid) == 0
    marker = f"test.{name}.completed:2|c"
    assert server.wait(lambda: marker in server.lines()), server.lines()
    assert counter(of([Line.parse(text) for text in server.lines()], f"test.{name}"), "completed") == 5
    # The parent's exporter goes on as it was: its thread, its socket, its own tasks only.
    assert exporter._thread is parents_thread and parents_thread.is_alive()
    run(work, succeed=1)
    assert counter(of(server.flush(exporter), f"test.{name}"), "completed") == 1


# The exporter's module imported first, as an app that sets up its metrics before anything
# else: the modules a flush reads are loaded after it. The parent holds the metrics' lock as
# it forks, as its exporter's thread does mid-flush; the child's must read the child's new one.
FORKED_MID_FLUSH = """
import os, sys, threading, traceback
from makeparallel.statsd import StatsdExporter

entered, returned = threading.Event(), threading.Event()

def wait_for_the_child_s_first_flush():
    # After the exporter's at-fork hook, before those of the modules loaded since: the
    # child's thread flushes meanwhile (or blocks there, on a lock the parent held).
    if entered.wait(10):
        returned.wait(2)

os.register_at_fork(after_in_child=wait_for_the_child_s_first_flush)
import makeparallel as mp
from makeparallel import _metrics

def snapshot():  # the child's flushes only: the parent's meanwhile set nothing
    in_child = os.getpid() != parent
    if in_child:
        entered.set()
    try:
        return real_snapshot()
    finally:
        if in_child:
            returned.set()

parent = os.getpid()
real_snapshot, mp.metrics_snapshot = mp.metrics_snapshot, snapshot
exporter = StatsdExporter("127.0.0.1", int(sys.argv[1]), prefix="forked", interval=0.001).start()
mp.parallel(backend="thread")(abs)(-1).get(timeout=30)
held, release = threading.Event(), threading.Event()

def hold_the_metrics_lock():  # as the parent's exporter thread does, mid-flush
    with _metrics._reset_lock:
        held.set()
        release.wait(30)

threading.Thread(target=hold_the_metrics_lock, daemon=True).start()
held.wait(30)
pid = os.fork()
if pid == 0:
    code = 1
    try:
        mp.parallel(backend="thread")(abs)(-2).get(timeout=30)
        flush = threading.Thread(target=exporter.flush, daemon=True)
        flush.start()
        flush.join(10)
        code = 3 if flush.is_alive() else 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)
release.set()
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
exporter.stop()
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_a_child_forked_mid_flush_flushes_where_the_exporter_was_imported_first(server: StatsdServer) -> None:
    """The child's thread started in the exporter's at-fork hook, before the hooks of the modules imported later.

    It read the metrics' lock, held by the parent's thread mid-flush, before
    their hook gave the child a new one: it waited for good, holding the
    exporter's flush lock, and the child sent nothing ever again.
    """
    result = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", FORKED_MID_FLUSH, str(server.port)],
        capture_output=True, text=True, timeout=50, check=False,
    )
    assert (result.returncode, result.stdout) == (0, "0\n"), result.stderr
