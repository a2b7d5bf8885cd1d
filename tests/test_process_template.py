"""On Linux, workers are forked from a template process, and keep every promise of a fresh interpreter.

The template is a clean, single-threaded interpreter started by the pool; each
worker it forks gets the parent's environment, directory and ``sys.path`` of the
moment it is asked for, dies with the template, and is reaped by it. Elsewhere
(or when the template cannot be used) workers are fresh interpreters.
"""

from __future__ import annotations

import _socket
import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import makeparallel as mp
from makeparallel._backends import _interpreter_options, _process
from makeparallel._backends._crash_journal import create_journal
from makeparallel._backends._socketpair import blocking_socketpair
from makeparallel._backends._template import Template, template_available
from makeparallel._backends._template_start import StartedTemplate
from makeparallel._cpus import UsableCpus, usable_cpus
from pool_helpers import fresh_process_pool, live_worker_pids, wait_until

pytestmark = [
    pytest.mark.skipif(not template_available(), reason="workers are forked from a template on Linux only"),
    pytest.mark.timeout(60),
]

on_process = mp.parallel(backend="process")
PACKAGE = str(Path(mp.__file__).parents[1])  # the folder the package is imported from
# A fresh program's workers, forked from its template, or fresh interpreters (run_fresh's
# template=False; a script that must set up its sys.path first says so itself).
both_ways = pytest.mark.parametrize("template", [True, False], ids=["forked from the template", "fresh interpreters"])
# What run_fresh puts first in a script whose workers are to be fresh interpreters.
_FRESH_INTERPRETERS = "from makeparallel._backends import _process\n_process.template_available = lambda: False\n"
VARIABLE = "MAKEPARALLEL_TEMPLATE_TEST"


def worker_pid() -> int:
    return os.getpid()


def surroundings() -> tuple[str | None, str, list[str], int]:
    return os.environ.get(VARIABLE), os.getcwd(), list(sys.path), os.getpid()


def blas_threads() -> list[int]:
    import numpy  # noqa: F401  # loads its BLAS, after the worker set the limits
    import threadpoolctl

    return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]


def block(path: str) -> None:
    Path(path, "started").touch()
    while True:
        pass  # until its worker is killed


def warns() -> str:
    """Whether warning ``UserWarning("careful")`` here raised, under this worker's warning filters."""
    try:
        warnings.warn("careful", UserWarning)
    except UserWarning:
        return "raised"
    return "not-raised"


def parent_process() -> int:
    """This worker's parent as the system has it: the template, where ``os.getppid()`` names the program."""
    return psutil.Process().ppid()


def started_with() -> list[Any]:
    """What this process read from its environment as it started: hash randomization, UTF-8 mode, ``LC_CTYPE``."""
    import locale

    return [sys.flags.hash_randomization, sys.flags.utf8_mode, locale.setlocale(locale.LC_CTYPE)]


def cloudpickle_at_start() -> bool:
    """Whether this worker had cloudpickle when its task began (a function sent by reference needs none)."""
    return "cloudpickle" in sys.modules


def asyncio_at_start() -> bool:
    """Whether this worker had asyncio when its task began (only async functions need it)."""
    return "asyncio" in sys.modules


def noop_initializer() -> None:
    return None


def garbage_collection() -> tuple[bool, int, bool, int]:
    """This worker's collector: on?, objects frozen, does it see a module the template imported, what one collection frees."""
    import gc

    class Cycle:
        pass

    cycle = Cycle()
    cycle.itself = cycle  # type: ignore[attr-defined]
    del cycle
    template_module = sys.modules["makeparallel._backends._template"]
    return gc.isenabled(), gc.get_freeze_count(), any(o is template_module for o in gc.get_objects()), gc.collect()


@pytest.fixture
def two_workers() -> Iterator[None]:
    fresh_process_pool(2)
    yield
    mp.configure_process_pool(initializer=None)


def test_workers_are_forked_from_one_single_threaded_template(two_workers: None) -> None:
    pids = live_worker_pids()
    assert len(pids) == 2
    parents = {psutil.Process(pid).ppid() for pid in pids}
    assert len(parents) == 1, parents
    template = psutil.Process(parents.pop())
    assert template.ppid() == os.getpid()
    assert template.num_threads() == 1  # only a process without other threads can be forked safely
    assert "_template" in " ".join(template.cmdline())


def test_a_forked_worker_gets_the_environment_directory_and_path_of_the_moment(
    two_workers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live_worker_pids()  # the template runs, started before any of the changes below
    monkeypatch.setenv(VARIABLE, "set after the pool started")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    mp.configure_process_pool(initializer=noop_initializer)  # every worker is replaced: new forks

    variable, cwd, path, _ = on_process(surroundings)().get(timeout=30)

    assert variable == "set after the pool started"
    assert cwd == str(tmp_path)
    assert path[0] == str(tmp_path / "plugins")


@both_ways
def test_a_worker_gets_an_environment_larger_than_a_request_to_the_template(template: bool) -> None:
    # A request to the template is one packet, which the socket's buffer bounds (about
    # 208 KiB): an environment of 300 KB sent in it failed every forked worker's start.
    # Each variable stays under the 128 KiB the system allows one (any exec fails past it).
    out = run_fresh(
        """
        import os
        import makeparallel as mp
        for number in range(5):
            os.environ[f"LARGE_{number}"] = str(number) * 60_000

        def large_variables():
            return sorted((name, len(value), value[0]) for name, value in os.environ.items() if name.startswith("LARGE_"))

        print(mp.parallel(backend="process")(large_variables)().get(timeout=30) == large_variables())
        """,
        template=template,
    )
    assert out == ["True"]


@both_ways
def test_a_worker_sees_the_programs_arguments_not_its_own_command_line(template: bool) -> None:
    # A worker's own command line is the pool's (-c, descriptors, sys.path entries): a
    # settings module parsing sys.argv with argparse as it was imported took it for the
    # program's, and read the wrong options or made the task fail on them.
    out = run_fresh(
        """
        import json, sys
        import makeparallel as mp

        def arguments(_=None):
            return sys.argv

        def show_arguments():
            print("initializer:" + json.dumps(sys.argv, separators=(",", ":")))

        sys.argv = ["settings.py", "--scale", "10"]  # as the program was started with
        mp.configure_process_pool(initializer=show_arguments)
        first = mp.parallel(backend="process")(arguments)().get(timeout=30)
        sys.argv.append("--later")  # new workers take on the arguments as they are when they start
        mp.configure_process_pool(initializer=None)  # every worker is replaced
        later = mp.parallel_map(arguments, [1, 2], backend="process")
        print("tasks:" + json.dumps([first, later], separators=(",", ":")))
        """,
        template=template,
    )
    seen = {word.split(":", 1)[0]: json.loads(word.split(":", 1)[1]) for word in out}
    assert seen["initializer"] == ["settings.py", "--scale", "10"]
    first, later = seen["tasks"]
    assert first == ["settings.py", "--scale", "10"]
    assert later == [["settings.py", "--scale", "10", "--later"]] * 2


def test_a_sys_argv_that_is_no_list_leaves_workers_an_empty_one() -> None:
    # Read in the pool's loop thread, sys.argv = None (an embedding program's) killed it.
    out = run_fresh(
        """
        import sys
        import makeparallel as mp

        def arguments():
            return sys.argv

        sys.argv = None
        print(mp.parallel(backend="process")(arguments)().get(timeout=30), mp.health()["status"])
        """
    )
    assert out == ["[]", "ok"]


def test_arguments_that_are_not_text_reach_workers_as_text() -> None:
    # str() of each, in the pool's loop thread: a bytes argument under -bb (BytesWarning)
    # or an object whose __str__ raises killed the loop.
    out = run_fresh(
        """
        import sys
        import makeparallel as mp

        class Unprintable:
            def __str__(self):
                raise ValueError("no text")

        def arguments():
            return sys.argv

        sys.argv = ["prog", b"bytes-arg", Unprintable()]
        argv = mp.parallel(backend="process")(arguments)().get(timeout=30)
        print(argv[:2], argv[2].startswith("<__main__.Unprintable object at"), mp.health()["status"])
        """,
        options=("-bb",),
    )
    assert out == ["['prog',", "'bytes-arg']", "True", "ok"]


def test_workers_start_though_the_templates_reports_wait_for_the_pool() -> None:
    # The template reports each fork to the pool's loop thread, which reads the reports
    # only once it has started every worker, and blocks sending a worker's environment
    # when it is larger than the worker's pipe holds, until that worker reads it. Once the
    # reports filled the socket's buffer (about 300 of them: a pool of 300 workers) the
    # template blocked on the next, forked no more, and the pool hung. The buffer is made
    # the system's least here, which holds a few reports, and the environment 300 KB.
    out = run_fresh(
        """
        import os, socket
        import makeparallel as mp
        from makeparallel._backends import _template_start

        make_pair = _template_start.blocking_socketpair

        def few_reports_fit(kind):
            pool_end, template_end = make_pair(kind)
            template_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
            return pool_end, template_end

        _template_start.blocking_socketpair = few_reports_fit
        for number in range(5):
            os.environ[f"LARGE_{number}"] = "x" * 60_000
        mp.configure_process_pool(12)

        def pid(_):
            return os.getpid()

        print(len(mp.parallel_map(pid, range(12), chunksize=1, backend="process", timeout=30)))  # 12 workers start
        """
    )
    assert out == ["12"]


@both_ways
def test_a_worker_works_in_the_programs_directory_though_it_was_removed(template: bool, tmp_path: Path) -> None:
    # The directory has no path any more (os.getcwd() raises): a fresh interpreter
    # still starts in it. A forked worker was sent the path, and its start failed.
    out = run_fresh(
        f"""
        import os, tempfile
        import makeparallel as mp
        removed = tempfile.mkdtemp(dir={str(tmp_path)!r})
        os.chdir(removed)
        os.rmdir(removed)

        def where():
            try:
                return os.getcwd()
            except FileNotFoundError:
                return os.stat(".").st_ino

        print(mp.parallel(backend="process")(where)().get(timeout=30) == where())
        """,
        template=template,
    )
    assert out == ["True"]


@both_ways
def test_what_a_new_worker_writes_to_its_standard_output_and_error_goes_where_the_programs_go_now(
    template: bool, tmp_path: Path
) -> None:
    # A program that redirected its standard output and error to a log file after its
    # first task had its later forked workers' C-level output (a child process's, a C
    # library's) go to the old ones, where a fresh interpreter's went to the log.
    # Closed, they are os.devnull in the worker: a file the task opens cannot take their number.
    log = tmp_path / "log"
    out = run_fresh(
        f"""
        import os
        import makeparallel as mp
        from test_process_template import parent_process

        def write(text):
            os.write(1, text.encode() + b"-out ")
            os.write(2, text.encode() + b"-err ")
            return os.path.samestat(os.fstat(1), os.stat(os.devnull)), parent_process()

        mp.configure_process_pool(num_workers=1)
        task = mp.parallel(backend="process")(write)
        _, parent = task("before").get(timeout=30)
        log = os.open({str(log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        saved = os.dup(1), os.dup(2)
        os.dup2(log, 1)
        os.dup2(log, 2)
        mp.configure_process_pool(initializer=abs, initargs=(1,))  # every worker is replaced
        after = task("after").get(timeout=30)
        os.close(1)
        os.close(2)
        mp.configure_process_pool(initializer=abs, initargs=(2,))
        closed = task("closed").get(timeout=30)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        print(parent != os.getpid(), after == (False, parent), closed == (True, parent))
        """,
        template=template,
    )
    assert out[-3:] == [str(template), "True", "True"]  # forked from the one template, or not forked
    assert "before-out" in out
    assert sorted(log.read_text().split()) == ["after-err", "after-out"]


@both_ways
def test_new_interpreters_write_nothing_into_the_pools_pipes_where_the_program_closed_its_standard_streams(
    template: bool, tmp_path: Path
) -> None:
    # With descriptors 1 and 2 closed, the template's end of its socket took number 2,
    # its standard error: what it wrote there as it started (PYTHONPROFILEIMPORTTIME's
    # report) went into the pool's socket, and the pool's loop thread died of it.
    result = tmp_path / "result"
    run_fresh(
        f"""
        import os
        import makeparallel as mp
        os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # read by new interpreters only, as they start
        os.close(1)
        os.close(2)
        task = mp.parallel(backend="process")(os.getpid)
        pids = {{task().get(timeout=30) for _ in range(3)}}
        with open({str(result)!r}, "w") as file:
            file.write(f"{{os.getpid() not in pids}} {{mp.get_process_pool_info()['loop_deaths']}}")
        """,
        template=template,
    )
    assert result.read_text() == "True 0"


@both_ways
def test_a_line_a_task_prints_reaches_no_descriptor_of_the_pool_where_the_program_closed_its_standard_streams(
    template: bool, tmp_path: Path
) -> None:
    # A daemon that closed 0, 1 and 2 left those numbers free: the pool's socket to its
    # template (or a worker's pipe) took 1, where the program's sys.stdout still writes,
    # and a line a task printed, relayed there, killed the template and every worker.
    # Kept off those numbers, the write fails as it would without the package (EBADF).
    result = tmp_path / "result"
    run_fresh(
        f"""
        import os
        import makeparallel as mp

        def closed(fd):
            try:
                os.fstat(fd)
            except OSError:
                return True
            return False

        for fd in (0, 1, 2):
            os.close(fd)
        log = os.open({str(result)!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # takes 0
        mp.parallel(backend="process")(print)("a line a task printed").get(timeout=30)  # the pool's first task
        pid = mp.parallel(backend="process")(os.getpid)
        pids = {{pid().get(timeout=30) for _ in range(3)}}
        info = mp.get_process_pool_info()
        os.write(log, f"{{closed(1)}} {{closed(2)}} {{pids <= set(info['worker_pids'])}} {{info['worker_restarts']}}".encode())
        """,
        template=template,
    )
    assert result.read_text() == "True True True 0"


# Root passes every permission check: a script that needs a folder it may not search first
# gives up, for itself and the programs it starts, the two capabilities that let it (as a
# user has none).
AS_A_USER = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
if os.geteuid() == 0:
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        assert libc.prctl(24, capability, 0, 0, 0) == 0, ctypes.get_errno()  # PR_CAPBSET_DROP
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    sets = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable; twice 32 bits
    assert libc.capget(header, sets) == 0
    sets[0] &= ~0b110
    sets[1] &= ~0b110
    assert libc.capset(header, sets) == 0, ctypes.get_errno()
"""


def test_a_worker_starts_though_the_program_may_not_search_its_own_directory(tmp_path: Path) -> None:
    # A program run as another user (sudo -u app, from a home folder of mode 0700) cannot
    # look up "." where it is: opening the worker's directory that way failed every start.
    locked = tmp_path / "locked"
    locked.mkdir()
    out = run_fresh(
        AS_A_USER
        + textwrap.dedent(
            f"""
        import makeparallel as mp
        os.chdir({str(locked)!r})
        os.chmod(".", 0)
        try:
            print(mp.parallel(backend="process")(os.getpid)().get(timeout=30) != os.getpid())
        finally:
            os.chmod({str(locked)!r}, 0o700)
        """
        )
    )
    assert out == ["True"]


def test_a_worker_starts_in_the_folder_of_the_moment_though_the_program_may_not_search_it(tmp_path: Path) -> None:
    # A worker forked from the template enters the program's folder by its descriptor, which
    # takes search permission there: one started after the program went into a folder and
    # took its own permission away ran in the template's folder, and wrote its files there.
    first, then = tmp_path / "first", tmp_path / "then"
    first.mkdir()
    then.mkdir()
    out = run_fresh(
        AS_A_USER
        + textwrap.dedent(
            f"""
        import signal, time
        import makeparallel as mp
        mp.configure_process_pool(num_workers=1)
        where = mp.parallel(backend="process")(os.getcwd)
        os.chdir({str(first)!r})
        print(where().get(timeout=30) == {str(first)!r})
        os.chdir({str(then)!r})
        os.chmod(".", 0o200)
        try:
            [worker] = mp.get_process_pool_info()["worker_pids"]
            os.kill(worker, signal.SIGKILL)  # its replacement starts now
            deadline = time.monotonic() + 30
            while worker in mp.get_process_pool_info()["worker_pids"] and time.monotonic() < deadline:
                time.sleep(0.01)
            print(where().get(timeout=30) == {str(then)!r})
        finally:
            os.chmod({str(then)!r}, 0o700)
        """
        )
    )
    assert out == ["True", "True"]


def test_a_worker_the_system_refuses_to_start_fails_its_task_with_the_reason_and_works_once_configured() -> None:
    # Fresh interpreters cannot be given a variable over 128 KiB (E2BIG): the pool's loop
    # thread died of it, and health() said the process was not live for good. Now the
    # pool gives up as after any failed starts, with the reason, and works once configured.
    out = run_fresh(
        """
        import os
        import makeparallel as mp
        from makeparallel._backends import _process
        _process.template_available = lambda: False
        os.environ["TOO_LONG_TO_EXEC"] = "x" * 200_000
        task = mp.parallel(backend="process")(os.getpid)
        try:
            task().get(timeout=30)
        except mp.WorkerCrashedError as error:
            print("refused to start a worker process" in str(error), "more than the system gives" in str(error))
        del os.environ["TOO_LONG_TO_EXEC"]
        mp.configure_process_pool()
        print(task().get(timeout=30) != os.getpid(), mp.health()["live"])
        """
    )
    assert out == ["True", "True", "True", "True"]


def test_a_pool_the_system_refused_every_worker_tries_again_a_second_later() -> None:
    # A brief want of descriptors as workers were recycled (max_tasks_per_child) left a
    # service's pool with none: it failed every task for good, descriptors back or not.
    out = run_fresh(
        """
        import os
        import makeparallel as mp
        from makeparallel._backends import _process
        _process.template_available = lambda: False
        clock = [1000.0]
        _process._now = lambda: clock[0]
        os.environ["TOO_LONG_TO_EXEC"] = "x" * 200_000  # refused every time while set (E2BIG)
        task = mp.parallel(backend="process")(os.getpid)
        for _ in range(2):  # refused, then failed at once
            try:
                task().get(timeout=30)
            except mp.WorkerCrashedError as error:
                print("fails new tasks at once for 1 s, then tries again" in str(error))
        del os.environ["TOO_LONG_TO_EXEC"]
        try:
            task().get(timeout=30)
        except mp.WorkerCrashedError:
            print("within the second")
        print(mp.health()["reasons"][0].endswith("fails new tasks at once for 1 s, then tries again"))
        clock[0] += 1.0
        print(task().get(timeout=30) != os.getpid(), mp.health()["live"])
        """
    )
    assert out == ["True", "True", "within", "the", "second", "True", "True", "True"]


def test_a_fork_the_system_refuses_leaves_the_tasks_to_the_workers_there_or_fails_them_with_the_reason(
    tmp_path: Path,
) -> None:
    # At the user's process limit fork() raises in the template (EAGAIN): the template
    # died of it, with every worker it had forked, and the tasks failed as killed. Here
    # the template's fork() is made to refuse (its sitecustomize) once a file exists.
    # Each refusal also counted as a crashed worker's restart, towards a restart storm.
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        "if '_MAKEPARALLEL_TEMPLATE' in os.environ:\n"
        "    forks = os.fork\n"
        "    def fork():\n"
        "        if os.path.exists(os.environ['FORKS_REFUSED_ONCE']):\n"
        "            open(os.environ['FORKS_REFUSED_ONCE'] + 'd', 'w').close()\n"
        "            raise BlockingIOError(11, 'Resource temporarily unavailable')\n"
        "        return forks()\n"
        "    os.fork = fork\n"
    )
    out = run_fresh(
        f"""
        import os, pathlib, time
        import makeparallel as mp
        os.environ["PYTHONPATH"] = os.pathsep.join([{str(tmp_path)!r}, os.environ["PYTHONPATH"]])  # the template's
        os.environ["FORKS_REFUSED_ONCE"] = {str(tmp_path / "refuse")!r}
        mp.configure_process_pool(1)

        def wait_for(path):
            pathlib.Path(path, "running").touch()
            while not os.path.exists(os.path.join(path, "done")):
                time.sleep(0.01)
            return os.getpid()

        running = mp.parallel(backend="process")(wait_for)({str(tmp_path)!r})
        while not os.path.exists({str(tmp_path / "running")!r}):
            time.sleep(0.01)
        pathlib.Path({str(tmp_path / "refuse")!r}).touch()
        mp.configure_process_pool(2)  # a second worker, which the template cannot fork
        queued = mp.parallel(backend="process")(os.getpid)()  # queued behind the running one: the pool grows
        while not os.path.exists({str(tmp_path / "refused")!r}):
            time.sleep(0.01)
        pathlib.Path({str(tmp_path / "done")!r}).touch()
        there = running.get(timeout=30)
        later = {{queued.get(timeout=30)}} | {{mp.parallel(backend="process")(os.getpid)().get(timeout=30) for _ in range(20)}}
        info = mp.get_process_pool_info()
        print(later == {{there}}, info["refusing_tasks"], info["worker_restarts"])  # the worker there ran them
        mp.configure_process_pool(initializer=os.getpid)  # every worker replaced: none can start
        try:
            mp.parallel(backend="process")(os.getpid)().get(timeout=30)
        except mp.WorkerCrashedError as error:
            print("refused to start a worker process (BlockingIOError" in str(error))
        """
    )
    assert out == ["True", "None", "0", "True"]  # a refused fork is no restart: health() sees no storm


@both_ways
def test_a_worker_the_system_refuses_a_thread_leaves_the_tasks_to_the_workers_there(
    template: bool, tmp_path: Path
) -> None:
    # The user's process limit counts threads: at it, a new worker's reader thread is
    # refused rather than its fork. That counted as a crash: after three the pool gave
    # up with workers there, failed every task, and health() said unhealthy (and "ok"
    # once that was mended, with one worker of three). Here
    # starting that thread fails (the workers' sitecustomize) once a file exists.
    (tmp_path / "sitecustomize.py").write_text(
        "import os, threading\n"
        "starts = threading.Thread.start\n"
        "def start(self):\n"
        "    if self.name == 'makeparallel-worker-reader' and os.path.exists(os.environ['THREADS_REFUSED']):\n"
        "        raise RuntimeError(\"can't start new thread\")\n"
        "    return starts(self)\n"
        "threading.Thread.start = start\n"
    )
    out = run_fresh(
        f"""
        import os, pathlib, threading, time
        import makeparallel as mp
        os.environ["PYTHONPATH"] = os.pathsep.join([{str(tmp_path)!r}, os.environ["PYTHONPATH"]])  # the workers'
        os.environ["THREADS_REFUSED"] = {str(tmp_path / "refuse")!r}
        mp.configure_process_pool(1)
        task = mp.parallel(backend="process")(os.getpid)
        there = task().get(timeout=30)
        pathlib.Path({str(tmp_path / "refuse")!r}).touch()
        mp.configure_process_pool(3)  # two more workers, which cannot start
        ran = {{h.get(timeout=30) for h in [task() for _ in range(40)]}}
        deadline = time.monotonic() + 30  # the worker there may run them all before a refusal is heard
        while mp.get_process_pool_info()["refused_starts"] is None and time.monotonic() < deadline:
            time.sleep(0.01)
        info, health = mp.get_process_pool_info(), mp.health()
        short = [reason for reason in health["reasons"] if "cannot start more workers" in reason]
        print(ran == {{there}}, info["refusing_tasks"], info["worker_restarts"], health["status"], len(short))
        mp.configure_process_pool(initializer=abs, initargs=(1,))  # every worker replaced: none can start
        try:
            task().get(timeout=30)
        except mp.WorkerCrashedError as error:
            print("could not start a thread (can't start new thread)" in str(error))
        """,
        template=template,
    )
    assert out == ["True", "None", "0", "degraded", "1", "True"]  # degraded: one worker of three


def test_a_timeout_no_thread_can_enforce_yet_waits_and_the_pool_lives_on() -> None:
    # At the process limit, which counts threads, the thread that enforces timeouts could
    # not start when a process task with a timeout started: the pool's loop thread died
    # of the RuntimeError. The deadline now waits until a thread can start.
    out = run_fresh(
        """
        import logging, os, threading, time
        import makeparallel as mp

        refuse = True
        starts = threading.Thread.start
        def start(self):
            if refuse and self.name == "makeparallel-deadlines":
                raise RuntimeError("can't start new thread")
            return starts(self)
        threading.Thread.start = start

        class Raising(logging.Handler):  # the warning must fail nothing, even through a handler that raises
            warnings = 0
            def emit(self, record):
                Raising.warnings += "enforce task timeouts" in record.getMessage()
                raise ValueError("a handler that raises")
        logging.getLogger("makeparallel").addHandler(Raising())

        task = mp.parallel(backend="process")(os.getpid)
        task().get(timeout=30)
        stuck = mp.parallel(backend="process", timeout=0.2)(time.sleep)(60)
        others = [mp.parallel(backend="process", timeout=30)(os.getpid)() for _ in range(3)]
        running = [task().get(timeout=30) for _ in range(3)]  # the loop thread lives on
        refuse = False
        mp.parallel(backend="process", timeout=30)(os.getpid)().get(timeout=30)  # starts the thread
        try:
            stuck.get(timeout=30)
        except mp.TaskTimeoutError:
            print("timed-out", mp.get_process_pool_info()["loop_deaths"], Raising.warnings)
        """
    )
    assert out == ["timed-out", "0", "1"]  # warned once


def test_a_pool_under_a_tight_descriptor_limit_leaves_the_program_a_quarter_and_says_why() -> None:
    # A prestarted pool of 32 under a limit of 64 started workers until the system refused
    # one: the program had three descriptors left (its open() failed, and the package's own
    # imports on first use), and health() said "ok", the pool idle.
    out = run_fresh(
        """
        import os, resource, time
        import makeparallel as mp
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        mp.configure_process_pool(32, prestart=True)
        deadline = time.monotonic() + 30
        while not mp.get_process_pool_info()["refused_starts"] and time.monotonic() < deadline:
            time.sleep(0.01)
        info = mp.get_process_pool_info()
        print(info["refused_starts"] is not None, 0 < info["live_workers"] < 32)
        print(64 - (len(os.listdir("/proc/self/fd")) - 1) >= 16)
        reasons = mp.health()["reasons"]
        print(len(reasons) == 1 and "cannot start more workers" in reasons[0] and "ulimit -n" in reasons[0])
        print(sum(h.get(timeout=30) for h in [mp.parallel(backend="process")(abs)(-i) for i in range(50)]))
        """
    )
    assert out == ["True", "True", "True", "True", str(sum(range(50)))]


def test_a_pool_recycling_every_worker_under_a_tight_descriptor_limit_keeps_the_reserve_and_fails_no_task() -> None:
    # With max_tasks_per_child=1 no worker takes tasks once it has its one: each replacement
    # started unchecked until the system refused one, and three refusals failed the queued tasks.
    out = run_fresh(
        """
        import os, resource
        import makeparallel as mp
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        mp.configure_process_pool(32, max_tasks_per_child=1)
        lowest = [64]

        def free():
            lowest[0] = min(lowest[0], 64 - (len(os.listdir("/proc/self/fd")) - 1))

        handles = [mp.parallel(backend="process")(abs)(-i) for i in range(100)]
        for handle in handles:
            handle.on_complete(lambda _: free())
        # A quarter of the limit kept, less what a start under way holds for a moment (6 at most).
        print(sum(handle.get(timeout=60) for handle in handles), lowest[0] >= 16 - 6)
        """
    )
    assert out == [str(sum(range(100))), "True"]


def test_workers_that_cannot_start_for_want_of_descriptors_leave_the_tasks_to_those_there() -> None:
    # Three refusals in a row made the pool give up and fail every task, though a
    # worker was there to run them and the shortage was brief (a burst of connections).
    out = run_fresh(
        """
        import os, resource
        import makeparallel as mp
        mp.configure_process_pool(1)
        first = mp.parallel(backend="process")(os.getpid)().get(timeout=30)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        files = []
        try:
            while True:
                files.append(open(os.devnull))
        except OSError:
            pass
        mp.configure_process_pool(4)  # three more workers, which cannot start now
        pids = {handle.get(timeout=30) for handle in [mp.parallel(backend="process")(os.getpid)() for _ in range(8)]}
        for file in files:
            file.close()
        for _ in range(100):  # the shortage is over: the next looks start the three
            if mp.parallel(backend="process")(os.getpid)().get(timeout=30) and mp.get_process_pool_info()["live_workers"] == 4:
                break
        print(pids == {first}, mp.get_process_pool_info()["live_workers"])
        """
    )
    assert out == ["True", "4"]


@pytest.mark.parametrize(
    "variables",
    [{"TOO_LONG_TO_EXEC": 200_000}, {f"TOO_MUCH_{number}": 60_000 for number in range(50)}],
    ids=["one variable over 128 KiB", "3 MB in all"],
)
def test_a_forked_worker_gets_an_environment_too_large_for_any_new_program(variables: dict[str, int]) -> None:
    # Linux starts no program given a variable over 128 KiB, or strings over ARG_MAX in
    # all (2 MiB with an 8 MiB stack): E2BIG. The template starts without the largest
    # variables, and its workers get them from the pool, as forks of the program would.
    out = run_fresh(
        f"""
        import os
        import makeparallel as mp
        for name, size in {variables!r}.items():
            os.environ[name] = "x" * size

        def sizes():
            return {{name: len(os.environ[name]) for name in {list(variables)!r}}}

        print(mp.parallel(backend="process")(sizes)().get(timeout=30) == {variables!r})
        """
    )
    assert out == ["True"]


def test_a_forked_worker_takes_the_umask_and_limits_of_the_moment_but_not_the_main_threads_cpus() -> None:
    # In a fresh interpreter: the program changes its own process, which the test's must not.
    out = run_fresh(
        """
        import json, os, resource, tempfile
        import makeparallel as mp

        def state(folder):
            path = os.path.join(folder, str(os.getpid()))
            open(path, "w").close()
            return [
                oct(os.stat(path).st_mode & 0o777),
                resource.getrlimit(resource.RLIMIT_NOFILE),
                sorted(os.sched_getaffinity(0)),
            ]

        os.umask(0o022)
        task = mp.parallel(backend="process")(state)
        folder = tempfile.mkdtemp()
        before = task(folder).get(timeout=30)  # the template starts with these settings
        os.umask(0o077)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft // 2, hard))
        # What OpenMP's OMP_PROC_BIND does to the main thread: its pinning is its own.
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
        mp.configure_process_pool(initializer=os.getpid)  # every worker is replaced: new forks
        after = [task(folder).get(timeout=30) for _ in range(2)]
        print(json.dumps([before, after, state(folder)], separators=(",", ":")))
        """
    )
    before, after, program = json.loads(out[0])
    umask, limit, _ = program
    assert (before[0], umask) == ("0o644", "0o600") and before[1] != limit
    assert after == [[umask, limit, before[2]]] * 2


# The program replaces its workers until one is forked from a new template: each
# replacement starts after the change, and the first ones, while the old template
# still had a worker, are fresh interpreters. Prints [before, after..., program's pid].
_UNTIL_A_NEW_TEMPLATE = """
        seen = []
        for number in range(20):
            mp.configure_process_pool(initializer=abs, initargs=(number,))  # a new set-up: every worker is replaced
            seen.append(task().get(timeout=30))
            if seen[-1][-1] not in (before[-1], os.getpid()):  # its parent: neither the old template nor this program
                break
        print(json.dumps([before, *seen, os.getpid()], separators=(",", ":")))
        """


def test_workers_started_after_the_program_changed_its_process_limit_are_not_forks_of_the_template_before() -> None:
    # The template's fork() obeys the template's limit on processes, not the
    # program's: one the program raised after a refusal went on refusing.
    out = run_fresh(
        """
        import json, os, resource
        import makeparallel as mp
        from test_process_template import parent_process

        def state():
            return resource.getrlimit(resource.RLIMIT_NPROC), parent_process()

        mp.configure_process_pool(num_workers=1)
        task = mp.parallel(backend="process")(state)
        before = task().get(timeout=30)
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        lower = soft - 1 if soft != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NPROC, (lower, hard))
        """
        + _UNTIL_A_NEW_TEMPLATE
    )
    before, *seen, program = json.loads(out[0])
    limit = seen[0][0]
    assert before[1] != program and before[0] != limit  # forked from the template, with the limit before
    assert all(parent != before[1] for _, parent in seen)
    assert [state for state, _ in seen] == [limit] * len(seen)
    assert seen[-1][1] != program  # forked again, from a new template


def test_workers_started_after_the_program_left_its_session_are_in_its_new_one() -> None:
    # A program that left its terminal (os.setsid(), as a daemon does) after its first
    # task had its later workers forked in the old session, where the terminal's
    # hang-up killed them.
    out = run_fresh(
        """
        import json, os
        import makeparallel as mp
        from test_process_template import parent_process

        def session():
            return os.getsid(0), os.getpgrp(), parent_process()

        mp.configure_process_pool(num_workers=1)
        task = mp.parallel(backend="process")(session)
        before = task().get(timeout=30)
        os.setsid()
        """
        + _UNTIL_A_NEW_TEMPLATE
    )
    before, *seen, program = json.loads(out[0])
    assert before[0] != program and before[2] != program
    assert [(sid, group) for sid, group, _ in seen] == [(program, program)] * len(seen)
    assert all(parent != before[2] for *_, parent in seen)
    assert seen[-1][2] != program


def test_workers_started_after_the_program_changed_what_a_process_reads_as_it_starts_are_not_forks_of_the_template_before() -> None:
    # A process reads its hash seed and its locale from the environment only as it starts:
    # set in os.environ after the first task, they reached no worker forked from the template,
    # where a fresh interpreter takes them.
    out = run_fresh(
        """
        import json, os, subprocess, sys
        import makeparallel as mp
        from test_process_template import parent_process, started_with

        def state():
            return started_with(), parent_process()

        os.environ.pop("PYTHONHASHSEED", None)  # the template starts with its hash seed random
        mp.configure_process_pool(num_workers=1)
        task = mp.parallel(backend="process")(state)
        before = task().get(timeout=30)
        os.environ["PYTHONHASHSEED"] = "0"
        os.environ["LC_ALL"] = "C"
        read = "import json, test_process_template as t; print(json.dumps(t.started_with(), separators=(',', ':')))"
        print(subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, check=True).stdout)  # a fresh one
        """
        + _UNTIL_A_NEW_TEMPLATE
    )
    fresh = json.loads(out[0])
    before, *seen, program = json.loads(out[1])
    assert before[0][0] == 1 and fresh[0] == 0
    assert [state for state, _ in seen] == [fresh] * len(seen)
    assert seen[-1][1] not in (before[1], program)  # forked again, from a new template


def test_no_worker_is_forked_from_a_template_started_before_a_change_it_would_not_take() -> None:
    # A first task starts the template early; another thread that set PYTHONHASHSEED before
    # the pool took it had its first worker told the new value and run with the template's.
    out = run_fresh(
        """
        import os, sys
        os.environ.pop("PYTHONHASHSEED", None)
        import makeparallel as mp
        from makeparallel._backends import _template_start

        _template_start.start_early()  # as a first process task does, before its pool takes the template
        os.environ["PYTHONHASHSEED"] = "0"
        task = mp.parallel(backend="process")(lambda: (sys.flags.hash_randomization, os.environ["PYTHONHASHSEED"]))
        print(*task().get(timeout=30))
        mp.configure_process_pool(initializer=abs, initargs=(1,))  # a new worker: from a new template
        print(*task().get(timeout=30))
        """
    )
    assert out == ["0", "0", "0", "0"]


def test_an_outdated_template_ends_with_its_last_worker() -> None:
    # Not at the next worker's start: a template started as root forked as root,
    # on request, for a program that had dropped its privileges since.
    out = run_fresh(
        """
        import os, resource
        import psutil
        import makeparallel as mp
        from pool_helpers import wait_until
        from test_process_template import parent_process

        mp.configure_process_pool(num_workers=1)
        task = mp.parallel(backend="process")(parent_process)
        template = task().get(timeout=30)
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        resource.setrlimit(resource.RLIMIT_NPROC, (soft - 1 if soft != resource.RLIM_INFINITY else 1 << 20, hard))
        mp.configure_process_pool(initializer=abs, initargs=(1,))  # its worker is replaced
        print(task().get(timeout=30) != template, wait_until(lambda: not psutil.pid_exists(template)))
        """
    )
    assert out == ["True", "True"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a process's group ids takes root")
def test_workers_started_after_the_program_changed_its_group_ids_run_with_them() -> None:
    # A worker forked from a template started as root stayed root after the program
    # dropped its privileges. The group ids stand for the user and group ids alike:
    # the program stays root, which keeps its files readable to its workers.
    out = run_fresh(
        """
        import json, os
        import makeparallel as mp
        from test_process_template import parent_process

        def ids():
            return os.getgid(), os.getgroups(), parent_process()

        mp.configure_process_pool(num_workers=1)
        task = mp.parallel(backend="process")(ids)
        before = task().get(timeout=30)
        os.setgroups([4242])
        os.setgid(4242)
        """
        + _UNTIL_A_NEW_TEMPLATE
    )
    before, *seen, program = json.loads(out[0])
    assert before[0] == 0 and before[2] != program
    assert [(gid, groups) for gid, groups, _ in seen] == [(4242, [4242])] * len(seen)
    assert all(parent != before[2] for *_, parent in seen)
    assert seen[-1][2] != program


@both_ways
def test_a_new_worker_ignores_the_signals_the_program_ignores_now(template: bool) -> None:
    # A program that ignored SIGHUP after its first task (to outlive its terminal)
    # had its later forked workers killed by the hang-up; a fresh interpreter inherits
    # the signals its parent ignores, and the default for every other. A real-time
    # signal too, which the template itself ignores.
    out = run_fresh(
        """
        import signal
        import makeparallel as mp

        REAL_TIME = signal.SIGRTMIN + 2

        def ignored():
            with open("/proc/self/status") as status:
                mask = int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16)
            return [bool(mask >> (number - 1) & 1) for number in (signal.SIGHUP, signal.SIGUSR1, REAL_TIME)]

        for number in (signal.SIGHUP, signal.SIGUSR1, REAL_TIME):
            signal.signal(number, signal.SIG_DFL)  # whatever ran these tests
        task = mp.parallel(backend="process")(ignored)
        seen = [task().get(timeout=30)]
        for number in (signal.SIGHUP, signal.SIGUSR1, REAL_TIME):
            signal.signal(number, signal.SIG_IGN)
        mp.configure_process_pool(initializer=abs, initargs=(1,))  # every worker is replaced
        seen.append(task().get(timeout=30))
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(REAL_TIME, signal.SIG_DFL)
        mp.configure_process_pool(initializer=abs, initargs=(2,))
        seen.append(task().get(timeout=30))
        print(seen)
        """,
        template=template,
    )
    assert " ".join(out) == "[[False, False, False], [True, True, True], [False, True, False]]"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges takes root")
def test_a_worker_the_program_may_no_longer_signal_still_ends_at_its_timeout() -> None:
    # A program that dropped its privileges may not signal the workers it started
    # before, as root: at a task's timeout the pool's loop thread died of the
    # PermissionError, and every task in the pool failed with it. Fresh interpreters,
    # which the program signals itself (a template would signal its forks).
    out = run_fresh(
        """
        import os, time
        import makeparallel as mp
        from makeparallel._backends import _process
        _process.template_available = lambda: False

        def job(seconds):
            time.sleep(seconds)
            return os.getuid()

        mp.configure_process_pool(num_workers=2)
        task = mp.parallel(backend="process")(job)
        slow = mp.parallel(backend="process", timeout=1.0)(job)
        assert [h.get(timeout=30) for h in (task(0.2), task(0.2))] == [0, 0]
        mp.health()  # imports it all, while the interpreter's own files are readable
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        other = task(2)
        try:
            slow(30).get(timeout=30)
        except mp.TaskTimeoutError:
            print("timed-out")
        info = mp.get_process_pool_info()
        print(other.get(timeout=30), info["loop_deaths"], mp.health()["live"])
        """
    )
    assert out == ["timed-out", "0", "0", "True"]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges takes root")
def test_a_worker_the_program_may_no_longer_signal_and_deaf_to_its_pipe_is_replaced_at_its_timeout(
    tmp_path: Path,
) -> None:
    # Stuck in a C call that holds the GIL, such a worker never read its end of file:
    # it stayed in the pool, busy, never replaced, and the loop thread spun at its
    # deadline, which stayed in the past. Once it ends, it is reaped: no zombie stays.
    # (Nor does it die with the program: the kernel sends a parent-death signal with
    # the parent's rights. The test kills it if it is left.)
    result, stuck = tmp_path / "result", tmp_path / "stuck"
    try:
        run_fresh(
            f"""
            import ctypes, os
            import psutil
            import makeparallel as mp
            from makeparallel._backends import _process
            from pool_helpers import wait_until
            _process.template_available = lambda: False
            quiet = os.open(os.devnull, os.O_WRONLY)  # the stuck worker keeps no pipe of the test's open
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)

            def hold_the_gil(seconds):
                with open({str(stuck)!r}, "w") as file:
                    file.write(str(os.getpid()))
                ctypes.PyDLL(None).sleep(seconds)  # a PyDLL call keeps the GIL

            mp.configure_process_pool(num_workers=2)
            mp.parallel(backend="process")(hold_the_gil)(0).get(timeout=30)  # sent by value: cloudpickle loaded
            mp.health()  # imports it all, while the interpreter's own files are readable
            report = open({str(result)!r}, "w")  # while the test's folder may be entered
            holder = open({str(stuck)!r})  # the stuck worker's pid, which it writes in there
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                mp.parallel(backend="process", timeout=0.5)(hold_the_gil)(4).get(timeout=30)
            except mp.TaskTimeoutError:
                timed_out = True
            replaced = lambda: mp.get_process_pool_info()["worker_restart_reasons"].get("timed out") == 1
            was_replaced = wait_until(replaced, 20)
            holder.seek(0)
            pid = int(holder.read())
            reaped = wait_until(lambda: not psutil.pid_exists(pid), 30)  # a zombie exists
            report.write(f"{{timed_out}} {{was_replaced}} {{reaped}} {{mp.get_process_pool_info()['loop_deaths']}}")
            report.close()
            """
        )
        assert result.read_text() == "True True True 0"
    finally:
        if stuck.exists():
            try:
                os.kill(int(stuck.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


@both_ways
def test_a_worker_ignores_sigchld_as_the_program_did_before_its_first_task(template: bool) -> None:
    # The template's own handler for SIGCHLD was reset to the default in each fork,
    # where a fresh interpreter keeps it ignored: a task's subprocess.run() then gets
    # no exit code (the child is reaped by the system), in the worker as in the program.
    out = run_fresh(
        """
        import signal, subprocess
        import makeparallel as mp

        def child():
            return signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN, subprocess.run(["sh", "-c", "exit 3"]).returncode

        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        print(mp.parallel(backend="process")(child)().get(timeout=30) == child())
        """,
        template=template,
    )
    assert out == ["True"]


@both_ways
def test_a_program_that_blocks_sigchld_and_sigterm_still_learns_of_its_workers_ends(template: bool) -> None:
    # A program that takes its signals with sigwait or signalfd blocks them first. The
    # template inherited the mask and never heard of a worker's end: a crashed task, and
    # every task after it, waited for good. A worker keeps the program's mask, but for
    # SIGTERM, with which the pool stops it at a timeout (blocked, it ran on until the
    # SIGKILL after, and what it had printed was lost).
    out = run_fresh(
        """
        import os, signal, time
        import makeparallel as mp

        def blocked():
            return sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))

        def crash():
            os._exit(3)

        def hang():
            print("hanging", flush=True)
            time.sleep(60)

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP})
        mp.configure_process_pool(num_workers=1, max_tasks_per_child=1)
        print(",".join(mp.parallel(backend="process")(blocked)().get(timeout=30)))
        try:
            mp.parallel(backend="process")(crash)().get(timeout=30)
        except mp.WorkerCrashedError:
            print("crashed")
        try:
            mp.parallel(backend="process", timeout=3)(hang)().get(timeout=30)
        except mp.TaskTimeoutError:
            print("timed-out")
        print(mp.parallel(backend="process")(abs)(-1).get(timeout=30))
        """,
        template=template,
    )
    assert out == ["SIGCHLD,SIGHUP", "crashed", "hanging", "timed-out", "1"]


@both_ways
def test_a_task_that_signals_its_parent_process_signals_the_program(template: bool) -> None:
    # A forked worker's parent is the template: a task telling the program something with
    # os.kill(os.getppid(), SIGUSR1) killed the template instead, and every worker with it.
    out = run_fresh(
        """
        import os, pickle, signal, threading
        import makeparallel as mp

        told = threading.Event()
        signal.signal(signal.SIGUSR1, lambda signum, frame: told.set())

        def tell_parent():
            os.kill(os.getppid(), signal.SIGUSR1)
            return os.getppid()

        def forked_child_sees_its_own_parent():
            pid = os.fork()
            if pid == 0:
                os._exit(0 if os.getppid() != os.getpid() and os.getppid() == worker else 1)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)

        def fork_in_task():
            global worker
            worker = os.getpid()
            return forked_child_sees_its_own_parent()

        def pickled():
            return pickle.loads(pickle.dumps(os.getppid)) is os.getppid, os.getppid

        on_process = mp.parallel(backend="process")
        print(on_process(tell_parent)().get(timeout=30) == os.getpid(), told.wait(30))
        print(on_process(os.getppid)().get(timeout=30) == os.getpid())  # sent by name: posix.getppid
        print(on_process(fork_in_task)().get(timeout=30), on_process(abs)(-1).get(timeout=30))
        print(on_process(pickled)().get(timeout=30) == (True, os.getppid))  # by name, as the built-in
        """,
        template=template,
    )
    assert out == ["True", "True", "True", "0", "1", "True"]


# A task's id changes, then the parent-death signal the worker has: Linux clears it as
# an effective user or group id changes (prctl(2)).
CHANGED_IDS = """
import ctypes, os, signal
import makeparallel as mp

def death_signal():
    signum = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(signum), 0, 0, 0)  # PR_GET_PDEATHSIG
    return signal.Signals(signum.value).name if signum.value else "none"

def change_ids():
    seen = []
    for change in (
        lambda: os.setegid(65534), lambda: os.setegid(0), lambda: os.seteuid(65534), lambda: os.seteuid(0),
        lambda: os.setresgid(0, 65534, 0), lambda: os.setregid(0, 0), lambda: os.setresuid(0, 65534, 0),
        lambda: os.setreuid(0, 0),
    ):
        change()
        seen.append(death_signal())
    return seen

print(*mp.parallel(backend="process")(change_ids)().get(timeout=30))
"""


@both_ways
@pytest.mark.skipif(os.geteuid() != 0, reason="changing ids takes root")
def test_a_task_that_changes_its_ids_keeps_its_parent_death_signal(template: bool) -> None:
    # A task that dropped root's privileges, then ran a long C call, ran on after the program
    # was killed: the change of ids had cleared the signal, asked for only as the worker started.
    assert run_fresh(CHANGED_IDS, template=template) == ["SIGKILL"] * 8


@both_ways
@pytest.mark.skipif(os.geteuid() != 0, reason="changing ids takes root")
def test_a_worker_whose_task_changed_its_ids_on_a_thread_of_its_own_asks_again_as_the_task_ends(template: bool) -> None:
    # The request is per thread, and glibc changes the ids of every thread, clearing it on
    # each: re-armed only on the task's thread, which then ended, it left the worker without.
    out = run_fresh(
        CHANGED_IDS.split("def change_ids")[0]
        + textwrap.dedent(
            """
            import threading

            def change_ids_on_a_thread():
                thread = threading.Thread(target=lambda: (os.seteuid(65534), os.seteuid(0)))
                thread.start()
                thread.join()

            mp.configure_process_pool(num_workers=1)
            on_process = mp.parallel(backend="process")
            on_process(change_ids_on_a_thread)().get(timeout=30)
            print(on_process(death_signal)().get(timeout=30))
            """
        ),
        template=template,
    )
    assert out == ["SIGKILL"]


@both_ways
@pytest.mark.skipif(os.geteuid() != 0, reason="changing ids takes root")
def test_a_worker_whose_ids_a_thread_changed_while_it_was_idle_asks_again_as_its_next_task_starts(
    template: bool, tmp_path: Path
) -> None:
    # A thread an earlier task left changed them once that task had ended: the worker's next
    # task, a long C call, ran on after the program was killed.
    go, done = tmp_path / "go", tmp_path / "done"
    out = run_fresh(
        CHANGED_IDS.split("def change_ids")[0]
        + textwrap.dedent(
            f"""
            import threading, time

            def change_ids_later():
                while not os.path.exists({str(go)!r}):
                    time.sleep(0.01)
                os.seteuid(65534)
                os.seteuid(0)
                open({str(done)!r}, "w").close()

            def leave_a_thread():
                threading.Thread(target=change_ids_later).start()

            mp.configure_process_pool(num_workers=1)
            on_process = mp.parallel(backend="process")
            on_process(leave_a_thread)().get(timeout=30)
            open({str(go)!r}, "w").close()
            deadline = time.monotonic() + 30
            while not os.path.exists({str(done)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
            print(on_process(death_signal)().get(timeout=30))
            """
        ),
        template=template,
    )
    assert out == ["SIGKILL"]


@both_ways
def test_the_id_setters_of_a_worker_are_pickled_by_name_and_leave_its_tasks_children_alone(template: bool) -> None:
    # A worker's os.setuid asks for its parent-death signal again, which a worker whose parent
    # is gone answers by exiting: not so in a process its task forked, whose parent is the worker.
    out = run_fresh(
        """
        import os, pickle
        import makeparallel as mp

        def child_changes_ids():
            pid = os.fork()
            if pid == 0:
                os.setgid(os.getgid())
                os.setuid(os.getuid())
                os._exit(7)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)

        def pickled():
            return pickle.loads(pickle.dumps(os.setuid)) is os.setuid, os.setuid

        on_process = mp.parallel(backend="process")
        print(on_process(child_changes_ids)().get(timeout=30))
        print(on_process(pickled)().get(timeout=30) == (True, os.setuid))  # by name, as the built-in
        """,
        template=template,
    )
    assert out == ["7", "True"]


@both_ways
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1", "SIGABRT", "SIGRTMIN"])
def test_a_signal_to_the_programs_process_group_is_reported_as_that_signal_and_the_pool_lives_on(
    template: bool, name: str, tmp_path: Path
) -> None:
    # kill -TERM -PGID (systemd stopping a service, by default; systemctl kill -s USR1 to
    # reopen logs) reaches the program, the template and the workers alike. The program
    # handles it; the template died of it, and the workers' tasks were reported killed by SIGKILL.
    # So did it of a signal whose default dumps core (ABRT), and of a real-time one.
    out = run_fresh(
        f"""
        import os, resource, signal, threading
        os.setsid()  # a process group of its own, which the signal reaches
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))  # no core files
        import makeparallel as mp
        from pool_helpers import wait_until
        from test_process_template import block

        stopping = threading.Event()
        signal.signal(signal.{name}, lambda signum, frame: stopping.set())
        mp.configure_process_pool(num_workers=1)
        on_process = mp.parallel(backend="process")
        print(on_process(abs)(-1).get(timeout=30))
        handle = on_process(block)({str(tmp_path)!r})
        assert wait_until(lambda: os.path.exists({str(tmp_path / "started")!r}), 30)
        os.killpg(os.getpgrp(), signal.{name})
        print(stopping.wait(30))
        try:
            handle.get(timeout=30)
        except mp.WorkerCrashedError as error:
            print("{name}" in str(error), "SIGKILL" in str(error))
        print(on_process(abs)(-2).get(timeout=30))
        """,
        template=template,
    )
    assert out == ["1", "True", "True", "False", "2"]


def test_a_real_time_signal_the_program_blocks_does_not_queue_in_the_template() -> None:
    # A program that takes a real-time signal with sigwait blocks it, and the template
    # inherited the mask: each one sent to the program's process group held a place in the
    # user's quota of pending signals for as long as the template lived.
    out = run_fresh(
        """
        import os, signal
        os.setsid()  # a process group of its own, which the signal reaches
        import psutil
        import makeparallel as mp

        REAL_TIME = signal.SIGRTMIN + 3

        def pending(pid):
            with open(f"/proc/{pid}/status") as status:
                mask = int(next(line for line in status if line.startswith("ShdPnd:")).split()[1], 16)
            return bool(mask >> (REAL_TIME - 1) & 1)

        signal.pthread_sigmask(signal.SIG_BLOCK, {REAL_TIME})
        mp.configure_process_pool(num_workers=1)
        on_process = mp.parallel(backend="process")
        template = psutil.Process(on_process(os.getpid)().get(timeout=30)).ppid()
        os.killpg(os.getpgrp(), REAL_TIME)
        print(pending(os.getpid()), pending(template))
        print(on_process(abs)(-2).get(timeout=30))
        """
    )
    assert out == ["True", "False", "2"]


def run_with_template_hook(
    hook: str, script: str, tmp_path: Path, only_where: str = "_MAKEPARALLEL_TEMPLATE"
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter whose template (alone) runs ``hook`` as it starts (a ``sitecustomize``).

    ``only_where``: the environment variable that marks the processes that run it (the template's, by default).
    """
    folder = tmp_path / "hook"
    folder.mkdir()
    guarded = f"import os\nif os.environ.get({only_where!r}):\n" + textwrap.indent(textwrap.dedent(hook), "    ")
    (folder / "sitecustomize.py").write_text(guarded)
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), PACKAGE, str(Path(__file__).parent)])
    env["HOLD_FOLDER"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=50, env=env
    )


@pytest.mark.parametrize("fresh", [False, True], ids=["the template", "a fresh-interpreter worker"])
def test_ctrl_c_as_a_process_of_the_pool_starts_reaches_the_program_alone(tmp_path: Path, fresh: bool) -> None:
    # The template ignored Ctrl-C only once its imports were done: one pressed as it
    # started printed the template's KeyboardInterrupt beside the program's, and it died.
    # A worker started as a fresh interpreter (a start-up hook's thread, macOS) had it
    # from its start: killed, a failed start (three, and the pool gave up) where the
    # program handled Ctrl-C. The hook holds the start until the program has sent it.
    script = textwrap.dedent(
        f"""
        import os, signal, threading
        os.setsid()  # a process group of its own, which Ctrl-C reaches
        import makeparallel as mp
        from pool_helpers import wait_until

        interrupted = threading.Event()
        signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
        os.environ["HOLD_WORKER"] = "1"  # a fresh-interpreter worker runs the hook, not this program
        handle = mp.parallel(backend="process")(abs)(-1)
        assert wait_until(lambda: os.path.exists({str(tmp_path / "starting")!r}), 30)
        os.killpg(os.getpgrp(), signal.SIGINT)
        assert interrupted.wait(30)
        open({str(tmp_path / "go")!r}, "w").close()
        print(handle.get(timeout=30), mp.get_process_pool_info()["worker_restarts"])
        """
    )
    completed = run_with_template_hook(
        """
        import threading
        folder = os.environ["HOLD_FOLDER"]
        open(os.path.join(folder, "starting"), "w").close()
        while not os.path.exists(os.path.join(folder, "go")):
            threading.Event().wait(0.01)
        """,
        _FRESH_INTERPRETERS + script if fresh else script,
        tmp_path,
        only_where="HOLD_WORKER" if fresh else "_MAKEPARALLEL_TEMPLATE",
    )
    assert (completed.returncode, completed.stdout.split()) == (0, ["1", "0"]), completed.stderr
    assert "KeyboardInterrupt" not in completed.stderr


def test_shutdown_ends_a_template_that_hangs_as_it_starts(tmp_path: Path) -> None:
    # A template stuck before it serves never reports the fork the pool asked for:
    # the pool's stop waited for that report for good, shutdown gave up after 5 s,
    # and the template outlived the program (it blocks SIGTERM and ignores Ctrl-C).
    completed = run_with_template_hook(
        """
        import threading
        open(os.path.join(os.environ["HOLD_FOLDER"], "template-starting"), "w").close()
        threading.Event().wait(60)  # left behind, a template with this hook ends on its own
        """,
        f"""
        import os, psutil
        import makeparallel as mp
        from pool_helpers import wait_until

        handle = mp.parallel(backend="process")(abs)(-1)
        assert wait_until(lambda: os.path.exists({str(tmp_path / "template-starting")!r}), 30)
        print(mp.shutdown(0), psutil.Process().children())
        try:
            handle.get(timeout=10)
        except mp.ShutdownError:
            print("ShutdownError")
        """,
        tmp_path,
    )
    assert completed.stdout.split() == ["False", "[]", "ShutdownError"], completed.stderr


def test_a_forced_cancel_while_the_template_hangs_as_it_starts_holds_nothing_up(tmp_path: Path) -> None:
    # Stopping a worker the template had not forked waited for the template's report on the
    # pool's loop thread: for good with a stuck template, which outlived the program.
    completed = run_with_template_hook(
        """
        import threading
        open(os.path.join(os.environ["HOLD_FOLDER"], "template-starting"), "w").close()
        threading.Event().wait(60)  # left behind, a template with this hook ends on its own
        """,
        f"""
        import os, psutil
        import makeparallel as mp
        from pool_helpers import wait_until

        mp.configure_process_pool(2)
        handles = [mp.parallel(backend="process")(abs)(-1) for _ in range(2)]
        assert wait_until(lambda: os.path.exists({str(tmp_path / "template-starting")!r}), 30)
        given = lambda info: (info["held_tasks"], info["starting_workers"]) == (2, 2)  # to workers not forked
        assert wait_until(lambda: given(mp.get_process_pool_info()), 30)
        assert handles[0].cancel(force=True)
        print(mp.shutdown(0), psutil.Process().children())  # its worker, not forked, is stopped
        """,
        tmp_path,
    )
    assert completed.stdout.split() == ["False", "[]"], completed.stderr  # (the other task never ran)


def test_killing_a_template_as_it_is_reaped_signals_no_other_process() -> None:
    # The thread that owns a template reaped it, then stored its exit code: a kill in between
    # found no such process, and the ProcessLookupError killed the pool's loop thread (and a
    # process given that pid meanwhile would have been killed instead).
    for _ in range(10):
        started = StartedTemplate()
        while started.returncode is None:
            started.kill()
        started.sock.close()
        assert started.exit_code(10) == -signal.SIGKILL


@pytest.mark.parametrize("where", ["thread start", "spawn wait"])
def test_a_ctrl_c_as_a_template_starts_leaves_no_template_running(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A first process task starts the template on the caller's thread, which waits for the
    # thread that spawns it (Thread.start, then the spawn). A Ctrl-C in either wait left the
    # template serving a socket nobody would close: a child of the program until it exited,
    # past mp.shutdown(), and an os.wait() loop after it waited for good.
    owners: list[threading.Thread] = []
    templates: list[StartedTemplate] = []
    spawned = threading.Event()

    class Owner(threading.Thread):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            templates.append(kwargs["target"].__self__)

        def start(self) -> None:
            owners.append(self)
            super().start()
            if where == "thread start":
                spawned.wait(30)  # the template is started (as a Ctrl-C here may find it)
                raise KeyboardInterrupt  # Ctrl-C while start() waits for the new thread to run

    class Spawned(threading.Event):
        def set(self) -> None:
            super().set()
            spawned.set()

        def wait(self, timeout: float | None = None) -> bool:
            super().wait(timeout)
            raise KeyboardInterrupt  # Ctrl-C while the caller waits for the spawn

    import makeparallel._backends._template_start as template_start

    namespace = type(sys)("threading")
    namespace.__dict__.update(vars(threading))
    namespace.Thread = Owner  # type: ignore[attr-defined]
    namespace.Event = Spawned  # type: ignore[attr-defined]
    monkeypatch.setattr(template_start, "threading", namespace)
    with pytest.raises(KeyboardInterrupt):
        StartedTemplate()
    monkeypatch.undo()
    assert spawned.wait(30)
    (owner,) = owners
    owner.join(30)  # it reaps the template once that exits
    try:
        assert not owner.is_alive(), "the template still runs, though nothing will ever use it"
    finally:
        templates[0].sock.close()  # ends it where the assertion failed


def test_a_template_whose_pool_closed_its_socket_with_reports_unread_ends_quietly() -> None:
    # The pool stopped (a second Ctrl-C as the program exited) before it read the template's
    # report of a fork: the template's next read raised ConnectionResetError, whose traceback
    # went to the program's standard error, and it exited with 1.
    started = StartedTemplate()
    ours, theirs = blocking_socketpair(_socket.SOCK_STREAM)
    journal = create_journal()
    try:
        Template(started).fork(theirs, journal)
        poller = select.poll()
        poller.register(started.sock.fileno(), select.POLLIN)
        assert poller.poll(30_000)  # its report of the fork, left unread
        started.sock.close()
        assert started.exit_code(30) == 0
    finally:
        theirs.close()
        os.close(journal)
        ours.close()


@pytest.mark.parametrize("number", ["signal.SIGUSR1", "signal.SIGRTMIN + 1"])
def test_a_worker_keeps_a_signal_handler_in_c_that_the_interpreter_set_as_it_started(
    tmp_path: Path, number: str
) -> None:
    # A sitecustomize that has faulthandler dump the stacks on SIGUSR1 (an operator's
    # way to see what a stuck process does) must work in workers as in a fresh interpreter:
    # the template, which must not die of that signal, must not reset it either
    # (nor ignore a real-time one, as it does those at their default).
    completed = run_with_template_hook(
        f"""
        import faulthandler, signal
        faulthandler.register({number})
        """,
        f"""
        import os, signal
        import makeparallel as mp

        def dump_my_stacks():
            os.kill(os.getpid(), {number})
            return "alive"

        print(mp.parallel(backend="process")(dump_my_stacks)().get(timeout=30))
        """,
        tmp_path,
    )
    assert (completed.returncode, completed.stdout.split()) == (0, ["alive"]), completed.stderr
    assert "dump_my_stacks" in completed.stderr  # faulthandler's dump, written to the worker's stderr


@both_ways
def test_a_worker_takes_on_the_settings_the_program_made_as_it_ran(template: bool) -> None:
    # A script that raised its recursion limit, lifted the limit on int-str digits and
    # silenced a warning at its top had its workers keep the defaults: RecursionError,
    # ValueError, and the warning printed by every worker (multiprocessing's workers have
    # them, from the fork or from running the main module again).
    out = run_fresh(
        """
        import sys, warnings
        import makeparallel as mp

        class OwnWarning(UserWarning):
            pass

        def deep(n):
            return 0 if n == 0 else 1 + deep(n - 1)

        def digits():
            return len(str(10 ** 5000))

        def warned():
            with warnings.catch_warnings(record=True) as caught:
                warnings.warn("quiet", DeprecationWarning)
                warnings.warn("noise", UserWarning)
                warnings.warn("plugin", OwnWarning)
            try:
                warnings.warn("boom now", RuntimeWarning)
            except RuntimeWarning:
                return [str(w.message) for w in caught], "raised"
            return [str(w.message) for w in caught], "not raised"

        sys.setrecursionlimit(20000)
        if hasattr(sys, "set_int_max_str_digits"):  # Python 3.11, and 3.10.7 on
            sys.set_int_max_str_digits(0)
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", "noise", UserWarning)
        warnings.filterwarnings("error", message="boom", category=RuntimeWarning)
        warnings.filterwarnings("ignore", category=OwnWarning)  # of __main__: no worker can import it
        run = lambda fn, *args: mp.parallel(backend="process")(fn)(*args).get(timeout=30)
        print(run(deep, 10000), run(digits), run(warned) == (["plugin"], "raised"))
        """,
        template=template,
    )
    assert out == ["10000", "5001", "True"]


@both_ways
def test_a_worker_takes_on_the_switches_a_script_sets_at_its_top(template: bool) -> None:
    # Bytecode written by a program that asked for none, a segmentation fault with no
    # traceback, and warnings printed where the program logs them: a fresh interpreter
    # running the script would have had each, as a fork has.
    out = run_fresh(
        """
        import faulthandler, logging, sys, warnings
        import makeparallel as mp

        def switches():
            warnings.warn("careful", UserWarning)
            return sys.dont_write_bytecode, faulthandler.is_enabled()

        flipped = not sys.dont_write_bytecode  # as this machine's environment may set it
        sys.dont_write_bytecode = flipped
        faulthandler.enable()
        logging.basicConfig(stream=sys.stdout, format="logged:%(name)s:%(message).30s")
        logging.captureWarnings(True)
        print(mp.parallel(backend="process")(switches)().get(timeout=30) == (flipped, True))
        """,
        template=template,
    )
    assert out[-1] == "True"
    assert [word.split(":")[:3] for word in out if word.startswith("logged:")] == [["logged", "py.warnings", "<string>"]]


@both_ways
def test_a_workers_warning_filters_are_the_programs_as_each_task_is_submitted(template: bool) -> None:
    # A worker started inside a catch_warnings() block took its filters for good: once the
    # block was left, the program's tasks still failed on a warning made an error there.
    out = run_fresh(
        """
        import warnings
        import makeparallel as mp
        from test_process_template import warns

        mp.configure_process_pool(num_workers=1)
        run = lambda: mp.parallel(backend="process")(warns)().get(timeout=30)
        warnings.simplefilter("ignore")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            print(run())
        print(run())
        warnings.simplefilter("error")
        print(run())
        warnings.simplefilter("ignore")  # moved back to the front: the list keeps its length
        print(run())
        """,
        template=template,
    )
    assert out == ["raised", "not-raised", "raised", "not-raised"]


@both_ways
def test_a_queued_task_meets_warnings_under_the_filters_of_its_submission(template: bool, tmp_path: Path) -> None:
    # The workers took the filters of the last submission before a task's dispatch: a task
    # submitted inside catch_warnings() with warnings made errors, queued behind a busy
    # worker, ran under the filters of a task submitted after the block.
    out = run_fresh(
        f"""
        import warnings
        import makeparallel as mp
        from pool_helpers import Flags, pid_once_released
        from test_process_template import warns

        flags = Flags({str(tmp_path)!r})
        mp.configure_process_pool(num_workers=1)
        warnings.simplefilter("ignore")
        busy = mp.parallel(backend="process")(pid_once_released)(flags)
        assert flags.wait("started", 30)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            strict = mp.parallel(backend="process")(warns)()
        lenient = mp.parallel(backend="process")(warns)()
        flags.set("go")
        busy.get(timeout=30)
        print(strict.get(timeout=30), lenient.get(timeout=30))
        """,
        template=template,
    )
    assert out == ["raised", "not-raised"]


@both_ways
def test_a_worker_started_inside_a_catch_warnings_block_takes_the_filters_of_the_last_submission(
    template: bool, tmp_path: Path
) -> None:
    # Its set-up read the filters as it started, inside the block: once the program left
    # it, the block had put back the very list it replaced, the next submission saw no
    # change, and the worker kept the block's filters for good.
    out = run_fresh(
        f"""
        import os, warnings
        import makeparallel as mp
        from pool_helpers import wait_until
        from test_process_template import warns

        def started(path):
            open(path, "w").close()

        warnings.simplefilter("ignore")
        mp.configure_process_pool(num_workers=1, prestart=True)
        run = lambda: mp.parallel(backend="process")(warns)().get(timeout=30)
        print(run())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            path = os.path.join({str(tmp_path)!r}, "started")
            mp.configure_process_pool(initializer=started, initargs=(path,))  # a new worker, started here
            assert wait_until(lambda: os.path.exists(path), 30)
        print(run())
        """,
        template=template,
    )
    assert out == ["not-raised", "not-raised"]


@both_ways
def test_a_new_worker_has_the_oom_score_adj_the_program_has_now(template: bool) -> None:
    # A program that made its workers the out-of-memory killer's first choice after its
    # first task had its later forked workers keep the template's score.
    out = run_fresh(
        """
        import makeparallel as mp

        def score():
            with open("/proc/self/oom_score_adj") as file:
                return int(file.read())

        task = mp.parallel(backend="process")(score)
        before = task().get(timeout=30)
        with open("/proc/self/oom_score_adj", "w") as file:
            file.write(str(before + 100))  # raising it takes no privilege
        mp.configure_process_pool(initializer=abs, initargs=(1,))  # every worker is replaced
        print(task().get(timeout=30) - before)
        """,
        template=template,
    )
    assert out == ["100"]


_SECCOMP = {"x86_64": (317, 135), "aarch64": (277, 92)}  # the seccomp and personality system calls' numbers


@pytest.mark.skipif(os.geteuid() != 0, reason="a seccomp filter without no_new_privs takes root")
@pytest.mark.skipif(os.uname().machine not in _SECCOMP, reason="system call numbers of x86_64 and aarch64 only")
def test_a_seccomp_filter_the_program_installed_for_all_its_threads_holds_in_its_new_workers() -> None:
    # Hardening that a later worker forked from the template escaped: a fresh
    # interpreter started then, by any of the program's threads, has the filter.
    seccomp, personality = _SECCOMP[os.uname().machine]
    out = run_fresh(
        f"""
        import ctypes, os, struct
        import makeparallel as mp

        def refused():  # personality(0xffffffff) only reads it: the filter makes it fail
            libc = ctypes.CDLL(None, use_errno=True)
            return libc.personality(0xFFFFFFFF) == -1 and ctypes.get_errno()

        libc = ctypes.CDLL(None, use_errno=True)
        task = mp.parallel(backend="process")(refused)
        before = task().get(timeout=30)
        # Load the call's number; personality() fails with EPERM, anything else is allowed.
        program = b"".join(struct.pack("HBBI", *line) for line in [
            (0x20, 0, 0, 0), (0x15, 0, 1, {personality}), (0x06, 0, 0, 0x50001), (0x06, 0, 0, 0x7FFF0000),
        ])
        code = ctypes.create_string_buffer(program)
        class Filter(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        assert libc.syscall({seccomp}, 1, 1, ctypes.byref(Filter(4, ctypes.cast(code, ctypes.c_void_p)))) == 0  # TSYNC
        mp.configure_process_pool(initializer=abs, initargs=(1,))  # every worker is replaced
        print(before, task().get(timeout=30) == 1, refused() == 1)  # EPERM
        """
    )
    assert out == ["False", "True", "True"]


def test_a_worker_skips_the_limits_the_system_refuses() -> None:
    out = run_fresh(
        """
        import os, resource
        from makeparallel._backends._inherited import take

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        take({
            "umask": 0o027,
            "limits": {resource.RLIMIT_NOFILE: (hard + 1, hard), resource.RLIMIT_CORE: (0, 0)},  # soft over hard: refused
        })
        print(oct(os.umask(0)), resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard), *resource.getrlimit(resource.RLIMIT_CORE))
        """
    )
    assert out == ["0o27", "True", "0", "0"]


def test_a_forked_worker_keeps_time_in_the_time_zone_of_the_moment() -> None:
    out = run_fresh(
        """
        import os, time
        import makeparallel as mp

        def zone():
            return time.strftime("%Z", time.localtime(0))

        task = mp.parallel(backend="process")(zone)
        before = task().get(timeout=30)  # the template starts in the program's time zone
        os.environ["TZ"] = "XYZ-5"  # a POSIX zone: no time zone database needed
        time.tzset()
        mp.configure_process_pool(initializer=os.getpid)  # every worker is replaced: new forks
        print(before, zone(), task().get(timeout=30))
        """
    )
    before, program, worker = out
    assert (before, program, worker) == (before, "XYZ", "XYZ") and before != "XYZ"


def test_workers_forked_once_the_template_is_idle_have_cloudpickle_already(two_workers: None) -> None:
    # Every task on a new worker: without the template's preload, each paid
    # cloudpickle's import on its first function sent by value.
    mp.configure_process_pool(max_tasks_per_child=1)
    try:
        assert wait_until(lambda: on_process(cloudpickle_at_start)().get(timeout=30), 30)
    finally:
        mp.configure_process_pool(max_tasks_per_child=None)


@pytest.mark.parametrize("had_it_at_start", [cloudpickle_at_start, asyncio_at_start], ids=["cloudpickle", "asyncio"])
def test_a_worker_forked_after_one_was_replaced_has_what_some_tasks_need_already(
    had_it_at_start: Callable[[], bool],
) -> None:
    # The template imports them once idle, and one that replaces a worker per task
    # never was: each worker imported cloudpickle on its first function sent by value
    # (about 17 ms), and asyncio on its first async function's task (about 40 ms on a
    # busy machine), which the map's chunk sizer took for its items' time (an imap
    # with max_tasks_per_child=1 kept its chunks at one item: 5 s for 300).
    fresh_process_pool(1)
    mp.configure_process_pool(max_tasks_per_child=1)
    try:
        on_process(had_it_at_start)().get(timeout=30)  # the first worker, recycled after it
        assert on_process(had_it_at_start)().get(timeout=30)
    finally:
        mp.configure_process_pool(max_tasks_per_child=None)


def test_a_forked_worker_collects_garbage_as_a_fresh_interpreter_does(two_workers: None) -> None:
    # The template runs with its collector off; a worker turns it on, and sees
    # (gc.get_objects, get_referrers) every object, the template's too.
    enabled, frozen, sees_the_template, collected = on_process(garbage_collection)().get(timeout=30)
    assert enabled
    assert frozen == 0
    assert sees_the_template
    assert collected >= 1  # the cycle the task left


def test_blas_limits_hold_in_a_forked_worker(two_workers: None, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    for name in _process.THREAD_LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    expected = max(1, usable_cpus().cpus // 2)
    threads = on_process(blas_threads)().get(timeout=60)
    assert threads and all(count == expected for count in threads), threads


def test_a_users_omp_num_threads_limits_openblas_in_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenBLAS reads OPENBLAS_NUM_THREADS before OMP_NUM_THREADS: the pool's own, set
    # beside the user's OMP_NUM_THREADS=1, gave it all the worker's share of the cores.
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    for name in _process.THREAD_LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(_process, "usable_cpus", lambda: UsableCpus(8, "affinity"))  # the pool's share: 8
    fresh_process_pool(1)
    threads = on_process(blas_threads)().get(timeout=60)
    assert threads == [1] * len(threads) and threads, threads


def test_killing_the_template_kills_its_workers_and_the_pool_recovers(two_workers: None, tmp_path: Path) -> None:
    pids = live_worker_pids()
    template = psutil.Process(psutil.Process(pids[0]).ppid())
    running = on_process(block)(str(tmp_path))
    assert wait_until(lambda: (tmp_path / "started").exists(), 30)

    template.send_signal(signal.SIGKILL)

    # The message says that the template died, not that the task crashed its worker alone.
    with pytest.raises(mp.WorkerCrashedError, match="died with signal SIGKILL.*the pool's template process.*died"):
        running.get(timeout=30)
    assert all(wait_until(lambda pid=pid: not psutil.pid_exists(pid) or _zombie_elsewhere(pid), 15) for pid in pids)
    assert on_process(worker_pid)().get(timeout=30) not in pids  # a new template forked a new worker


def block_on_item(path: str, item: int) -> int:
    """Return ``item``, except item 3, which blocks (after saying so) until its worker is killed; item 5 says it started."""
    if item == 3:
        block(path)
    if item == 5:
        Path(path, "last").touch()
    return item


def test_a_map_item_running_as_the_template_is_killed_fails_without_the_blame(
    two_workers: None, tmp_path: Path
) -> None:
    # Its worker died because the template did: the item fails, as it was running, but
    # its message must not say that it crashed its worker, as it does for a real crash.
    template = psutil.Process(psutil.Process(live_worker_pids()[0]).ppid())
    errors: list[BaseException] = []

    def run_map() -> None:
        try:
            mp.parallel_map(functools.partial(block_on_item, str(tmp_path)), range(6), backend="process", chunksize=1)
        except BaseException as error:
            errors.append(error)

    mapping = threading.Thread(target=run_map)
    mapping.start()
    assert wait_until(lambda: (tmp_path / "started").exists(), 30)
    # The last item started on the other worker: every item before 3 ended there, its result
    # journaled. Killed sooner on a loaded machine, that worker's item 1 still ran, and failed first.
    assert wait_until(lambda: (tmp_path / "last").exists(), 30)

    template.send_signal(signal.SIGKILL)

    mapping.join(30)
    assert not mapping.is_alive()
    [error] = errors
    assert isinstance(error, mp.WorkerCrashedError)
    assert "item 3 (3) of the map was running when its worker process died" in str(error)
    assert "the pool's template process" in str(error) and "crashed its worker" not in str(error)
    assert mp.parallel_map(abs, [-1, -2], backend="process") == [1, 2]  # new workers, from a new template


def start_slowly(folder: str, release: str) -> None:
    """An initializer that says it started, then waits for ``release`` to exist."""
    Path(folder, str(os.getpid())).touch()
    while not os.path.exists(release):
        threading.Event().wait(0.01)


def remember(value: str) -> None:
    """An initializer that keeps ``value`` for :func:`remembered`."""
    os.environ["MAKEPARALLEL_TEST_REMEMBERED"] = value


def remembered() -> str:
    return os.environ["MAKEPARALLEL_TEST_REMEMBERED"]


def fail_if_broken_at_start(folder: str) -> None:
    """An initializer that raises if ``folder/broken`` existed as it started, once ``folder/go`` exists."""
    broken = os.path.exists(os.path.join(folder, "broken"))
    Path(folder, str(os.getpid())).touch()
    while not os.path.exists(os.path.join(folder, "go")):
        threading.Event().wait(0.01)
    if broken:
        raise ValueError("the initializer found it broken")


def test_configuring_the_pool_again_fails_only_the_tasks_submitted_before_on_a_set_up_that_failed(
    tmp_path: Path,
) -> None:
    # The user fixes what made the initializer fail, and configures the pool again: a worker
    # started before, whose initializer failed, failed the next task too with that old error,
    # and counted as a failed start of the new configuration. A task submitted before the
    # call fails with it, as ever, though the call is an autoscaler's, made again and again.
    folder = tmp_path / "workers"
    folder.mkdir()
    (folder / "broken").touch()
    fresh_process_pool(2)
    restarts = mp.get_process_pool_info()["worker_restart_reasons"]
    try:
        mp.configure_process_pool(initializer=fail_if_broken_at_start, initargs=(str(folder),))
        before = on_process(worker_pid)()
        assert wait_until(lambda: len(list(folder.glob("[0-9]*"))) == 2, 30)  # both in their initializer, broken
        started_before = {int(path.name) for path in folder.glob("[0-9]*")}
        (folder / "broken").unlink()
        mp.configure_process_pool(2)
        after = on_process(worker_pid)()  # to the worker that has no task yet
        (folder / "go").touch()
        with pytest.raises(mp.WorkerCrashedError, match="the initializer found it broken"):
            before.get(timeout=30)
        assert after.get(timeout=30) not in started_before
        now = mp.get_process_pool_info()["worker_restart_reasons"]
        new = {reason: count - restarts.get(reason, 0) for reason, count in now.items()}
        assert {reason: count for reason, count in new.items() if count} == {"initializer failed": 2}
    finally:
        (folder / "go").touch()
        mp.configure_process_pool(initializer=None)


def test_a_task_given_to_a_worker_whose_initializer_was_replaced_runs_with_the_new_one(tmp_path: Path) -> None:
    # Sent to a worker still in its initializer, it failed with that initializer's
    # error (which once named the new one) though the pool had been given another.
    # Held in the parent until that worker is ready, it goes to one set up anew.
    folder = tmp_path / "workers"
    folder.mkdir()
    (folder / "broken").touch()
    fresh_process_pool(1)
    try:
        mp.configure_process_pool(initializer=fail_if_broken_at_start, initargs=(str(folder),))
        before = on_process(remembered)()
        assert wait_until(lambda: any(folder.glob("[0-9]*")), 30)  # in its initializer, broken
        mp.configure_process_pool(initializer=remember, initargs=("fixed",))
        (folder / "go").touch()
        assert before.get(timeout=30) == "fixed"
    finally:
        (folder / "go").touch()
        mp.configure_process_pool(initializer=None)


@both_ways
def test_every_task_submitted_after_a_new_initializer_runs_after_it(
    template: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool's loop read the set-up, then started a worker outside its lock: a new set-up
    # given meanwhile recycled the workers already there, and not that one, which kept the
    # old set-up for good.
    if not template:
        monkeypatch.setattr(_process, "template_available", lambda: False)
    fresh_process_pool(2)
    try:
        for attempt in range(5):
            mp.configure_process_pool(initializer=remember, initargs=(f"old{attempt}",))
            first = on_process(remembered)()  # the pool's workers start as the set-up changes
            mp.configure_process_pool(initializer=remember, initargs=(f"new{attempt}",))
            first.get(timeout=30)
            assert [h.get(timeout=30) for h in [on_process(remembered)() for _ in range(6)]] == [f"new{attempt}"] * 6
    finally:
        mp.configure_process_pool(initializer=None)


def test_a_template_killed_while_its_workers_start_counts_as_one_failed_start(tmp_path: Path) -> None:
    # The workers die with their template, at once: each counted as a failed start, and
    # after three in a row the pool gave up and failed every task.
    release = tmp_path / "release"
    fresh_process_pool(4)
    try:
        mp.configure_process_pool(initializer=start_slowly, initargs=(str(tmp_path), str(release)))
        task = on_process(worker_pid)()
        assert wait_until(lambda: len(list(tmp_path.iterdir())) == 4, 30)  # four workers in their initializer
        starting = [int(path.name) for path in tmp_path.iterdir()]
        psutil.Process(psutil.Process(starting[0]).ppid()).send_signal(signal.SIGKILL)
        assert all(wait_until(lambda pid=pid: _zombie_elsewhere(pid), 15) for pid in starting)
        release.touch()

        assert task.get(timeout=30) not in starting  # run by a worker of a new template
    finally:
        release.touch()
        mp.configure_process_pool(initializer=None)


@both_ways
def test_workers_that_cannot_start_are_reported_with_their_exit_code(template: bool, tmp_path: Path) -> None:
    # A template that could not start (here a sitecustomize that exits in every
    # process but the program's) had its workers reported killed by SIGKILL.
    folder = tmp_path / "site"
    folder.mkdir()
    program_started = tmp_path / "program-started"
    (folder / "sitecustomize.py").write_text(
        f"import os\nif os.path.exists({str(program_started)!r}):\n    os._exit(3)\n"
        f"open({str(program_started)!r}, 'w').close()\n"
    )
    out = run_fresh(
        """
        import makeparallel as mp
        try:
            mp.parallel(backend="process")(abs)(-1).get(timeout=30)
        except mp.WorkerCrashedError as error:
            print(error)
        """,
        template=template,
        path=(str(folder),),
    )
    assert "died while they started up (before any task), the last with exit code 3;" in " ".join(out)


def test_a_template_that_runs_other_threads_forks_no_worker(tmp_path: Path) -> None:
    # A sitecustomize that starts a thread (a tracing agent's, say) started it in the template
    # too: a worker forked while that thread held a lock waited for the lock for good.
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import threading\n"
        "lock = threading.Lock()\n"
        "def hold():\n"
        "    while True:\n"
        "        with lock:\n"
        "            threading.Event().wait(0.001)\n"
        "        threading.Event().wait(0.001)\n"
        "threading.Thread(target=hold, daemon=True).start()\n"
    )
    out = run_fresh(
        """
        import json, os
        import makeparallel as mp
        import sitecustomize
        from test_process_template import parent_process

        def take():
            taken = sitecustomize.lock.acquire(timeout=2)
            if taken:
                sitecustomize.lock.release()
            return taken, parent_process() == os.getppid()  # a fresh interpreter's parent: the program

        mp.configure_process_pool(2, max_tasks_per_child=1)  # a new worker for each task
        task = mp.parallel(backend="process")(take)
        print(json.dumps([h.get(timeout=30) for h in [task() for _ in range(6)]]).replace(" ", ""))
        print(sorted(mp.get_process_pool_info()["worker_restart_reasons"]))
        """,
        path=(str(folder),),
    )
    assert json.loads(out[0]) == [[True, True]] * 6
    assert out[1:] == ["['max_tasks_per_child']"]


@both_ways
@pytest.mark.parametrize(
    ("executable", "reason"),
    [
        (None, "(OSError: cannot start None as a new interpreter: TypeError:"),
        ("", "(PermissionError: [Errno 13] cannot start sys.executable ('') as a new interpreter:"),
    ],
    ids=["None", "empty"],
)
def test_a_sys_executable_no_interpreter_starts_from_fails_the_tasks_with_the_reason(
    template: bool, executable: str | None, reason: str
) -> None:
    # An embedded interpreter's sys.executable may be None: the TypeError killed the pool's
    # loop thread, or went unnoticed until the template's workers were "killed by SIGKILL".
    # A program started with `exec -a name` where no such program is on PATH has an empty
    # one: the tasks failed with "PermissionError: [Errno 13] Permission denied: ''".
    out = run_fresh(
        f"""
        import sys
        import makeparallel as mp

        sys.executable = {executable!r}
        try:
            mp.parallel(backend="process")(abs)(-1).get(timeout=30)
        except mp.WorkerCrashedError as error:
            print(error)
        """,
        template=template,
    )
    assert f"refused to start a worker process {reason}" in " ".join(out)


def log_then_wait_for_the_pool_to_hang_up(log: str) -> None:
    """An initializer that sends its standard error to ``log``, then waits until the pool closes its pipe."""
    import select
    import stat

    sys.stderr = open(log, "w")  # noqa: SIM115  # a worker's log, as some initializers set up
    poller = select.poll()
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                poller.register(int(name), 0)  # the pipe to the pool: POLLHUP once it closed its end
        except OSError:
            pass
    poller.poll(30_000)


@both_ways
def test_a_worker_the_pool_stops_in_its_initializer_ends_quietly(
    template: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Told "ready" to a pool that had stopped, it died of BrokenPipeError: exit code 1,
    # and the traceback in the log its initializer opened, at every such exit.
    if not template:
        monkeypatch.setattr(_process, "template_available", lambda: False)
    log = tmp_path / "worker.log"
    fresh_process_pool(1)
    try:
        mp.configure_process_pool(initializer=log_then_wait_for_the_pool_to_hang_up, initargs=(str(log),))
        task = on_process(worker_pid)()
        assert wait_until(log.exists, 30)
        assert not mp.shutdown(0)  # the task never started: the pool stops its worker at once
        with pytest.raises(mp.ShutdownError):
            task.get(timeout=10)
        assert log.read_text() == ""
    finally:
        mp.reset_shutdown()
        mp.configure_process_pool(initializer=None)


@both_ways
def test_a_module_that_fails_to_import_in_the_template_fails_only_the_tasks_that_need_it(
    template: bool, tmp_path: Path
) -> None:
    # The template imports cloudpickle, logging and the library's errors ahead of the
    # tasks that need them (before its first fork, for a prestarted pool): one that
    # raised killed the template, and every worker with it, for tasks that need none.
    (tmp_path / "cloudpickle.py").write_text("raise RuntimeError('a broken cloudpickle')\n")
    out = run_fresh(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import makeparallel as mp

        mp.configure_process_pool(2, prestart=True)
        print(mp.parallel(backend="process")(abs)(-1).get(timeout=30))
        """,
        template=template,
    )
    assert out == ["1"]


def test_the_pool_survives_its_template_killed_again_and_again(two_workers: None) -> None:
    # Each new template and worker may get the socket numbers of the dead ones:
    # the pool must still hear from every one of them.
    for _ in range(3):
        pids = live_worker_pids()
        psutil.Process(psutil.Process(pids[0]).ppid()).send_signal(signal.SIGKILL)
        assert all(wait_until(lambda pid=pid: _zombie_elsewhere(pid), 15) for pid in pids)
        # A task sent to a dead worker before the pool heard of its death fails; wait for that.
        assert wait_until(lambda: not set(mp.get_process_pool_info()["worker_pids"]) & set(pids), 15)
        results = [h.get(timeout=30) for h in [on_process(worker_pid)() for _ in range(8)]]
        assert not set(results) & set(pids)


def test_a_program_that_reaps_orphans_is_left_no_zombie_by_a_killed_template() -> None:
    # A container's entry point (PID 1) or a subreaper inherits the workers of a
    # template that died: each template's death left them as its zombies until it ended.
    out = run_fresh(
        """
        import ctypes, os, signal
        import psutil
        import makeparallel as mp
        from pool_helpers import live_worker_pids, wait_until

        assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
        mp.configure_process_pool(2, prestart=True)
        for _ in range(2):
            pids = live_worker_pids()
            psutil.Process(psutil.Process(pids[0]).ppid()).send_signal(signal.SIGKILL)
            # Each worker ends, re-parented here, and is reaped: no process of its pid is left.
            print(all(wait_until(lambda pid=pid: not psutil.pid_exists(pid), 15) for pid in pids))
            mp.configure_process_pool(prestart=True)  # a new template and workers
        """
    )
    assert out == ["True", "True"]


def _zombie_elsewhere(pid: int) -> bool:
    """A worker whose template died is re-parented; its new parent reaps it when it will."""
    try:
        process = psutil.Process(pid)
        return process.status() == psutil.STATUS_ZOMBIE and process.ppid() != os.getpid()
    except psutil.NoSuchProcess:
        return True


def test_worker_pids_names_only_workers_forked_already(two_workers: None) -> None:
    # A worker the template had not forked yet (its pid unknown) was listed as None:
    # a program that signalled each pid it was given raised.
    pids = live_worker_pids()
    template = psutil.Process(psutil.Process(pids[0]).ppid())
    template.send_signal(signal.SIGSTOP)  # it answers no fork request until continued
    try:
        mp.configure_process_pool(4)
        on_process(worker_pid)()  # the pool grows: two workers asked of the template
        assert wait_until(lambda: mp.get_process_pool_info()["live_workers"] == 4, 15)
        assert sorted(mp.get_process_pool_info()["worker_pids"]) == pids
    finally:
        template.send_signal(signal.SIGCONT)
    assert wait_until(lambda: len(mp.get_process_pool_info()["worker_pids"]) == 4, 15)


def test_shutdown_stops_the_template_too(two_workers: None) -> None:
    pids = live_worker_pids()
    template = psutil.Process(psutil.Process(pids[0]).ppid())
    assert mp.shutdown(10)
    try:
        assert not psutil.pid_exists(template.pid)  # stopped and reaped
        # (Only the pool's own: other tests' libraries may keep processes of theirs.)
        assert all(wait_until(lambda pid=pid: not psutil.pid_exists(pid) or _zombie_elsewhere(pid), 15) for pid in pids)
    finally:
        mp.reset_shutdown()


def test_shutdown_stops_a_template_a_first_task_started_before_a_ctrl_c() -> None:
    # A Ctrl-C as a first process task imported the pool's modules, its template started
    # early, left that template to no pool: it served on past mp.shutdown(), a child of the
    # program until its next first process task took it, or its exit.
    out = run_fresh(
        """
        import psutil
        import makeparallel as mp
        from makeparallel import _runtime

        def interrupted():
            raise KeyboardInterrupt  # Ctrl-C as the pool's modules import

        made = _runtime._idle_process_backend
        _runtime._idle_process_backend = interrupted
        try:
            mp.parallel(backend="process")(abs)(-1)
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
        _runtime._idle_process_backend = made
        assert [child for child in psutil.Process().children()], "no template started"
        print(mp.shutdown(10), [c for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE])
        mp.reset_shutdown()
        print(mp.parallel(backend="process")(abs)(-2).get(timeout=30))  # a first task after it works
        """
    )
    assert out == ["KeyboardInterrupt", "True", "[]", "2"]


def test_without_a_template_workers_are_fresh_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_process, "template_available", lambda: False)  # what a system without fork gets
    with mp.Executor(backend="process", max_workers=1) as executor:
        pid = executor.submit(worker_pid).result(timeout=60)
        worker: Any = psutil.Process(pid)
        assert worker.ppid() == os.getpid()
        command = " ".join(worker.cmdline())
        assert "_process_worker" in command and "_template" not in command


def run_fresh(
    script: str, options: tuple[str, ...] = (), template: bool = True, path: tuple[str, ...] = ()
) -> list[str]:
    """Run ``script`` in a fresh interpreter started with ``options``, where the first process task makes the pool; its output's words.

    ``template`` false: the pool's workers are fresh interpreters (``both_ways``).
    ``path``: folders put first in ``PYTHONPATH`` (a ``sitecustomize`` that every process runs).
    """
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    here = [PACKAGE, str(Path(__file__).parent)]  # the package, pool_helpers
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*path, *here, env.get("PYTHONPATH")]))
    code = textwrap.dedent(script) if template else _FRESH_INTERPRETERS + textwrap.dedent(script)
    with tempfile.TemporaryDirectory() as scratch:
        env["TMPDIR"] = scratch  # what the script makes with tempfile goes with it
        completed = subprocess.run(
            [sys.executable, *options, "-c", code],
            capture_output=True,
            text=True,
            timeout=50,
            env=env,
            check=False,
        )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()


def test_the_template_outlives_the_thread_whose_task_started_it() -> None:
    # Linux sends the parent-death signal when the thread that started a process
    # ends: a template started by a short-lived thread (a web request's) must not die with it.
    out = run_fresh(
        """
        import os, threading
        import psutil
        import makeparallel as mp
        from pool_helpers import wait_until
        from test_process_template import parent_process

        getppid = mp.parallel(backend="process")(parent_process)
        first = []
        submitter = threading.Thread(target=lambda: first.append(getppid().get(timeout=30)))
        submitter.start()
        tid = submitter.native_id
        submitter.join()
        assert wait_until(lambda: not os.path.exists(f"/proc/self/task/{tid}"), 30)  # the thread is gone
        mp.configure_process_pool(max_tasks_per_child=1)  # from now on each task runs on a new fork
        later = {getppid().get(timeout=30) for _ in range(3)}
        print(first[0], *later, psutil.Process(first[0]).status() != psutil.STATUS_ZOMBIE)
        """
    )
    template, *later, alive = out
    assert set(later) == {template}, out  # every worker forked by the template the first task started
    assert alive == "True"


def test_the_template_holds_no_descriptor_of_the_parent_but_its_socket() -> None:
    # What subprocess's close_fds gives: a pipe the parent made inheritable reaches
    # end of file when the parent closes it, though a template and workers started meanwhile.
    out = run_fresh(
        """
        import os, select
        import makeparallel as mp

        read_end, write_end = os.pipe()
        os.set_inheritable(write_end, True)
        assert mp.parallel(backend="process")(abs)(-1).get(timeout=30) == 1
        os.close(write_end)
        readable, _, _ = select.select([read_end], [], [], 30)
        print(bool(readable) and os.read(read_end, 1) == b"")
        """
    )
    assert out == ["True"]


def test_configuring_or_inspecting_the_pool_starts_no_template() -> None:
    out = run_fresh(
        """
        import makeparallel as mp, psutil
        mp.configure_process_pool(2, max_tasks_per_child=5)
        mp.get_process_pool_info()
        print(len(psutil.Process().children()))
        assert mp.parallel(backend="process")(abs)(-1).get(timeout=30) == 1
        print(len(psutil.Process().children()))
        """
    )
    assert out[0] == "0"
    assert int(out[1]) >= 1  # the first task started it


@both_ways
def test_large_tasks_arrive_though_the_program_set_a_default_socket_timeout(template: bool) -> None:
    # socket.setdefaulttimeout makes every later socket non-blocking at the system level,
    # the pool's pairs included: the worker's end, wrapped there as blocking, failed its
    # reads, and a task of a few MiB never arrived (TaskTimeoutError).
    out = run_fresh(
        """
        import socket
        socket.setdefaulttimeout(0.5)
        import makeparallel as mp
        mp.configure_process_pool(1)
        data = bytes(8 * 1024 * 1024)
        handles = [mp.parallel(backend="process")(len)(data) for _ in range(2)]
        print(*[handle.get(timeout=30) for handle in handles])
        print(len(mp.parallel(backend="process")(bytes)(8 * 1024 * 1024).get(timeout=30)))
        """,
        template=template,
    )
    assert out == [str(8 * 1024 * 1024)] * 3


@both_ways
@pytest.mark.parametrize("pythonpath", [None, "/opt/plugins"], ids=["no PYTHONPATH", "a PYTHONPATH"])
def test_a_worker_and_the_pythons_it_runs_have_the_programs_pythonpath(
    template: bool, pythonpath: str | None
) -> None:
    # The pool once put its sys.path in the workers' PYTHONPATH: a Python a task ran
    # (a tool, another virtual environment, another version) imported this one's packages.
    out = run_fresh(
        f"""
        import os, subprocess, sys
        import makeparallel as mp
        os.environ.pop("PYTHONPATH", None)
        if {pythonpath!r} is not None:
            os.environ["PYTHONPATH"] = {pythonpath!r}

        def pythonpaths():
            child = [sys.executable, "-c", "import os; print(os.environ.get('PYTHONPATH'))"]
            return os.environ.get("PYTHONPATH"), subprocess.run(child, capture_output=True, text=True).stdout.strip()

        print(*mp.parallel(backend="process")(pythonpaths)().get(timeout=30))
        """,
        template=template,
    )
    assert out == [str(pythonpath), str(pythonpath)]  # the worker's, and its child's


@both_ways
def test_workers_start_though_the_program_removed_the_packages_folder_from_sys_path(template: bool) -> None:
    # Without site (-S), the package is found only through the folder the program added.
    out = run_fresh(
        f"""
        import os, sys
        sys.path.insert(0, {PACKAGE!r})
        import makeparallel as mp
        while {PACKAGE!r} in sys.path:
            sys.path.remove({PACKAGE!r})
        from makeparallel._backends import _process
        if not {template!r}:
            _process.template_available = lambda: False
        print(mp.parallel(backend="process")(os.getpid)().get(timeout=30) != os.getpid())
        """,
        options=("-S",),
    )
    assert out == ["True"]


@both_ways
def test_workers_run_the_copy_of_the_package_the_program_runs(
    template: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another copy stays on sys.path (through PYTHONPATH, as an installed one would):
    # the one the program imported, from a folder it then removed, is the workers' too.
    for variable in [name for name in os.environ if name.startswith("COVERAGE_")]:
        monkeypatch.delenv(variable)  # the copy is no code of the project's to measure
    shutil.copytree(Path(mp.__file__).parent, tmp_path / "makeparallel", ignore=shutil.ignore_patterns("__pycache__"))
    out = run_fresh(
        f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import makeparallel as mp
        sys.path.remove({str(tmp_path)!r})
        from makeparallel._backends import _process
        if not {template!r}:
            _process.template_available = lambda: False

        def package():
            return sys.modules["makeparallel"].__file__

        print(package(), mp.parallel(backend="process")(package)().get(timeout=30))
        """
    )
    assert out == [str(tmp_path / "makeparallel" / "__init__.py")] * 2


@both_ways
def test_prestarted_workers_run_an_initializer_from_a_folder_added_since_the_last_task(
    template: bool, tmp_path: Path
) -> None:
    (tmp_path / "plugin_setup.py").write_text("import os\ndef setup():\n    os.environ['PLUGIN_SET_UP'] = 'yes'\n")
    out = run_fresh(
        f"""
        import os, sys
        import makeparallel as mp
        from pool_helpers import wait_until

        @mp.parallel(backend="process")
        def set_up():
            return os.environ.get("PLUGIN_SET_UP")

        set_up().get(timeout=30)  # the pool runs, with the sys.path of then
        sys.path.append({str(tmp_path)!r})
        import plugin_setup
        mp.configure_process_pool(initializer=plugin_setup.setup, prestart=True)  # no task meanwhile
        assert wait_until(lambda: mp.get_process_pool_info()["ready_workers"] == mp.get_process_pool_info()["num_workers"], 30)
        print(set_up().get(timeout=30))
        """,
        template=template,
    )
    assert out == ["yes"]


@pytest.mark.parametrize("removed", [False, True])
def test_dev_mode_from_the_environment_reaches_workers_as_it_reached_the_program(
    removed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Removed since, the variable is passed on as -X dev, which the program's own
    # sys._xoptions never had: only then (a worker saw {"dev": True} where it had {}).
    monkeypatch.setenv("PYTHONDEVMODE", "1")
    out = run_fresh(
        f"""
        import os, sys
        import makeparallel as mp
        if {removed!r}:
            del os.environ["PYTHONDEVMODE"]  # the setting stays this interpreter's, and its workers'

        def dev_mode():
            return sys.flags.dev_mode, "dev" in sys._xoptions

        print(*dev_mode(), *mp.parallel(backend="process")(dev_mode)().get(timeout=30))
        """
    )
    assert out == ["True", "False", "True", str(removed)]


@both_ways
def test_a_worker_imports_what_the_program_imports_through_the_same_sys_path(template: bool, tmp_path: Path) -> None:
    # python -c puts "" (the current folder) first: a module there shadows an installed
    # one, in the workers too; a folder whose name holds os.pathsep is a folder; and a
    # sys.path of 200 KB is longer than one command-line argument may be (128 KiB).
    (tmp_path / "threadpoolctl.py").write_text("")  # shadows the installed threadpoolctl
    (tmp_path / "a:b").mkdir()
    (tmp_path / "a:b" / "colon_probe.py").write_text("")
    out = run_fresh(
        f"""
        import os, sys
        os.chdir({str(tmp_path)!r})
        sys.path.append({str(tmp_path / "a:b")!r})
        sys.path += [f"/nonexistent/{{i:04}}/" + "x" * 90 for i in range(2000)]
        import makeparallel as mp

        def origins():
            import colon_probe, threadpoolctl
            return threadpoolctl.__file__, colon_probe.__file__

        print(*origins(), *mp.parallel(backend="process")(origins)().get(timeout=30))
        """,
        template=template,
    )
    assert out == [str(tmp_path / "threadpoolctl.py"), str(tmp_path / "a:b" / "colon_probe.py")] * 2


@both_ways
def test_a_worker_runs_with_the_programs_interpreter_options(template: bool) -> None:
    # -I ignores PYTHONPATH: the package is found through the sys.path the program was given.
    out = run_fresh(
        f"""
        import json, sys
        sys.path.insert(0, {PACKAGE!r})
        import makeparallel as mp
        from makeparallel._backends import _process
        if not {template!r}:
            _process.template_available = lambda: False

        def options():
            flags = sys.flags
            return [flags.optimize, flags.isolated, flags.utf8_mode, flags.dev_mode, sys.warnoptions, sys._xoptions]

        print(json.dumps([options(), mp.parallel(backend="process")(options)().get(timeout=30)], separators=(",", ":")))
        """,
        options=("-I", "-B", "-OO", "-X", "utf8", "-W", "error::DeprecationWarning", "-X", "dev"),
    )
    program, worker = json.loads(out[0])
    assert program[:4] == [2, 1, 1, 1]  # the options took, in the program
    assert worker == program


@both_ways
@pytest.mark.parametrize(
    ("seed", "options", "random"),
    [("0", ("-R",), True), ("123", ("-BR",), True), ("0", (), False), ("123", (), False)],
)
def test_a_worker_hashes_with_a_random_secret_where_the_program_does(
    template: bool, seed: str, options: tuple[str, ...], random: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # python -R hashes with a random secret whatever PYTHONHASHSEED says; its workers,
    # started without -R, hashed with the seed: hash("abc") the same in every run. A
    # seed without -R still reaches them: the program's hashes and theirs are equal.
    monkeypatch.setenv("PYTHONHASHSEED", seed)
    script = """
        import sys
        import makeparallel as mp

        def hashing():
            return sys.flags.hash_randomization, hash("abc")

        print(*hashing(), *mp.parallel(backend="process")(hashing)().get(timeout=30))
        """
    runs = [run_fresh(script, options=options, template=template) for _ in range(2)]
    for program_flag, program_hash, worker_flag, worker_hash in runs:
        assert worker_flag == program_flag
        assert (worker_hash == program_hash) is not random
    assert (runs[0][3] == runs[1][3]) is not random


@pytest.mark.parametrize(
    ("command_line", "given"),
    [
        (["python", "-R", "program.py"], True),
        (["python", "-BRO", "-c", "pass"], True),
        (["python", "-W", "ignore", "-X", "dev", "-R", "-m", "module"], True),
        (["python", "-Wignore", "-Xdev", "-R", "-c", "pass"], True),
        (["python", "--check-hash-based-pycs", "always", "-R", "-"], True),
        (["python", "-W", "-R", "program.py"], False),  # -W's value
        (["python", "-X", "-R", "program.py"], False),  # -X's value
        (["python", "--check-hash-based-pycs", "-R", "program.py"], False),  # its value
        (["python", "-cR"], False),  # the command
        (["python", "-c", "pass", "-R"], False),  # the program's arguments, from here on
        (["python", "-m", "module", "-R"], False),
        (["python", "program.py", "-R"], False),
        (["python", "-", "-R"], False),
        (["python", "--", "program.py", "-R"], False),
        (["python", "-O"], False),
        ([], False),  # an embedding program's
    ],
)
def test_the_R_option_is_read_from_the_command_line_as_the_interpreter_reads_it(
    command_line: list[str], given: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "orig_argv", command_line)
    assert _interpreter_options._started_with_random_hashes() is given


def test_a_worker_finds_modules_in_a_folder_of_sys_path_made_after_the_template_started() -> None:
    # The template's imports looked for the folder and remembered it has no finder;
    # each new worker forgets that (and re-reads every folder) before its first task.
    out = run_fresh(
        """
        import os, sys, tempfile
        later = os.path.join(tempfile.mkdtemp(), "later")
        sys.path.insert(0, later)  # missing when the template starts
        import makeparallel as mp
        mp.configure_process_pool(1, max_tasks_per_child=1)  # a new fork for every task
        assert mp.parallel(backend="process")(abs)(-1).get(timeout=30) == 1
        os.mkdir(later)
        with open(os.path.join(later, "written_later.py"), "w") as module:
            module.write("VALUE = 42\\n")

        def value():
            import written_later
            return written_later.VALUE

        print(mp.parallel(backend="process")(value)().get(timeout=30))
        """
    )
    assert out == ["42"]


def test_a_running_worker_finds_a_namespace_package_portion_added_while_sys_path_changed_and_back() -> None:
    # A namespace package reads its folders again when sys.path differs from when it
    # last read them, or when the import system's epoch moved on: here sys.path ends
    # as it was, and only the epoch tells the worker that a folder gained a portion.
    out = run_fresh(
        """
        import os, sys, tempfile
        import makeparallel as mp
        a, b, c = (tempfile.mkdtemp() for _ in range(3))
        os.mkdir(os.path.join(a, "split_namespace"))
        with open(os.path.join(a, "split_namespace", "first.py"), "w") as module:
            module.write("VALUE = 1\\n")
        sys.path[:0] = [a, b]
        mp.configure_process_pool(1)

        def first():
            import split_namespace.first
            return os.getpid(), split_namespace.first.VALUE

        def second():
            import split_namespace.second
            return os.getpid(), split_namespace.second.VALUE

        pid, one = mp.parallel(backend="process")(first)().get(timeout=30)
        sys.path.insert(0, c)  # a folder for one task: the worker is sent the new path
        assert mp.parallel(backend="process")(abs)(-1).get(timeout=30) == 1
        sys.path.remove(c)  # and the old one again
        os.mkdir(os.path.join(b, "split_namespace"))
        with open(os.path.join(b, "split_namespace", "second.py"), "w") as module:
            module.write("VALUE = 2\\n")
        same_pid, two = mp.parallel(backend="process")(second)().get(timeout=30)
        print(pid == same_pid, one, two)
        """
    )
    assert out == ["True", "1", "2"]


def test_a_first_process_task_imports_neither_pickle_socket_signal_ctypes_nor_the_thread_backend() -> None:
    # Its pool uses the C modules under them: the Python modules import re and enum,
    # milliseconds of the parent's work while the template starts on the other core.
    heavy = ("ctypes", "makeparallel._backends._thread", "pickle", "signal", "socket")
    out = run_fresh(
        f"""
        import sys
        import makeparallel as mp
        before = [m for m in {heavy!r} if m in sys.modules]
        assert mp.parallel(backend="process")(abs)(-1).get(timeout=30) == 1
        print(",".join(m for m in {heavy!r} if m in sys.modules and m not in before) or "none")
        """
    )
    assert out == ["none"]


# What a first worker does without (a task that needs one imports it).
LATE_MODULES = (
    "concurrent.futures", "ctypes", "enum", "importlib.metadata", "logging", "pickle", "re", "socket", "traceback", "typing"
)

PROBE = f'''
import sys

def log_once(x):
    had = sorted(m for m in {LATE_MODULES!r} if m in sys.modules)
    import logging
    logging.getLogger("probe").warning("logged by task %s", x)
    return had

def fail():
    try:
        {{}}["id"]
    except KeyError as error:
        raise ValueError("bad row") from error
'''


def test_a_first_worker_imports_logging_only_when_its_task_does_and_forwards_every_record(tmp_path: Path) -> None:
    # The template imports neither logging, typing nor the errors' concurrent.futures
    # before forking the first workers: a task that imports logging itself installs the
    # forwarding as it does, and its first record reaches the parent.
    (tmp_path / "probe.py").write_text(PROBE)
    out = run_fresh(
        f"""
        import logging, sys, traceback
        sys.path.insert(0, {str(tmp_path)!r})
        import makeparallel as mp
        import probe

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("probe").addHandler(handler)
        had = mp.parallel(backend="process")(probe.log_once)(7).get(timeout=30)
        print(",".join(had) or "none")
        print(len(records), records[0].getMessage().replace(" ", "_"), records[0].task_id is not None)
        try:
            mp.parallel(backend="process")(probe.fail)().get(timeout=30)
        except ValueError as error:
            print(type(error.__cause__).__name__, "probe.py" in "".join(traceback.format_exception(error)))
        """
    )
    # What a bare interpreter has already (under `coverage run`, its start-up hook imports some).
    bare = run_fresh(f"import sys; print(','.join(sorted(m for m in {LATE_MODULES!r} if m in sys.modules)) or 'none')")
    assert out == [bare[0], "1", "logged_by_task_7", "True", "KeyError", "True"], (out, bare)
    assert "logging" not in bare[0]  # else the first line tells nothing of the forwarding


MAP_PROBE = f'''
import sys

def modules_now(x):
    return sorted(m for m in {(*LATE_MODULES, "makeparallel._map", "makeparallel._collect", "makeparallel.errors")!r}
                  if m in sys.modules)
'''


def test_a_first_worker_runs_a_map_chunk_without_importing_the_map_typing_or_the_errors(tmp_path: Path) -> None:
    # The chunk's function was the map module's, which a worker imported before its
    # first chunk ran, with the collectors, the decorators, typing and the errors'
    # concurrent.futures and logging: about 10 ms per fresh worker, for every chunk
    # with max_tasks_per_child=1, where the chunk sizer took it for the items' time.
    (tmp_path / "map_probe.py").write_text(MAP_PROBE)
    out = run_fresh(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import makeparallel as mp
        import map_probe

        print(",".join(mp.parallel_map(map_probe.modules_now, [0], backend="process")[0]) or "none")
        """
    )
    bare = run_fresh(f"import sys; print(','.join(sorted(m for m in {LATE_MODULES!r} if m in sys.modules)) or 'none')")
    assert out == bare, (out, bare)


def run_fresh_on_one_worker_with(folder: Path, module: str, source: str, script: str) -> list[str]:
    """``run_fresh`` ``script`` where ``source``, written to ``folder`` as ``module``, is imported first, as ``probe``.

    Before ``script``, the interpreter puts ``folder`` first in ``sys.path``, imports
    the library as ``mp`` and the module, and gives the process pool one worker.
    """
    (folder / f"{module}.py").write_text(source)
    start = f"""
        import sys
        sys.path.insert(0, {str(folder)!r})
        import makeparallel as mp
        import {module} as probe

        mp.configure_process_pool(num_workers=1)
        """
    return run_fresh(textwrap.dedent(start) + textwrap.dedent(script))


RAISE_PROBE = """
import sys

def fail():
    raise ValueError("bad row")

def runtime_modules():
    return sorted(m for m in ("makeparallel._decorators", "makeparallel._handle", "makeparallel._runtime") if m in sys.modules)
"""


def test_a_worker_sends_back_a_task_s_exception_without_importing_the_decorators_and_the_runtime(tmp_path: Path) -> None:
    # Pickling the exception met the library's function that rebuilds it, and asking
    # whether a function is a @parallel wrapper's imported the decorators, with the
    # handle and the runtime: about 80 ms on a worker's first error, counted in the
    # task's timeout, so a task that failed at once under a short timeout timed out.
    out = run_fresh_on_one_worker_with(
        tmp_path,
        "raise_probe",
        RAISE_PROBE,
        """
        try:
            mp.parallel(backend="process")(probe.fail)().get(timeout=30)
        except ValueError as error:
            print(error.args[0].replace(" ", "_"))
        print(",".join(mp.parallel(backend="process")(probe.runtime_modules)().get(timeout=30)) or "none")
        """,
    )
    assert out == ["bad_row", "none"]


HALF_IMPORTED_PROBE = """
import sys
import threading
from importlib.machinery import PathFinder

reached = threading.Event()
gate = threading.Event()
importer = []


class HeldLoader:
    # Runs the runtime module once the gate opens: meanwhile the decorators module,
    # which imports it first, is in sys.modules without its classes.
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        reached.set()
        gate.wait(30)
        self.loader.exec_module(module)


class HoldTheRuntime:
    def find_spec(self, name, path=None, target=None):
        if name != "makeparallel._runtime":
            return None
        spec = PathFinder.find_spec(name, path)
        spec.loader = HeldLoader(spec.loader)
        return spec


def fail_while_a_thread_imports_the_decorators():
    if "makeparallel._runtime" in sys.modules:
        raise RuntimeError("the worker has the runtime already: nothing to hold")
    sys.meta_path.insert(0, HoldTheRuntime())
    thread = threading.Thread(target=__import__, args=("makeparallel._decorators",), daemon=True)
    importer.append(thread)
    thread.start()
    reached.wait(30)
    raise ValueError("bad row")


def finish():
    if not importer:  # a new worker: the first one died
        return "new_worker"
    gate.set()
    importer[0].join(30)
    sys.meta_path.pop(0)
    return str(hasattr(sys.modules["makeparallel._decorators"], "ParallelFunction"))
"""


def test_a_worker_sends_back_an_exception_while_a_thread_of_its_task_imports_the_decorators(tmp_path: Path) -> None:
    # Meanwhile sys.modules holds the decorators module half imported, without the wrapper
    # class: asking whether a function met in the pickle is a wrapper's raised AttributeError,
    # and so did pickling the TaskError that describes it, which ended the worker.
    out = run_fresh_on_one_worker_with(
        tmp_path,
        "half_imported_probe",
        HALF_IMPORTED_PROBE,
        """
        on_process = mp.parallel(backend="process")
        try:
            on_process(probe.fail_while_a_thread_imports_the_decorators)().get(timeout=30)
        except Exception as error:
            print(type(error).__name__)
        print(on_process(probe.finish)().get(timeout=30))
        """,
    )
    assert out == ["ValueError", "True"]


def test_the_environment_is_copied_though_another_thread_removes_a_variable_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dict(os.environ) lists the names, then reads each: a name removed in between
    # raised KeyError, in the pool's loop thread, which died of it.
    from collections.abc import MutableMapping

    from makeparallel._backends._template_start import environment

    class RemovedWhileCopied(MutableMapping[str, str]):
        def __init__(self) -> None:
            self.variables = {"KEPT": "1", "REMOVED": "2"}

        def __setitem__(self, name: str, value: str) -> None:  # pytest sets its own as it goes
            self.variables[name] = value

        def __delitem__(self, name: str) -> None:
            del self.variables[name]

        def __iter__(self) -> Iterator[str]:
            return iter(list(self.variables))

        def __len__(self) -> int:
            return len(self.variables)

        def __getitem__(self, name: str) -> str:
            if name == "REMOVED":
                del self.variables[name]  # another thread, between the listing and the reading
            return self.variables[name]

    monkeypatch.setattr(os, "environ", RemovedWhileCopied())
    copied = environment()
    assert "REMOVED" not in copied and copied["KEPT"] == "1"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("as_map", [False, True], ids=["task", "map-item"])
def test_a_template_killed_as_the_pool_shuts_down_is_still_named_and_no_task_blamed(
    two_workers: None, tmp_path: Path, as_map: bool
) -> None:
    # Killed as a shutdown waited, the template took every worker with it: the task was told
    # "no other task was affected", with no word of the template, and a map item was blamed
    # for crashing its worker, as for a crash of its own.
    template = psutil.Process(psutil.Process(live_worker_pids()[0]).ppid())
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            if as_map:
                mp.parallel_map(functools.partial(block_on_item, str(tmp_path)), [3], backend="process")
            else:
                on_process(block)(str(tmp_path)).get(timeout=60)
        except mp.WorkerCrashedError as error:  # (anything else fails the thread, and the test below)
            outcome.append(error)

    running = threading.Thread(target=run)
    running.start()
    shutting_down = threading.Thread(target=mp.shutdown, args=(60,))
    try:
        assert wait_until(lambda: (tmp_path / "started").exists(), 30)
        shutting_down.start()
        assert wait_until(lambda: mp.get_process_pool_info()["closed"], 30)
        template.send_signal(signal.SIGKILL)
    finally:
        running.join(60)
        shutting_down.join(60)
        mp.reset_shutdown()
    [error] = outcome
    assert isinstance(error, mp.WorkerCrashedError), repr(error)
    message = str(error)
    assert "the pool's template process" in message and "the pool is shutting down" in message, message
    assert "not affected" not in message and "crashed its worker" not in message, message
    assert "take their place" not in message and "takes its place" not in message.replace("no worker takes its place", ""), message
