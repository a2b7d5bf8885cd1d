"""The command line: ``makeparallel info`` and ``makeparallel demo``."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import makeparallel as mp
from makeparallel.__main__ import main
from makeparallel._demo import gil_enabled

INFO_TYPES: dict[str, type | tuple[type, ...]] = {
    "makeparallel_version": str,
    "python_version": str,
    "python_implementation": str,
    "free_threaded_build": bool,
    "gil_enabled": bool,
    "logical_cores": (int, type(None)),
    "usable_cores": (int, type(None)),
    "physical_cores": (int, type(None)),
    "default_backend": str,
    "backends": list,
    "thread_pool": dict,
}

# One table row per workload: label, sequential, parallel, speed-up.
_ROW = re.compile(
    r"^(?P<label>.+?)\s+(?P<backend>thread|process)\s+(?P<seq>\d+\.\d+)s\s+"
    r"(?P<par>\d+\.\d+)s\s+(?P<speedup>\S+)x$"
)


def test_info_prints_the_interpreter_and_the_pool(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    version = ".".join(map(str, sys.version_info[:3]))
    assert re.search(rf"^python\s+{re.escape(version)} \(", out, re.MULTILINE), out
    assert re.search(r"^GIL enabled now\s+(yes|no)$", out, re.MULTILINE), out
    assert re.search(r"^backends\s+thread, process, sync, auto$", out, re.MULTILINE), out
    threads = mp.get_thread_pool_info()["num_threads"]
    assert re.search(rf"^thread pool\s+{threads} threads ", out, re.MULTILINE), out


def test_info_json_has_every_key_with_its_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == set(INFO_TYPES)
    for key, expected in INFO_TYPES.items():
        assert isinstance(info[key], expected), (key, info[key])
    assert info["makeparallel_version"] == mp.__version__
    assert info["default_backend"] == "thread"
    assert info["backends"] == ["thread", "process", "sync", "auto"]
    assert info["thread_pool"]["num_threads"] == mp.get_thread_pool_info()["num_threads"]
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
    assert "MAKEPARALLEL_BACKEND must be one of 'thread', 'process', 'sync', 'auto', got 'warp-drive'" in captured.err


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
    if gil_enabled():
        assert "no speed-up for pure-Python code on threads" in out
    else:
        assert "pure-Python code speeds up too" in out
    assert "worker processes each have an interpreter and a GIL of their own" in out


@pytest.mark.parametrize("argv", [["bogus"], [], ["info", "--frobnicate"]])
def test_usage_errors_exit_with_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "usage: makeparallel" in capsys.readouterr().err


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
