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
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pool_helpers import wait_until
from test_process_faults import SRC, gone, run_script

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
workers = _runtime._backends["process"]._workers
deadline = time.monotonic() + 30
# Until the task runs, and the template has reported every fork: a worker's pid comes later.
while (handle.get_progress() < 0.5 or not all(w.process.pid for w in workers)) and time.monotonic() < deadline:
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


# The worker's initializer, or its task, drops root's privileges. The initializer's task
# is a builtin, which the worker unpickles without importing anything (the user it
# became may read nothing new); the other task is unpickled before it drops them.
DROPPED_PRIVILEGES = """
import json, os, sys, time
import psutil
import makeparallel as mp
from makeparallel import _runtime

def drop_privileges_then_sum(numbers):
    os.setgid(65534)
    os.setuid(65534)
    return sum(numbers)

if sys.argv[1] == "initializer":
    mp.configure_process_pool(num_workers=1, initializer=os.setuid, initargs=(65534,))
    handle = mp.parallel(backend="process")(sum)(range(10**13))  # minutes in C, holding the GIL
else:
    mp.configure_process_pool(num_workers=1)
    handle = mp.parallel(backend="process")(drop_privileges_then_sum)(range(10**13))
deadline = time.monotonic() + 30
workers = []
while time.monotonic() < deadline:  # until the worker runs the task, as nobody
    workers = [w.process.pid for w in _runtime._backends["process"]._workers if w.process.pid]
    if workers:
        worker = psutil.Process(workers[0])
        if worker.uids().effective == 65534 and worker.cpu_times().user > 0.2:
            break
    time.sleep(0.01)
os.write(1, (json.dumps({"workers": workers}) + "\\n").encode())
time.sleep(50)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges takes root")
@pytest.mark.parametrize("dropped_by", ["initializer", "task"])
def test_a_worker_that_dropped_privileges_dies_with_its_killed_parent(dropped_by: str) -> None:
    # Linux clears a process's parent-death signal when its user or group id changes: the
    # worker, in a long C call as "nobody", ran on after the program was killed, re-parented
    # to init. A task that dropped them did so after every request the worker made.
    proc = run_script(DROPPED_PRIVILEGES, dropped_by)
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


# Only in the template: its import of the module that forks the workers waits
# until the test lets it go, as a slow start-up would.
HOLD_THE_TEMPLATE = """
import os, sys, time

if os.environ.get("_MAKEPARALLEL_TEMPLATE"):
    folder = os.environ["HOLD_FOLDER"]

    class HoldTheTemplate:
        def find_spec(self, name, path=None, target=None):
            if name == "makeparallel._backends._template":
                with open(os.path.join(folder, "pid.part"), "w") as file:
                    file.write(str(os.getpid()))
                os.rename(os.path.join(folder, "pid.part"), os.path.join(folder, "template_pid"))
                while not os.path.exists(os.path.join(folder, "release")):
                    time.sleep(0.01)
            return None

    sys.meta_path.insert(0, HoldTheTemplate())
"""


def test_a_template_still_importing_dies_with_its_killed_parent(tmp_path: Path) -> None:
    # The template asked for its parent-death signal after its imports: a program killed
    # meanwhile left it running, re-parented to init, until they were done.
    (tmp_path / "sitecustomize.py").write_text(HOLD_THE_TEMPLATE)
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), str(SRC), env.get("PYTHONPATH")]))
    env["HOLD_FOLDER"] = str(tmp_path)
    script = "import time, makeparallel as mp\nmp.parallel(backend='process')(abs)(-1)\ntime.sleep(50)\n"
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    template = None
    try:
        assert wait_until(lambda: (tmp_path / "template_pid").exists(), 30)
        template = int((tmp_path / "template_pid").read_text())
        proc.kill()
        proc.wait(10)
        assert wait_until(lambda: gone(template), 15)
    finally:
        (tmp_path / "release").touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if template is not None and not gone(template):
            os.kill(template, signal.SIGKILL)
        assert proc.stderr is not None
        proc.stderr.close()
