"""The command line: ``makeparallel info`` and ``makeparallel demo``."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys

from collections.abc import Callable
from typing import Any

import pytest
from unrunnable_backends import UNRUNNABLE_BACKENDS

import makeparallel as mp
from makeparallel.__main__ import main
from makeparallel import _demo
from makeparallel._cpus import usable_cpus
from makeparallel._memory_budget import memory_budget

INFO_TYPES: dict[str, type | tuple[type, ...]] = {
    "makeparallel_version": str,
    "python_version": str,
    "python_implementation": str,
    "free_threaded_build": bool,
    "gil_enabled": bool,
    "logical_cores": (int, type(None)),
    "usable_cores": int,
    "usable_cores_source": str,
    "physical_cores": (int, type(None)),
    "memory": dict,
    "default_backend": str,
    "backends": list,
    "thread_pool": dict,
    "process_pool": dict,
}

# One table row per workload: label, sequential, parallel, speed-up.
_ROW = re.compile(
    r"^(?P<label>.+?)\s+(?P<backend>thread|process)\s+(?P<seq>\d+\.\d+)s\s+"
    r"(?P<par>\d+\.\d+)s\s+(?P<speedup>\S+)x$"
)


# The interpreter pool exists from Python 3.14; distributed is in the test extras.
BACKENDS_HERE = ["thread", "process", "sync", "auto", *(["interpreter"] if sys.version_info >= (3, 14) else []), "dask"]


def test_info_prints_the_interpreter_and_the_pool(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    version = ".".join(map(str, sys.version_info[:3]))
    assert re.search(rf"^python\s+{re.escape(version)} \(", out, re.MULTILINE), out
    assert re.search(r"^GIL enabled now\s+(yes|no)$", out, re.MULTILINE), out
    assert re.search(rf"^backends\s+{', '.join(BACKENDS_HERE)}$", out, re.MULTILINE), out
    threads = mp.get_thread_pool_info()["num_threads"]
    assert re.search(rf"^thread pool\s+{threads} threads ", out, re.MULTILINE), out
    workers = mp.get_process_pool_info()["num_workers"]
    assert re.search(
        rf"^process pool\s+{workers} workers \(\d+ ready, \d+ busy\), \d+ tasks queued, \d+ restarts$", out, re.MULTILINE
    ), out
    cpus, source = usable_cpus()
    assert re.search(rf"^usable cores\s+{cpus} \(by .+\)$", out, re.MULTILINE), out
    assert re.search(r"^memory\s+\d+\.\d GiB in use of \d+\.\d GiB \(source: (cgroup v[12]|RLIMIT_AS|host)\)$", out, re.MULTILINE), out


def test_info_json_has_every_key_with_its_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == set(INFO_TYPES)
    for key, expected in INFO_TYPES.items():
        assert isinstance(info[key], expected), (key, info[key])
    assert info["makeparallel_version"] == mp.__version__
    assert info["default_backend"] == "thread"
    assert info["backends"] == BACKENDS_HERE
    assert info["thread_pool"]["num_threads"] == mp.get_thread_pool_info()["num_threads"]
    assert info["process_pool"]["num_workers"] == mp.get_process_pool_info()["num_workers"]
    assert (info["usable_cores"], info["usable_cores_source"]) == tuple(usable_cpus())
    memory = info["memory"]
    budget = memory_budget()
    assert memory["source"] == budget.source and memory["limit_bytes"] == budget.limit, memory
    assert memory["used_bytes"] >= 0 and memory["limit_bytes"] > 0, memory
    if info["gil_enabled"] is False:
        assert info["free_threaded_build"] is True  # only such a build can run without it


def test_info_reports_the_backend_chosen_by_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAKEPARALLEL_BACKEND", "sync")
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["default_backend"] == "sync"


def test_info_explains_a_bad_backend_in_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAKEPARALLEL_BACKEND", "warp-drive")
    assert main(["info"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "MAKEPARALLEL_BACKEND must be one of 'thread', 'process', 'sync', 'auto'," in captured.err
    assert "got 'warp-drive'" in captured.err


@pytest.mark.parametrize(("backend", "setup", "reason"), UNRUNNABLE_BACKENDS)
@pytest.mark.parametrize("argv", [["info"], ["info", "--json"]])
def test_info_explains_a_backend_in_the_environment_that_this_python_cannot_run(
    backend: str, setup: Callable[[pytest.MonkeyPatch], None], reason: str, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It reported that backend as the default, with exit code 0 and no word of
    # it, though the first task of every function that names none fails.
    setup(monkeypatch)
    monkeypatch.setenv("MAKEPARALLEL_BACKEND", backend)
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "makeparallel info: error: the environment variable MAKEPARALLEL_BACKEND names a backend this Python cannot run: "
    ), captured.err
    assert reason in captured.err
    usable = captured.err.rpartition("; set it to one of ")[2]
    assert usable.startswith("'thread', 'process', 'sync', 'auto'") and usable.endswith(", or unset it\n"), captured.err
    assert repr(backend) not in usable, captured.err


def test_demo_quick_prints_both_workloads_and_their_speedups(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        match = _ROW.match(line)
        if match:
            rows[(match["label"].split(",")[0], match["backend"])] = match
    assert sorted(rows) == [
        ("hashlib.sha256", "thread"),
        ("pure-Python loop", "process"),
        ("pure-Python loop", "thread"),
    ], out
    for row in rows.values():
        sequential, in_parallel, speedup = (float(row[k]) for k in ("seq", "par", "speedup"))
        assert sequential >= 0 and in_parallel >= 0 and speedup > 0, row.group(0)
    assert "releases the GIL" in out
    assert "worker processes each have an interpreter and a GIL of their own" in out
    assert re.search(r"^\d+ usable CPU\(s\) \(\w", out, re.MULTILINE), out


def test_demo_prints_each_row_before_measuring_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    seen_when_measuring: list[str] = []
    measure = _demo._measure

    def watched(workload: _demo.Workload, rounds: int, on_round: Any) -> _demo.Measurement:
        seen_when_measuring.append(out.getvalue())
        return measure(workload, rounds, on_round)

    monkeypatch.setattr(_demo, "_measure", watched)
    report = _demo.run_demo(quick=True, out=out)
    assert report.quick
    assert len(seen_when_measuring) == 3
    labels = [m.workload.label for m in report.measurements]
    for index, seen in enumerate(seen_when_measuring):
        # the row's label is out, its numbers not yet
        assert not seen.endswith("\n") and seen.splitlines()[-1].startswith(labels[index]), seen
        for earlier in report.measurements[:index]:
            assert _demo._row_end(earlier) in seen, f"an earlier row was not printed yet:\n{seen}"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_each_round_redraws_its_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_demo, "_QUICK", dataclasses.replace(_demo._QUICK, rounds=2))
    out = Terminal()
    report = _demo.run_demo(quick=True, out=out)
    text = out.getvalue()
    assert text.count("(round 1 of 2)") == 3, text
    width = _demo._label_width([m.workload for m in report.measurements])
    rows = [line for line in text.split("\n") if "\r" in line]  # splitlines() would split at \r
    assert len(rows) == 3, text
    for row, measured in zip(rows, report.measurements):
        shown = row.split("\r")[-1]  # what the terminal shows: the last redraw
        assert shown.rstrip() == _demo._row_start(measured.workload, width) + _demo._row_end(measured)
        assert len(shown) >= len(row.split("\r")[-2])  # it wiped the longer line under it


# -- the words follow the numbers -----------------------------------------------------------


def report_of(*measurements: _demo.Measurement, cpus: int = 2, gil: bool = True) -> _demo.DemoReport:
    return _demo.DemoReport(
        threads=cpus, tasks=cpus, rounds=3, gil_enabled=gil, free_threaded_build=not gil,
        measurements=measurements, cpus=cpus, host_cpus=cpus,
    )


HASHING = _demo.Workload("hashlib.sha256, 1,024 MiB", True, _demo.hash_buffer, [])
LOOP = _demo.Workload("pure-Python loop, 8M steps", False, _demo.sum_squares_mod, [])
LOOP_IN_PROCESSES = _demo.Workload("pure-Python loop, 8M steps", False, _demo.sum_squares_mod, [], "process")


def timed(workload: _demo.Workload, speedup: float, others: float | None = 0.0) -> _demo.Measurement:
    return _demo.Measurement(workload, sequential_s=speedup, parallel_s=1.0, others_cpus=others)


def test_a_speed_up_is_explained_as_one() -> None:
    hashing, processes = timed(HASHING, 1.98), timed(LOOP_IN_PROCESSES, 1.9)
    report = report_of(hashing, timed(LOOP, 1.02), processes)
    assert "threads hashed at the same time (1.98x): threads speed up work that releases the GIL" in _demo.explain(hashing, report)
    assert "ran on 2 cores at once (1.90x)" in _demo.explain(processes, report)
    assert not any("busy" in note for note in _demo._notes(report))


@pytest.mark.parametrize("workload", [HASHING, LOOP_IN_PROCESSES], ids=["threads", "processes"])
def test_a_low_speed_up_on_a_busy_machine_is_blamed_on_the_load(workload: _demo.Workload) -> None:
    measured = timed(workload, 0.98, others=1.6)
    report = report_of(measured)
    words = _demo.explain(measured, report)
    assert "measured only 0.98x" in words, words
    assert "other processes kept about 1.6 of this machine's 2 CPUs busy meanwhile, so this figure is low" in words
    assert "speed up work" not in words and "at once" not in words  # no claim the table contradicts
    notes = " ".join(_demo._notes(report))
    assert "the machine was busy" in notes and "lower than this machine gives when it is quiet" in notes


def test_a_low_speed_up_on_a_quiet_machine_is_not_blamed_on_load() -> None:
    measured = timed(HASHING, 1.1, others=0.1)
    words = _demo.explain(measured, report_of(measured))
    assert "measured only 1.10x" in words and "no other load was measured" in words
    assert "busy" not in words


def test_a_single_cpu_is_named_as_the_reason() -> None:
    measured = timed(HASHING, 1.0, others=None)
    words = _demo.explain(measured, report_of(measured, cpus=1))
    assert "a single CPU" in words


@pytest.mark.parametrize("workload", [HASHING, LOOP_IN_PROCESSES], ids=["threads", "processes"])
def test_on_a_single_cpu_the_load_of_the_others_is_not_blamed(workload: _demo.Workload) -> None:
    # `taskset -c 0` on a machine whose other CPU is busy: the demo said the figure was low
    # for the load, to run it again when the machine is quieter, and that every speed-up was
    # lower than a quiet machine gives; a quiet one gives a single CPU no more.
    measured = timed(workload, 1.02, others=0.9)
    report = dataclasses.replace(report_of(measured, cpus=1), host_cpus=2)
    words = _demo.explain(measured, report)
    assert "measured only 1.02x; this process may use a single CPU" in words, words
    assert "busy" not in words and "quieter" not in words, words
    notes = " ".join(_demo._notes(report))
    assert "the machine was busy" not in notes, notes
    assert "a single thread (this process may use one core)" in notes, notes


@pytest.mark.parametrize("workload", [HASHING, LOOP_IN_PROCESSES], ids=["threads", "processes"])
def test_a_low_speed_up_with_quick_sizes_is_blamed_on_the_sizes(workload: _demo.Workload) -> None:
    # `demo --quick` times a few milliseconds, too short a window to measure the load (None):
    # it said "no other load was measured, so this is what this machine gives this work" of
    # 0.74x for hashing on a quiet machine that gives it 2x.
    measured = timed(workload, 0.74, others=None)
    report = dataclasses.replace(report_of(measured), quick=True)
    words = _demo.explain(measured, report)
    assert "measured only 0.74x; --quick's sizes are too small to measure a speed-up: run the demo without --quick" in words, words
    assert "no other load" not in words and "this machine gives" not in words, words


def test_with_quick_sizes_a_busy_machine_is_not_blamed_for_every_speed_up() -> None:
    # A process row's pool start can outlast the load meter's window even under --quick: the
    # rows said the sizes were too small, and a note below that every speed-up was lower
    # than this machine gives when it is quiet, which --quick's sizes do not tell.
    measured = timed(LOOP_IN_PROCESSES, 0.26, others=1.6)
    report = dataclasses.replace(report_of(measured), quick=True)
    notes = " ".join(_demo._notes(report))
    assert "--quick's sizes are too small" in notes, notes
    assert "the machine was busy" not in notes and "when it is quiet" not in notes, notes


def test_pure_python_on_threads_under_the_gil() -> None:
    flat = timed(LOOP, 0.98)
    assert "no speed-up (0.98x) for pure-Python code on threads" in _demo.explain(flat, report_of(flat))
    lucky = timed(LOOP, 1.4)  # noise: the words must not claim a speed-up the GIL forbids
    words = _demo.explain(lucky, report_of(lucky))
    assert "1.40x for pure-Python code on threads" in words and "timing noise" in words


def test_pure_python_on_threads_without_the_gil() -> None:
    fast, slow = timed(LOOP, 1.9), timed(LOOP, 1.0, others=1.5)
    assert "pure-Python code speeds up too" in _demo.explain(fast, report_of(fast, gil=False))
    words = _demo.explain(slow, report_of(slow, gil=False))
    assert "measured only 1.00x" in words and "this figure is low" in words


@pytest.mark.parametrize("argv", [["bogus"], [], ["info", "--frobnicate"]])
def test_usage_errors_exit_with_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: makeparallel" in capsys.readouterr().err


def test_version_prints_the_package_version_and_exits_with_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"makeparallel {mp.__version__}\n"


def test_python_dash_m_runs_info() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "makeparallel", "info", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    info = json.loads(completed.stdout)
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["thread_pool"]["live_threads"] == 0  # info starts no thread


@pytest.mark.parametrize("argv", [["info"], ["info", "--json"], ["demo", "--quick"]])
def test_a_reader_that_stops_reading_ends_the_command_quietly(argv: list[str]) -> None:
    # As `makeparallel info | head -1` does: the pipe is closed before anything is
    # written, so every write fails with EPIPE (Python ignores SIGPIPE).
    command = subprocess.Popen(
        [sys.executable, "-m", "makeparallel", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert command.stdout is not None and command.stderr is not None
    command.stdout.close()
    try:
        errors = command.stderr.read().decode()
    finally:
        command.stderr.close()
        returncode = command.wait(timeout=60)
    assert returncode == 1
    assert errors == ""


# The demo, with the task a worker thread runs made to send this process a real SIGINT, as
# Ctrl-C does, and to stop there for good; the sequential round returns at once, and so does a
# task the main thread runs in place as it collects, once a worker runs the other. SIGINT raises
# KeyboardInterrupt, as in a terminal, whatever the test runner's parent made of it. The worker
# processes are not started: nothing here uses them.
_INTERRUPTED_DEMO = """
import os, signal, sys, threading
import makeparallel as mp
from makeparallel import _demo
from makeparallel.__main__ import main

signal.signal(signal.SIGINT, signal.default_int_handler)
on_a_worker = threading.Event()

def step(i):
    if mp.get_current_task_id() is None:  # the sequential round
        return i
    if threading.current_thread() is threading.main_thread():
        on_a_worker.wait(30)
        return i
    on_a_worker.set()
    os.kill(os.getpid(), signal.SIGINT)
    threading.Event().wait()  # for good: a thread cannot be stopped, so exit must not wait for it

_demo._warm_up_processes = lambda workers: None
_demo._hash_workload = lambda tasks, size: _demo.Workload("steps", True, step, [(i,) for i in range(tasks)])
sys.exit(main(["demo", "--quick"]))
"""


@pytest.mark.timeout(60)
def test_ctrl_c_during_the_demo_ends_it_quietly_with_code_130() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_DEMO], capture_output=True, text=True, timeout=50, check=False
    )
    assert completed.returncode == 130, completed.stderr
    assert completed.stderr == "makeparallel demo: interrupted\n"  # no traceback, and no task left to abandon at exit


@pytest.mark.timeout(120)
def test_the_demo_names_the_workers_the_pools_have_on_one_cpu() -> None:
    # On one usable CPU the pools have one worker each, but each workload is
    # still split into two tasks: the line said two worker processes started.
    mp.configure_thread_pool(num_threads=1)
    mp.configure_process_pool(num_workers=1)
    out = io.StringIO()
    _demo.run_demo(quick=True, out=out)
    assert mp.get_process_pool_info()["num_workers"] == 1
    assert "starting 1 worker thread(s) and 1 worker process(es)..." in out.getvalue(), out.getvalue()
    assert "each workload split into 2 tasks" in out.getvalue(), out.getvalue()


@pytest.mark.parametrize("argv", [["info"], ["info", "--json"]])
def test_a_closed_standard_output_ends_the_command_quietly(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Started with descriptor 1 closed (`makeparallel info >&-`, a daemon's
    # child), Python sets sys.stdout to None: print() writes nothing, and the
    # flush after the command raised AttributeError with a traceback.
    errors = io.StringIO()
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", errors)
    assert main(argv) == 0
    assert errors.getvalue() == ""


# Every way standard output can refuse a write that is not a closed pipe: full
# (`makeparallel info >/dev/full`, as a full disk is), or a descriptor opened
# for reading only (`makeparallel info 1</dev/null`).
_REFUSING_OUTPUTS = [
    pytest.param("/dev/full", "w", "[Errno 28] No space left on device", id="full"),
    pytest.param(os.devnull, "r", "[Errno 9] Bad file descriptor", id="read-only"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv", [["info"], ["info", "--json"], ["demo", "--quick"]])
@pytest.mark.parametrize(("path", "mode", "error"), _REFUSING_OUTPUTS)
def test_an_output_that_refuses_writes_ends_the_command_with_one_line(
    argv: list[str], path: str, mode: str, error: str
) -> None:
    # It ended with an OSError traceback, and Python's own "Exception ignored"
    # as it flushed standard output again at exit.
    if not os.path.exists(path):
        pytest.skip(f"{path} is not on this system")
    with open(path, mode) as output:
        completed = subprocess.run(
            [sys.executable, "-m", "makeparallel", *argv],
            stdout=output,
            stderr=subprocess.PIPE,
            text=True,
            timeout=100,
            check=False,
        )
    assert completed.returncode == 1
    assert completed.stderr == f"makeparallel {argv[0]}: error: cannot write to standard output: {error}\n"
