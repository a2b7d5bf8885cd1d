"""Measuring other processes' load: what the demo and the GIL watch check before blaming."""

from __future__ import annotations

import subprocess
import sys

import pytest

from makeparallel import _load
from makeparallel._load import BUSY_CPUS, MIN_WINDOW, LoadMeter, recent_load

SPIN = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\n"


def test_other_processes_spinning_are_counted() -> None:
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


def test_a_worker_that_ended_is_skipped() -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    assert ended.wait(timeout=30) == 0  # reaped: its pid names no process now
    assert LoadMeter(own_pids=lambda: [ended.pid])._our_cpu() == 0.0


def test_recent_load_subtracts_our_own_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_load.os, "getloadavg", lambda: (2.5, 2.0, 1.0))
    assert recent_load(ours=2.0) == pytest.approx(0.5)
    assert recent_load(ours=4.0) == 0.0
