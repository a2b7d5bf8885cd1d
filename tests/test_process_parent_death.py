"""Workers die with their parent, even inside a long C call, even when the parent forked.

A script starts a worker on a task that holds the GIL in C for minutes, then is
killed with SIGKILL: no thread of the worker can run to notice the closed pipe,
so only the kernel's parent-death signal ends it. With ``fork``, the child must
also have dropped its copies of the workers' pipe ends.
"""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from pool_helpers import wait_until
from test_process_faults import gone, run_script

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork") or not os.uname().sysname == "Linux", reason="parent-death signal: Linux"),
    pytest.mark.timeout(60),
]

SCRIPT = """
import json, os, sys, time
import makeparallel as mp
from makeparallel import _runtime

def long_c_call():
    mp.report_progress(0.5)
    return sum(range(10**13))  # minutes in C, holding the GIL

handle = mp.parallel(backend="process")(long_c_call)()
deadline = time.monotonic() + 30
while handle.get_progress() < 0.5 and time.monotonic() < deadline:
    time.sleep(0.01)
workers = _runtime._backends["process"]._workers
fds = [w.conn.fileno() for w in workers]
state = {"workers": [w.process.pid for w in workers], "child": None}
if sys.argv[1] == "fork":
    child = os.fork()
    if child == 0:
        still_open = []
        for fd in fds:
            try:
                os.fstat(fd)
                still_open.append(fd)
            except OSError:
                pass
        os.write(1, (json.dumps({"child_open_fds": still_open}) + "\\n").encode())  # one write: the parent writes too
        time.sleep(50)
        os._exit(0)
    state["child"] = child
os.write(1, (json.dumps(state) + "\\n").encode())
time.sleep(50)
"""


@pytest.mark.parametrize("forked", [False, True], ids=["plain", "parent-forked"])
def test_a_worker_in_a_long_c_call_dies_with_its_killed_parent(forked: bool) -> None:
    proc = run_script(SCRIPT, "fork" if forked else "plain")
    child = None
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline() or "{}") for _ in range(2 if forked else 1)]
        state = next(line for line in lines if "workers" in line)
        child = state["child"]
        if forked:
            opened = next(line for line in lines if "child_open_fds" in line)
            assert opened["child_open_fds"] == [], "the forked child kept the workers' pipe ends"
        workers = state["workers"]
        assert workers and all(psutil.pid_exists(pid) for pid in workers)
        proc.kill()  # SIGKILL: no handler, no atexit, no clean-up in the parent
        proc.wait(10)
        assert all(wait_until(lambda: gone(pid), 15) for pid in workers), [
            (pid, psutil.Process(pid).status()) for pid in workers if psutil.pid_exists(pid)
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


# The worker's initializer drops root's privileges; its task is a builtin, which it
# unpickles without importing anything (the user it became may read nothing new).
DROPPED_PRIVILEGES = """
import json, os, time
import psutil
import makeparallel as mp
from makeparallel import _runtime

mp.configure_process_pool(num_workers=1, initializer=os.setuid, initargs=(65534,))
handle = mp.parallel(backend="process")(sum)(range(10**13))  # minutes in C, holding the GIL
deadline = time.monotonic() + 30
workers = []
while time.monotonic() < deadline:  # until the worker runs the task
    workers = [w.process.pid for w in _runtime._backends["process"]._workers if w.process.pid]
    if workers and psutil.Process(workers[0]).cpu_times().user > 0.2:
        break
    time.sleep(0.01)
os.write(1, (json.dumps({"workers": workers}) + "\\n").encode())
time.sleep(50)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges takes root")
def test_a_worker_whose_initializer_dropped_privileges_dies_with_its_killed_parent() -> None:
    # Linux clears a process's parent-death signal when its user id changes: the worker,
    # in a long C call as "nobody", ran on after the program was killed, re-parented to init.
    proc = run_script(DROPPED_PRIVILEGES)
    workers: list[int] = []
    try:
        assert proc.stdout is not None
        workers = json.loads(proc.stdout.readline() or "{}")["workers"]
        assert workers and all(psutil.Process(pid).uids().effective == 65534 for pid in workers)
        proc.kill()
        proc.wait(10)
        assert all(wait_until(lambda: gone(pid), 15) for pid in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in workers:  # a worker that ran on would spin for minutes
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
