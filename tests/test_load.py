"""Measuring other processes' load: what the demo and the GIL watch check before blaming."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from makeparallel import _load
from makeparallel._load import BUSY_CPUS, MIN_WINDOW, LoadMeter, recent_load

SPIN = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\n"


@pytest.fixture(params=["proc", "psutil"])
def counters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Read from ``/proc`` where there is one, else from psutil (macOS): both, here."""
    if request.param == "proc" and not _load._PROCFS:
        pytest.skip("no /proc here")
    if request.param == "psutil":
        monkeypatch.setattr(_load, "_PROCFS", False)
    return str(request.param)


def test_other_processes_spinning_are_counted(counters: str) -> None:
    meter = LoadMeter()
    meter.start()
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(2)]
    for spinner in spinners:
        assert spinner.wait(timeout=30) == 0
    others = meter.stop()
    assert others is not None and others >= BUSY_CPUS, others


class Readings:
    """A scripted clock and CPU counters: (clock, machine busy, ours) per reading."""

    def __init__(self, *readings: tuple[float, float, float]) -> None:
        self._readings = iter(readings)
        self.clock = self.busy = self.ours = 0.0

    def advance(self) -> None:
        self.clock, self.busy, self.ours = next(self._readings)

    def meter(self, monkeypatch: pytest.MonkeyPatch) -> LoadMeter:
        meter = LoadMeter(clock=lambda: self.clock)
        monkeypatch.setattr(meter, "_machine_busy", lambda: self.busy)
        monkeypatch.setattr(meter, "_our_cpu", lambda: self.ours)
        return meter


def test_this_process_is_subtracted(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = Readings((10.0, 100.0, 50.0), (12.0, 103.0, 51.5))
    meter = readings.meter(monkeypatch)
    readings.advance()
    meter.start()
    readings.advance()
    assert meter.stop() == pytest.approx((3.0 - 1.5) / 2.0)


def test_a_window_below_the_counters_resolution_says_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = Readings((10.0, 100.0, 50.0), (10.0 + MIN_WINDOW / 2, 100.02, 50.0))
    meter = readings.meter(monkeypatch)
    readings.advance()
    meter.start()
    readings.advance()
    assert meter.stop() is None


# Spins for 0.2 s of CPU time, says so, then uses none until its input closes.
SPIN_THEN_WAIT = (
    "import sys, time\nwhile time.process_time() < 0.2: pass\nprint('spun', flush=True)\nsys.stdin.read()\n"
)


@pytest.mark.skipif(not _load._PROCFS, reason="reads /proc, which this system does not have")
def test_proc_counts_a_process_cpu_time_as_psutil_does() -> None:
    spinner = subprocess.Popen(
        [sys.executable, "-c", SPIN_THEN_WAIT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert spinner.stdout is not None and spinner.stdout.readline() == "spun\n"
        times = psutil.Process(spinner.pid).cpu_times()
        ours = LoadMeter(own_pids=lambda: [spinner.pid])._our_cpu()
        assert ours >= 0.19  # in whole ticks of 10 ms: its 0.2 s may read as 0.19
        assert ours == pytest.approx(times.user + times.system, abs=0.02)  # a tick or two, as it reaches its read
    finally:
        spinner.communicate(input="", timeout=30)


@pytest.mark.skipif(not _load._PROCFS, reason="reads /proc, which this system does not have")
def test_proc_counts_the_machine_busy_time_as_psutil_does() -> None:
    def psutil_busy() -> float:
        times = psutil.cpu_times()  # guest time is counted in user time already
        return sum(times) - times.idle - times.iowait - times.guest - times.guest_nice

    before = psutil_busy()
    ours = LoadMeter._machine_busy()
    after = psutil_busy()
    assert before - 0.05 <= ours <= after + 0.05  # its ticks, read in between


def test_this_process_counts_its_own_cpu_time() -> None:
    meter = LoadMeter()
    before = meter._our_cpu()
    end = time.process_time() + 0.1
    while time.process_time() < end:
        pass
    # (Ticks of 10 ms, the last maybe not counted yet; rounded: 16.48 - 16.39 is 0.0899999... in floats.)
    assert round(meter._our_cpu() - before, 6) >= 0.09


def test_a_worker_that_ended_is_skipped(counters: str) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    assert ended.wait(timeout=30) == 0  # reaped: its pid names no process now
    assert LoadMeter(own_pids=lambda: [ended.pid])._our_cpu() == 0.0


def test_recent_load_subtracts_our_own_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_load.os, "getloadavg", lambda: (2.5, 2.0, 1.0))
    assert recent_load(ours=2.0) == pytest.approx(0.5)
    assert recent_load(ours=4.0) == 0.0
