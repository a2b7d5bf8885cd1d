"""Whatever the parent can call at submit time runs in a worker process.

A module made importable after the pool started (a plugin folder added to
``sys.path``) is importable in the workers; one imported through a ``sys.path``
entry removed again (a temporary directory, a tool that extends the path only
while importing) travels by value. Both for ``@parallel`` tasks and for maps.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import makeparallel as mp
from pool_helpers import Flags, fresh_process_pool, pid_once_released, which_of

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(60),
]

PLUGIN = """
import os

def double(x):
    return helper(x) * 2

def helper(x):
    return x

def where(_=None):
    return os.getpid()

class Box(dict):
    pass
"""


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A module of a unique name in a folder of its own (not on sys.path yet)."""
    name = f"plugin_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN))
    path_before = list(sys.path)
    yield name, tmp_path
    sys.path[:] = path_before
    sys.modules.pop(name, None)


def import_from(name: str, folder: Path) -> ModuleType:
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    return importlib.import_module(name)


def import_in(folder: Path, name: str) -> ModuleType:
    """Module ``name``, imported with ``folder`` the working directory (which ``''`` on ``sys.path`` stands for)."""
    os.chdir(folder)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def test_a_folder_added_to_sys_path_after_the_pool_started(plugin: tuple[str, Path]) -> None:
    assert mp.parallel(backend="process")(os.getpid)().get(timeout=30)  # the pool runs
    module = import_from(*plugin)
    assert mp.parallel(backend="process")(module.double)(21).get(timeout=30) == 42
    assert mp.parallel_map(module.double, range(50), backend="process") == [2 * x for x in range(50)]


def test_a_module_imported_through_a_path_entry_removed_since(plugin: tuple[str, Path]) -> None:
    module = import_from(*plugin)
    sys.path.remove(str(plugin[1]))  # as a tool that extends the path only while importing
    fresh_process_pool(2)  # no worker ever had that folder on its path
    assert mp.parallel(backend="process")(module.double)(21).get(timeout=30) == 42
    assert mp.parallel_map(module.double, range(50), backend="process") == [2 * x for x in range(50)]


def test_a_queued_task_runs_under_the_sys_path_of_its_submission(tmp_path: Path) -> None:
    # The workers took sys.path as the last submission before a task's dispatch had it: a
    # program that puts each plugin's folder on sys.path only while it imports the plugin
    # and submits its task had every task queued behind a busy worker fail to import it.
    flags = Flags(str(tmp_path))
    names = [f"plugin_{uuid.uuid4().hex}" for _ in range(2)]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.py").write_text(textwrap.dedent(PLUGIN))
    fresh_process_pool(1)
    busy = mp.parallel(backend="process")(pid_once_released)(flags)
    assert flags.wait("started", 30)
    path_before = list(sys.path)
    handles = []
    try:
        for name in names:  # each queued: the only worker is busy
            module = import_from(name, tmp_path / name)
            handles.append(mp.parallel(backend="process")(module.double)(21))
            sys.path.remove(str(tmp_path / name))
        flags.set("go")
        busy.get(timeout=30)
        assert [handle.get(timeout=30) for handle in handles] == [42, 42]
    finally:
        flags.set("teardown")
        sys.path[:] = path_before
        for name in names:
            sys.modules.pop(name, None)


def test_a_function_sent_by_name_before_its_folder_left_sys_path_goes_by_value_after(
    plugin: tuple[str, Path],
) -> None:
    # A function's pickle is made once and kept: made by name while its folder was on
    # sys.path, it was sent by name to every later worker, which could not import it.
    module = import_from(*plugin)
    fresh_process_pool(1)
    mp.configure_process_pool(max_tasks_per_child=1)  # each task on a new worker
    try:
        assert mp.parallel(backend="process")(module.double)(1).get(timeout=30) == 2
        sys.path.remove(str(plugin[1]))
        assert mp.parallel(backend="process")(module.double)(21).get(timeout=30) == 42
        assert mp.parallel_map(module.double, range(5), backend="process") == [0, 2, 4, 6, 8]
    finally:
        mp.configure_process_pool(max_tasks_per_child=None)


def test_a_function_is_pickled_once_under_each_sys_path_a_program_goes_back_and_forth_between(
    plugin: tuple[str, Path], tmp_path: Path
) -> None:
    # A plugin loader that puts a folder on sys.path around each submission re-pickled
    # the function on each one (60 us a submission, against 5): a change dropped every
    # pickle made, and every answer of which modules workers import by name.
    from makeparallel import _serialization

    module = import_from(*plugin)
    first = _serialization.dumps_function(module.double)
    sys.path.append(str(tmp_path / "elsewhere"))
    under_the_other = _serialization.dumps_function(module.double)
    sys.path.pop()
    assert _serialization.dumps_function(module.double) is first
    sys.path.append(str(tmp_path / "elsewhere"))
    assert _serialization.dumps_function(module.double) is under_the_other
    sys.path.pop()
    assert mp.parallel(backend="process")(module.double)(21).get(timeout=30) == 42


def test_a_module_imported_again_from_another_folder_is_asked_about_again_under_the_same_sys_path(
    tmp_path: Path,
) -> None:
    # Whether a worker imports a module by name was kept per sys.path alone: a module
    # imported again from another folder (put first, then taken off again) went by
    # name, and the workers ran the first folder's code.
    name = f"plug_{uuid.uuid4().hex}"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.py").write_text(f"def run(_=None):\n    return {folder!r}\n")
    path_before = list(sys.path)
    try:
        module = import_from(name, tmp_path / "a")
        assert mp.parallel(backend="process")(module.run)().get(timeout=30) == "a"
        del sys.modules[name]
        module = import_from(name, tmp_path / "b")
        sys.path.remove(str(tmp_path / "b"))  # sys.path as it was when "a" was asked about
        assert mp.parallel(backend="process")(module.run)().get(timeout=30) == "b"
    finally:
        sys.path[:] = path_before
        sys.modules.pop(name, None)


def test_a_pickle_made_while_another_thread_changed_sys_path_is_not_kept(
    plugin: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sys.path is every thread's: kept under the sys.path it was asked under, an answer
    # found under another would hold there for good.
    from makeparallel import _serialization

    module = import_from(*plugin)
    other = str(tmp_path / "elsewhere")
    findable = _serialization._findable

    def found_while_sys_path_changes(top_level: str, path: list[str]) -> tuple[bool, str | None]:
        sys.path.append(other)
        return findable(top_level, path)

    monkeypatch.setattr(_serialization, "_findable", found_while_sys_path_changes)
    asked_under = _serialization._under_sys_path()
    _serialization.dumps_function(module.double)
    monkeypatch.setattr(_serialization, "_findable", findable)
    assert module.double not in asked_under.functions
    sys.path.remove(other)
    first = _serialization.dumps_function(module.double)  # made under the sys.path it is kept under
    assert _serialization.dumps_function(module.double) is first


class _PutsAFolderBackInTurn:
    """The finder of a folder on ``sys.path`` that, asked about ``name``, moves ``folder`` ahead of itself, then back.

    What another thread's push and pop do as the path finder walks ``sys.path``.
    """

    def __init__(self, name: str, folder: str) -> None:
        self.name, self.folder, self.calls = name, folder, 0

    def find_spec(self, fullname: str, target: object = None) -> None:
        if fullname == self.name:
            self.calls += 1
            sys.path.remove(self.folder)
            sys.path.insert(0 if self.calls == 1 else 1, self.folder)
        return None


def test_a_folder_another_thread_moves_as_the_finders_look_is_not_missed(tmp_path: Path) -> None:
    # The path finder walked sys.path itself: a folder moved ahead of the entry being
    # looked at was missed, a module of the same name further on was found instead,
    # and sys.path looked as it was by the end, so the wrong answer was kept.
    name = f"plug_{uuid.uuid4().hex}"
    for folder in ("a", "b", "x"):
        (tmp_path / folder).mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / f"{name}.py").write_text(f"def run(_=None):\n    return {folder!r}\n")
    from makeparallel import _serialization

    path_before = list(sys.path)
    try:
        module = import_from(name, tmp_path / "a")
        sys.path[:0] = [str(tmp_path / "x"), str(tmp_path / "b")]  # b's module would be found, not a's
        sys.path_importer_cache[str(tmp_path / "x")] = _PutsAFolderBackInTurn(name, str(tmp_path / "b"))  # type: ignore[assignment]
        assert _serialization._importable_by_name(name) is False
        assert mp.parallel(backend="process")(module.run)().get(timeout=30) == "a"
    finally:
        sys.path[:] = path_before
        sys.path_importer_cache.pop(str(tmp_path / "x"), None)
        sys.modules.pop(name, None)


@contextlib.contextmanager
def shadowed(tmp_path: Path, imported: str, shadow: str) -> Iterator[ModuleType]:
    """A module of a unique name (source ``imported``), imported, then another of its name (``shadow``) put first on ``sys.path``.

    The pool is fresh: its workers start under that ``sys.path``.
    """
    name = f"plugin_{uuid.uuid4().hex}"
    for folder, source in (("imported", imported), ("shadow", shadow)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.py").write_text(source)
    path_before = list(sys.path)
    try:
        module = import_from(name, tmp_path / "imported")
        sys.path.insert(0, str(tmp_path / "shadow"))
        importlib.invalidate_caches()
        fresh_process_pool(2)
        yield module
    finally:
        sys.path[:] = path_before
        sys.modules.pop(name, None)


def test_a_module_shadowed_by_another_of_its_name_goes_by_value(tmp_path: Path) -> None:
    # Only a module of that name was looked for: a folder put first on sys.path since,
    # holding another (a plugin's, an installed copy of a checkout), ran its code in the
    # workers, with no error.
    which = "def which(_=None):\n    return {!r}\n"
    with shadowed(tmp_path, which.format("imported"), which.format("shadow")) as module:
        assert mp.parallel(backend="process")(module.which)().get(timeout=30) == "imported"
        assert mp.parallel_map(module.which, range(4), backend="process") == ["imported"] * 4


def test_a_program_that_takes_the_package_folder_off_sys_path_still_sends_functions_by_value(tmp_path: Path) -> None:
    # The package's own modules (a map's chunk runner, a function argument's wrapper) read
    # as importable by no one, and went by value: cloudpickle, sending them by value, recursed
    # until "excessively deep recursion required", and every lambda or closure failed to go.
    # Workers import the package from its own folder, first on their command line.
    package_folder = str(Path(mp.__file__).resolve().parents[1])
    script = textwrap.dedent(
        f"""
        import os, sys
        import makeparallel as mp

        sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != {package_folder!r}]
        offset = 10
        print(*mp.parallel_map(lambda x: x + offset, [1, 2], backend="process"))
        print(mp.parallel(lambda: offset, backend="process")().get(timeout=30))
        """
    )
    (tmp_path / "script.py").write_text(script)
    completed = run_in(tmp_path, "script.py")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["11", "12", "10"]


def test_a_map_result_of_a_class_sent_by_value_imports_no_module_of_its_name_in_the_workers(tmp_path: Path) -> None:
    # A map's worker journals each result with plain pickle first, which imported the
    # result's class's module by name: the other module of that name, put first on
    # sys.path since, ran its code in every worker (the result still came back right).
    ran = tmp_path / "the other module ran"
    box = "import dataclasses\n\n@dataclasses.dataclass\nclass Box:\n    x: int\n\ndef box(x):\n    return Box(x)\n"
    with shadowed(tmp_path, box, f"open({str(ran)!r}, 'a').close()\n") as module:
        results = mp.parallel_map(module.box, range(4), backend="process")
        assert [(type(r).__name__, r.x) for r in results] == [("Box", i) for i in range(4)]
        assert not ran.exists()


@pytest.mark.parametrize("spelling", ["a symlink", "with .."])
def test_a_module_found_again_through_another_spelling_of_its_folder_still_goes_by_name(
    spelling: str, tmp_path: Path
) -> None:
    # The same file, found through a folder put on sys.path again spelt otherwise, was
    # taken for another module: it went by value, with globals of its own, which an
    # initializer setting the module's global no longer reached.
    name = f"plugin_{uuid.uuid4().hex}"
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / f"{name}.py").write_text(
        "MODEL = None\n\ndef load():\n    global MODEL\n    MODEL = 'loaded'\n\ndef use(_=None):\n    return MODEL\n"
    )
    (tmp_path / "link").symlink_to(tmp_path / "real")
    path_before = list(sys.path)
    try:
        if spelling == "a symlink":
            module = import_from(name, tmp_path / "link")
            sys.path.insert(0, str(tmp_path / "real"))
        else:
            module = import_from(name, tmp_path / "real")
            sys.path.insert(0, str(tmp_path / "real" / "sub" / ".."))
        importlib.invalidate_caches()
        fresh_process_pool(1)
        mp.configure_process_pool(initializer=module.load)
        assert mp.parallel(backend="process")(module.use)().get(timeout=30) == "loaded"
    finally:
        mp.configure_process_pool(initializer=None)
        sys.path[:] = path_before
        sys.modules.pop(name, None)


@pytest.fixture
def through_the_working_directory(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``''`` first on sys.path (``python -c``, the REPL, notebooks), folders ``first`` and ``second``, a module name.

    Each folder, and its ``lib``, holds a module of that name whose ``which()``
    returns the folder's name (and ``marked()`` what its initializer ``mark()``
    set, ``sibling()`` the folder of the module ``<name>_sibling`` it imports).
    The working directory, sys.path and sys.modules are put back.
    """
    name = f"plugin_{uuid.uuid4().hex}"
    (tmp_path / "empty").mkdir()
    for folder in ("first", "second"):
        (tmp_path / folder / "lib").mkdir(parents=True)
        for where in (tmp_path / folder, tmp_path / folder / "lib"):
            (where / f"{name}.py").write_text(MARKED.format(folder=folder, name=name))
            (where / f"{name}_sibling.py").write_text(f"WHERE = {folder!r}\n")
    path_before, directory_before = list(sys.path), os.getcwd()
    sys.path.insert(0, "")
    try:
        yield name, tmp_path
    finally:
        mp.configure_process_pool(initializer=None)
        os.chdir(directory_before)
        sys.path[:] = path_before
        sys.modules.pop(name, None)
        sys.modules.pop(f"{name}_sibling", None)


def in_a_worker(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` run as a process task, its result."""
    return mp.parallel(backend="process")(fn)(*args).get(timeout=30)


def forget(name: str) -> None:
    """Have this process forget module ``name`` and its sibling, so that the next import loads them again."""
    del sys.modules[name]
    del sys.modules[f"{name}_sibling"]


# A module whose which() names its folder, and whose marked() gives what mark() set (an initializer).
WHICH_AND_MARK = """
MARK = None

def mark():
    global MARK
    MARK = "marked"

def marked(_=None):
    return MARK

def which(_=None):
    return {folder!r}
"""
# The same, which imports its sibling module, whose WHERE sibling() gives.
MARKED = (
    "import {name}_sibling\n"
    + WHICH_AND_MARK
    + """
def sibling(_=None):
    return {name}_sibling.WHERE
"""
)


@pytest.mark.parametrize("there", ["another module of its name", "none"])
def test_a_module_imported_through_the_working_directory_left_since(
    there: str, through_the_working_directory: tuple[str, Path]
) -> None:
    # Sent by name while the program was in its folder, the function kept going by name
    # after an os.chdir, and a worker started since resolved '' in the new directory: it
    # ran the other module's code there, with no error, or failed to import it.
    name, folders = through_the_working_directory
    module = import_in(folders / "first", name)
    assert in_a_worker(module.which) == "first"
    os.chdir(folders / ("second" if there == "another module of its name" else "empty"))
    fresh_process_pool(2)
    assert in_a_worker(module.which) == "first"
    assert mp.parallel_map(module.which, range(4), backend="process") == ["first"] * 4


def test_a_module_imported_through_the_working_directory_by_a_worker_started_in_another(
    through_the_working_directory: tuple[str, Path]
) -> None:
    # The worker resolved '' in the directory it started in, and ran the module of that
    # name there, with no error.
    name, folders = through_the_working_directory
    os.chdir(folders / "first")
    fresh_process_pool(1)
    assert in_a_worker(os.getcwd) == str(folders / "first")
    module = import_in(folders / "second", name)
    assert in_a_worker(module.which) == "second"
    assert mp.parallel_map(module.which, range(4), backend="process") == ["second"] * 4


@pytest.mark.parametrize("entry", ["", "lib"])
def test_a_module_imported_through_a_relative_entry_goes_by_name_wherever_the_program_goes(
    entry: str, through_the_working_directory: tuple[str, Path]
) -> None:
    # Asked again after an os.chdir, the module went by value: its functions no longer saw
    # the globals its initializer set in the worker. A relative entry other than '' was
    # still found by the path finder's cached finder, in the first folder: the new
    # directory's module of the name ran in the workers.
    name, folders = through_the_working_directory
    sys.path.insert(0, entry)
    os.chdir(folders / "first")
    module = importlib.import_module(name)
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=module.mark)
    task = mp.parallel(backend="process")(module.marked)
    assert task().get(timeout=30) == "marked"
    for there in ("second", "empty", "first"):
        os.chdir(folders / there)
        assert task().get(timeout=30) == "marked"
        fresh_process_pool(1)
        assert in_a_worker(module.which) == "first"
        assert task().get(timeout=30) == "marked"


def test_a_module_imported_through_the_working_directory_imports_its_siblings_from_there(
    through_the_working_directory: tuple[str, Path]
) -> None:
    # The module went by name from its folder, and its own "import <name>_sibling" found
    # the sibling in the worker's working directory: another module's code, or none.
    name, folders = through_the_working_directory
    os.chdir(folders / "first")
    module = importlib.import_module(name)
    for there in ("second", "empty"):
        os.chdir(folders / there)
        fresh_process_pool(1)
        assert in_a_worker(module.sibling) == "first"


def test_a_sibling_the_program_imported_after_the_module_was_sent_is_pinned_too(
    through_the_working_directory: tuple[str, Path]
) -> None:
    # The pins were asked once, when the module was first sent: a sibling it imports
    # lazily, imported by the program only later, came from the worker's directory.
    name, folders = through_the_working_directory
    for folder in ("first", "second"):
        (folders / folder / f"{name}_lazy.py").write_text(f"def which():\n    return {folder!r}\n")
    os.chdir(folders / "first")
    module = importlib.import_module(name)
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "first"
    assert in_a_worker(which_of, name) == "first"  # its answers asked now
    try:
        importlib.import_module(f"{name}_lazy")
        os.chdir(folders / "second")
        fresh_process_pool(1)
        assert in_a_worker(which_of, f"{name}_lazy") == "first"
    finally:
        sys.modules.pop(f"{name}_lazy", None)


def test_a_module_imported_again_from_the_working_directory_is_pinned_there(
    through_the_working_directory: tuple[str, Path]
) -> None:
    # The pins were asked again only when len(sys.modules) moved: a module deleted and
    # imported again from another directory left it as it was, and workers ran the first.
    name, folders = through_the_working_directory
    os.chdir(folders / "first")
    importlib.import_module(name)
    assert in_a_worker(which_of, name) == "first"
    del sys.modules[name]
    os.chdir(folders / "second")
    assert importlib.import_module(name).which() == "second"
    os.chdir(folders / "empty")
    fresh_process_pool(1)
    assert in_a_worker(which_of, name) == "second"


def test_a_worker_that_ran_a_module_runs_it_again_once_imported_from_another_directory(
    through_the_working_directory: tuple[str, Path]
) -> None:
    # The worker kept the first copy, and the function it had unpickled: one sent by name
    # pickles alike from either copy.
    name, folders = through_the_working_directory
    os.chdir(folders / "first")
    fresh_process_pool(1)
    assert in_a_worker(importlib.import_module(name).which) == "first"
    forget(name)
    os.chdir(folders / "second")
    module = importlib.import_module(name)
    assert in_a_worker(module.which) == "second"
    assert in_a_worker(module.sibling) == "second"


def test_a_module_replaced_in_sys_modules_reads_as_a_change_though_at_the_same_address() -> None:
    # sys.modules' last entry was told by its id: deleted and imported again, the count
    # unchanged, a module could get the freed one's address, and no change was seen
    # (workers then imported the first one, now and then).
    from makeparallel import _serialization

    name = f"plugin_{uuid.uuid4().hex}"
    sys.modules[name] = ModuleType(name)
    try:
        before = _serialization.modules_now()
        del sys.modules[name]
        sys.modules[name] = ModuleType(name)
        assert _serialization.modules_now() != before
        assert _serialization.modules_now() == _serialization.modules_now()
    finally:
        sys.modules.pop(name, None)


def test_modules_are_read_through_an_import_on_another_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # The last module was read with next(reversed(sys.modules)): a thread that imported between
    # the two calls made next() raise "dictionary changed size during iteration", and the task
    # submitted failed with it. Here sys.modules changes as it is first read, as then.
    from makeparallel import _serialization

    class ImportedMeanwhile(dict[str, Any]):
        read = 0

        def __reversed__(self) -> Iterator[str]:
            self.read += 1
            if self.read == 1:
                raise RuntimeError("dictionary changed size during iteration")
            return super().__reversed__()

    modules = ImportedMeanwhile(sys.modules)
    monkeypatch.setattr(sys, "modules", modules)
    count, last, _ = _serialization.modules_now()
    assert (count, last, modules.read) == (len(modules), next(reversed(list(modules))), 2)


def test_a_task_that_pickles_no_module_still_has_the_pins(through_the_working_directory: tuple[str, Path]) -> None:
    # A C function's call asks nothing about modules: the pins were never asked under
    # this sys.path, and the workers found the module in their own directory.
    name, folders = through_the_working_directory
    sys.path.insert(1, f"nowhere-{uuid.uuid4().hex}")  # a sys.path no answer was asked under yet
    os.chdir(folders / "first")
    importlib.import_module(name)
    os.chdir(folders / "second")
    fresh_process_pool(1)
    assert in_a_worker(eval, f"__import__({name!r}).which()") == "first"


@pytest.fixture
def namespace_through_the_working_directory(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """As ``through_the_working_directory``, the modules in a namespace package (a folder without ``__init__.py``).

    Folders ``first`` and ``second`` each hold the package's folder, with
    ``which.py`` (``which()`` returns the folder's name, ``marked()`` what its
    initializer ``mark()`` set) and ``later.py`` (``WHERE`` and ``where()``,
    the same); ``empty`` holds nothing.
    """
    name = f"namespace_{uuid.uuid4().hex}"
    (tmp_path / "empty").mkdir()
    for folder in ("first", "second"):
        package = tmp_path / folder / name
        package.mkdir(parents=True)
        (package / "which.py").write_text(WHICH_AND_MARK.format(folder=folder))
        (package / "later.py").write_text(f"WHERE = {folder!r}\n\ndef where(_=None):\n    return WHERE\n")
    path_before, directory_before = list(sys.path), os.getcwd()
    sys.path.insert(0, "")
    try:
        yield name, tmp_path
    finally:
        os.chdir(directory_before)
        sys.path[:] = path_before
        for module in [module for module in sys.modules if module == name or module.startswith(name + ".")]:
            del sys.modules[module]


def where_of(module: str) -> str:
    """``WHERE`` of module ``module``, imported here by name."""
    return str(importlib.import_module(module).WHERE)


def later_module_after_sys_path_changed(name: str, module: str = "later", folder: str | None = None) -> str:
    """``<name>.<module>``'s ``WHERE``, imported with ``folder`` (or a folder that is not there) put on ``sys.path``.

    A change of ``sys.path`` has a namespace package's path looked for again.
    """
    sys.path.append(folder or os.path.join(os.sep, "no", "such", "folder"))
    try:
        return str(importlib.import_module(f"{name}.{module}").WHERE)
    finally:
        sys.path.pop()


def add_module(folder: Path, package: str, module: str, label: str | None = None) -> None:
    """``folder/package/module.py``, whose ``WHERE`` and ``which()`` give ``label``, else the folder's name."""
    label = label or folder.name
    (folder / package).mkdir(parents=True, exist_ok=True)
    (folder / package / f"{module}.py").write_text(f"WHERE = {label!r}\n\ndef which(_=None):\n    return {label!r}\n")


@pytest.mark.parametrize("there", ["another package of its name", "none"])
def test_a_namespace_package_imported_through_the_working_directory_left_since(
    there: str, namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # A namespace package has no file, and was not pinned: a worker started after the
    # program's os.chdir imported the folder of its name in the new directory, and ran
    # that code with no error, or failed with ModuleNotFoundError.
    name, folders = namespace_through_the_working_directory
    module = import_in(folders / "first", f"{name}.which")
    assert in_a_worker(module.which) == "first"
    os.chdir(folders / ("second" if there == "another package of its name" else "empty"))
    fresh_process_pool(2)
    assert in_a_worker(module.which) == "first"
    assert mp.parallel_map(module.which, range(4), backend="process") == ["first"] * 4
    assert in_a_worker(later_module_after_sys_path_changed, name) == "first"


def test_a_namespace_packages_path_looked_for_again_in_a_worker_keeps_the_programs_folder(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # Pinned, the package's path was still looked for along sys.path once it changed in
    # the worker: there '' is the worker's directory, whose folder of that name it took
    # for the program's, and a submodule imported then came from there.
    name, folders = namespace_through_the_working_directory
    module = import_in(folders / "first", f"{name}.which")
    os.chdir(folders / "second")
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "first"
    assert in_a_worker(later_module_after_sys_path_changed, name) == "first"


def test_a_namespace_package_with_a_portion_in_a_folder_of_sys_path_keeps_both(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    from makeparallel import _serialization

    name, folders = namespace_through_the_working_directory
    (folders / "second" / name / "which.py").unlink()
    sys.path.append(str(folders / "second"))
    module = import_in(folders / "first", f"{name}.which")
    assert _serialization.refresh_pins()[name] == (str(folders / "first"), str(folders / "second"))
    os.chdir(folders / "empty")
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "first"
    assert in_a_worker(later_module_after_sys_path_changed, name) == "first"
    (folders / "first" / name / "later.py").unlink()
    fresh_process_pool(1)
    assert in_a_worker(later_module_after_sys_path_changed, name) == "second"  # from the other portion


@pytest.mark.parametrize("change", ["sys.path", "the import caches"])
def test_a_namespace_packages_path_looked_for_again_in_the_program_after_it_left_keeps_its_folder(
    change: str, namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # The pin was read from the package's path as the program had it last: once sys.path
    # changed, or the import caches were invalidated, after an os.chdir, the path had the
    # new directory's folder of its name, and workers ran that code while the program ran its own.
    name, folders = namespace_through_the_working_directory
    module = import_in(folders / "first", f"{name}.which")
    os.chdir(folders / "second")
    if change == "sys.path":
        sys.path.append(str(folders / "empty"))
    else:
        importlib.invalidate_caches()
    fresh_process_pool(2)
    assert module.which() == "first"
    assert in_a_worker(module.which) == "first"
    assert mp.parallel_map(module.which, range(4), backend="process") == ["first"] * 4


def test_a_task_extends_a_pinned_namespace_package_through_sys_path(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # The pinned package's path was looked for again in its pinned folders only: a folder a
    # task put on sys.path, with a portion of the package, was passed by.
    name, folders = namespace_through_the_working_directory
    add_module(folders / "third", name, "extra")
    module = import_in(folders / "first", f"{name}.which")
    os.chdir(folders / "second")
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "first"
    assert in_a_worker(later_module_after_sys_path_changed, name, "extra", str(folders / "third")) == "third"


def test_a_namespace_packages_portion_made_after_it_was_pinned_is_found_by_workers(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # Pinned to the folders it had when first looked at, the package kept them though its
    # path grew a portion in a folder of sys.path (code generated, a plugin installed
    # since): workers failed to import the module the program imported from there.
    name, folders = namespace_through_the_working_directory
    sys.path.append(str(folders / "third"))
    module = import_in(folders / "first", f"{name}.which")
    assert in_a_worker(module.which) == "first"
    add_module(folders / "third", name, "extra")
    importlib.invalidate_caches()
    extra = importlib.import_module(f"{name}.extra")
    assert in_a_worker(extra.which) == "third"


def test_a_namespace_package_found_through_an_absolute_entry_too_is_pinned(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # With the working directory on sys.path twice, as '' and spelt in full (PYTHONPATH=$PWD),
    # the package was in a folder of sys.path, and not pinned: in a worker started in a
    # directory with a folder of its name, that folder came first, and its code ran.
    name, folders = namespace_through_the_working_directory
    sys.path.append(str(folders / "first"))
    module = import_in(folders / "first", f"{name}.which")
    os.chdir(folders / "second")
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "first"


def test_a_module_of_a_namespace_package_the_program_imported_after_it_left_runs_from_there(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # The package was pinned with the folders its loaded modules came from first: a module
    # the program imported from the new directory after an os.chdir came, in workers, from
    # the old one, where it had a file of that name too.
    name, folders = namespace_through_the_working_directory
    module = import_in(folders / "first", f"{name}.which")
    later = import_in(folders / "second", f"{name}.later")
    assert later.where() == "second"
    fresh_process_pool(1)
    assert in_a_worker(later.where) == "second"
    assert in_a_worker(module.which) == "first"


def test_a_namespace_packages_module_the_program_never_imported_comes_from_its_first_portion(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # Its folders were in the order its modules were loaded, not in its path's: a module
    # loaded first from its second portion put that folder first in the workers.
    name, folders = namespace_through_the_working_directory
    add_module(folders / "third", name, "only")
    add_module(folders / "third", name, "later")
    sys.path.append(str(folders / "third"))
    import_in(folders / "first", f"{name}.only")
    importlib.import_module(f"{name}.which")
    assert in_a_worker(where_of, f"{name}.later") == where_of(f"{name}.later") == "first"


def test_a_worker_keeps_a_namespace_package_whose_folders_changed(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # A pin that changed (a portion added, or gone) had each worker forget the package and
    # its modules, with what the initializer had set in them.
    name, folders = namespace_through_the_working_directory
    module = import_in(folders / "first", f"{name}.which")
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=module.mark)
    try:
        assert in_a_worker(module.marked) == "marked"
        os.chdir(folders / "second")
        sys.path.append(str(folders / "empty"))  # the program's path for the package is looked for again
        importlib.import_module(f"{name}.later")
        assert in_a_worker(module.marked) == "marked"
    finally:
        mp.configure_process_pool(initializer=None)


def test_a_task_extends_a_pinned_namespace_package_through_a_relative_folder(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # Looked for again in its pinned folders and the absolute entries of sys.path only, the
    # package missed its portion in a relative folder a task put on sys.path.
    name, folders = namespace_through_the_working_directory
    add_module(folders / "third", name, "extra")
    import_in(folders / "first", f"{name}.which")
    fresh_process_pool(1)
    assert in_a_worker(later_module_after_sys_path_changed, name, "extra", os.path.join("..", "third")) == "third"


def test_sending_a_task_leaves_the_programs_namespace_packages_as_they_are(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # The pins were read from each package's path by iterating it, which has the import
    # system look for it again there and then: in the directory the program was in as it
    # submitted, not the one it was in at its next import.
    name, folders = namespace_through_the_working_directory
    import_in(folders / "first", f"{name}.which")
    os.chdir(folders / "second")
    importlib.invalidate_caches()
    assert in_a_worker(abs, -1) == 1
    os.chdir(folders / "first")
    assert importlib.import_module(f"{name}.later").WHERE == "first"


def test_a_task_imports_from_a_portion_the_program_made_available_since(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # A worker looked for a pinned package in its pinned folders and the folders a task
    # added only: a folder the program put on sys.path since, or a portion made since in
    # one already there, was missed until the program itself imported from it.
    name, folders = namespace_through_the_working_directory
    import_in(folders / "first", f"{name}.which")
    fresh_process_pool(1)
    assert in_a_worker(which_of, f"{name}.which") == "first"
    add_module(folders / "third", name, "extra")
    sys.path.append(str(folders / "third"))
    assert in_a_worker(which_of, f"{name}.extra") == "third"
    add_module(folders / "third", name, "more")
    importlib.invalidate_caches()
    assert in_a_worker(which_of, f"{name}.more") == "third"


def test_a_namespace_package_imported_again_keeps_its_modules_pinned(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # Imported again, the package went last in sys.modules, after its modules: the walk,
    # which met each module's package first, passed them by, and workers imported the new
    # directory's file of their name.
    name, folders = namespace_through_the_working_directory
    module = import_in(folders / "first", f"{name}.which")
    os.chdir(folders / "second")
    importlib.invalidate_caches()
    importlib.reload(sys.modules[name])
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "first"


def test_a_module_of_a_namespace_package_whose_folder_is_gone_goes_by_value(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # Only the package was looked for: with another portion left, the module's function
    # went by name, and workers ran that portion's file of its name, with no error.
    name, folders = namespace_through_the_working_directory
    sys.path.append(str(folders / "second"))
    module = import_in(folders / "first", f"{name}.which")
    shutil.rmtree(folders / "first" / name)
    importlib.invalidate_caches()
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "first"


def where_of_after_inserting(folder: str, module: str) -> str:
    """``WHERE`` of ``module``, imported with ``folder`` put first on ``sys.path``."""
    sys.path.insert(0, folder)
    try:
        return where_of(module)
    finally:
        sys.path.remove(folder)


def test_a_folder_put_first_on_sys_path_comes_first_for_a_namespace_package(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # The pinned folders were looked in before any entry of sys.path: a folder the program,
    # or a task, put first with a portion of the package lost to the pinned folder's file.
    name, folders = namespace_through_the_working_directory
    add_module(folders / "third", name, "later")
    import_in(folders / "first", f"{name}.which")
    fresh_process_pool(1)
    assert in_a_worker(where_of_after_inserting, str(folders / "third"), f"{name}.later") == "third"
    sys.path.insert(0, str(folders / "third"))
    assert in_a_worker(where_of, f"{name}.later") == where_of(f"{name}.later") == "third"


def test_a_relative_folder_the_program_adds_extends_a_namespace_package(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # A worker passed every relative entry of the program's by: a portion in 'lib', which a
    # notebook puts on sys.path, was missed until the program imported from it itself.
    name, folders = namespace_through_the_working_directory
    add_module(folders / "first" / "lib", name, "extra")
    import_in(folders / "first", f"{name}.which")
    fresh_process_pool(1)
    assert in_a_worker(which_of, f"{name}.which") == "first"
    sys.path.append("lib")
    assert in_a_worker(where_of, f"{name}.extra") == "lib"


def test_a_namespace_package_in_one_imported_again_keeps_its_modules_pinned(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # Imported again, a namespace package in a namespace package went after its modules
    # in sys.modules, and the walk did not know it for one yet as it met them.
    name, folders = namespace_through_the_working_directory
    for folder in ("first", "second"):
        add_module(folders / folder / name, "sub", "deep", folder)
    deep = import_in(folders / "first", f"{name}.sub.deep")
    os.chdir(folders / "second")
    importlib.invalidate_caches()
    importlib.reload(sys.modules[f"{name}.sub"])
    fresh_process_pool(1)
    assert in_a_worker(deep.which) == "first"


def test_a_module_of_a_package_in_a_namespace_package_whose_folder_is_gone_goes_by_value(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # Only the module's own package was looked at: a regular package in the namespace
    # package, its folder gone, had its module sent by name, and another portion's ran.
    name, folders = namespace_through_the_working_directory
    for folder in ("first", "second"):
        add_module(folders / folder / name, "pkg", "deep", folder)
        (folders / folder / name / "pkg" / "__init__.py").write_text("")
    sys.path.append(str(folders / "second"))
    deep = import_in(folders / "first", f"{name}.pkg.deep")
    shutil.rmtree(folders / "first" / name)
    importlib.invalidate_caches()
    fresh_process_pool(1)
    assert in_a_worker(deep.which) == "first"


def which_in_a_worker_after(change: str, folders: Path, package: str, module: str) -> str:
    """``which()`` of ``package.module`` in a worker, imported here with no relative entry on sys.path.

    It is imported with ``folders/first`` and ``folders/second`` last on
    sys.path (a script's), then ``first`` leaves it (``change`` "its folder
    left sys.path") or ``folders/third`` is put first. sys.path and the
    package's modules are put back.
    """
    path_before = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if os.path.isabs(entry)]
    sys.path += [str(folders / "first"), str(folders / "second")]
    try:
        loaded = importlib.import_module(f"{package}.{module}")
        if change == "its folder left sys.path":
            sys.path.remove(str(folders / "first"))
        else:
            sys.path.insert(0, str(folders / "third"))
        fresh_process_pool(1)
        return str(in_a_worker(loaded.which))
    finally:
        sys.path[:] = path_before
        for name in [key for key in sys.modules if key == package or key.startswith(f"{package}.")]:
            del sys.modules[name]


@pytest.mark.parametrize("change", ["its folder left sys.path", "another portion put first"])
def test_a_module_of_a_namespace_package_a_script_imported_goes_by_value_once_workers_would_import_another(
    change: str, tmp_path: Path
) -> None:
    # With no relative entry on sys.path (a script's), only the package was looked for:
    # the module's function went by name, and workers failed to import it, or ran the
    # file of its name in a portion put first, with no error.
    name = f"namespace_{uuid.uuid4().hex}"
    add_module(tmp_path / "first", name, "which")
    add_module(tmp_path / "second", name, "other")
    add_module(tmp_path / "third", name, "which")
    assert which_in_a_worker_after(change, tmp_path, name, "which") == "first"


@pytest.mark.parametrize("change", ["its folder left sys.path", "a regular package put first", "a module put first"])
def test_a_module_of_a_namespace_package_in_one_a_script_imported_goes_by_value_once_workers_would_not_find_it(
    change: str, tmp_path: Path
) -> None:
    # The inner namespace package's __path__ was asked where the module would be found,
    # and the import system keeps a namespace package's old folders where it is no longer
    # found: the function went by name, and workers failed to import it, or ran another file.
    name = f"namespace_{uuid.uuid4().hex}"
    add_module(tmp_path / "first" / name, "sub", "which", "first")
    add_module(tmp_path / "second", name, "other")
    if change == "a regular package put first":
        add_module(tmp_path / "third" / name, "sub", "which", "third")
        (tmp_path / "third" / name / "sub" / "__init__.py").write_text("")
    elif change == "a module put first":
        add_module(tmp_path / "third", name, "sub", "third")
    assert which_in_a_worker_after(change, tmp_path, name, "sub.which") == "first"


# Installed in every process: a meta path finder that maps a namespace package's module
# elsewhere, as the editable installs of scikit-build-core and meson-python do.
REDIRECTING_FINDER = """
import importlib.util, sys

class RedirectingFinder:
    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname == "redirected.mod":
            return importlib.util.spec_from_file_location(fullname, {file!r})
        return None

sys.meta_path.insert(0, RedirectingFinder)
"""


def test_a_module_a_meta_path_finder_maps_into_a_namespace_package_goes_by_name(tmp_path: Path) -> None:
    # Only the path finder was asked: the module counted as not found, went by value, and
    # a task saw its own copy of the module's globals, not what the initializer set there.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "mod.py").write_text(
        "STATE = None\n\ndef init(value):\n    global STATE\n    STATE = value\n\n"
        "def state():\n    return STATE\n"
    )
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(REDIRECTING_FINDER.format(file=str(tmp_path / "elsewhere" / "mod.py")))
    add_module(tmp_path / "project", "redirected", "other")  # a namespace package: no __init__.py
    (tmp_path / "main.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.append({str(tmp_path / "project")!r})
            import makeparallel as mp
            import redirected.mod

            if __name__ == "__main__":
                mp.configure_process_pool(num_workers=1, initializer=redirected.mod.init, initargs=("set",))
                print(mp.parallel(backend="process")(redirected.mod.state)().get(timeout=30))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "hook"), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, str(tmp_path / "main.py")], capture_output=True, text=True, timeout=50, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["set"]


def test_a_module_whose_spec_has_no_loader_attribute(
    through_the_working_directory: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stub module whose __spec__ has only some of a spec's attributes made each submission
    # raise AttributeError as the pins were asked, and could kill the pool's loop thread.
    from types import SimpleNamespace

    stub = ModuleType("stub_with_an_odd_spec")
    stub.__spec__ = SimpleNamespace(origin=None, submodule_search_locations=[])  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, stub.__name__, stub)
    assert in_a_worker(abs, -3) == 3


def test_a_namespace_package_whose_folder_is_gone_goes_by_value(
    namespace_through_the_working_directory: tuple[str, Path]
) -> None:
    # Answered importable by name without a look, its functions went by name, and workers
    # failed to import the package.
    name, folders = namespace_through_the_working_directory
    module = import_in(folders / "first", f"{name}.which")
    os.chdir(folders)
    shutil.rmtree(folders / "first" / name)
    importlib.invalidate_caches()
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "first"


def test_a_module_a_worker_imported_from_its_own_directory_gives_way_to_the_programs(
    through_the_working_directory: tuple[str, Path]
) -> None:
    # A task had the worker import the module of that name from its own directory; the
    # program then sent its own, loaded elsewhere, by name: the worker ran the one it had.
    name, folders = through_the_working_directory
    os.chdir(folders / "first")
    fresh_process_pool(1)
    assert in_a_worker(which_of, name) == "first"
    os.chdir(folders / "second")
    module = importlib.import_module(name)
    assert in_a_worker(module.which) == "second"
    assert in_a_worker(module.sibling) == "second"


def test_the_programs_main_module_is_never_pinned(
    through_the_working_directory: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A package run with python -m (its __main__.py in a folder none of sys.path's) had
    # __main__ pinned: each worker, whose own __main__ is from no such folder, then dropped
    # it from sys.modules.
    from makeparallel import _serialization

    name, folders = through_the_working_directory
    (folders / "first" / "__main__.py").write_text("")
    main = ModuleType("__main__")
    main.__spec__ = importlib.util.spec_from_file_location("__main__", folders / "first" / "__main__.py")
    monkeypatch.setitem(sys.modules, "__main__", main)
    os.chdir(folders / "first")
    importlib.import_module(name)
    pins = _serialization.refresh_pins()
    assert pins.get(name) == (str(folders / "first"),)
    assert "__main__" not in pins


def test_a_module_imported_again_from_an_absolute_entry_is_pinned_no_more(
    through_the_working_directory: tuple[str, Path]
) -> None:
    # Pins outlived the module: workers ran the first folder's, the program the second's.
    name, folders = through_the_working_directory
    os.chdir(folders / "first")
    module = importlib.import_module(name)
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "first"
    forget(name)
    sys.path.insert(1, str(folders / "second"))
    os.chdir(folders / "empty")
    module = importlib.import_module(name)
    fresh_process_pool(1)
    assert in_a_worker(module.which) == "second"


def test_a_module_a_meta_path_finder_found_outside_sys_path_still_goes_by_name(
    through_the_working_directory: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An editable install's finder (or setuptools' distutils) finds it where the path
    # finder would not: looked for there alone, with '' on sys.path, it went by value,
    # and its functions missed what an initializer set.
    from importlib.machinery import PathFinder

    from makeparallel import _serialization, _worker_finders

    name, folders = through_the_working_directory
    (folders / "impl").mkdir()
    (folders / "impl" / "__init__.py").write_text("def which(_=None):\n    return 'impl'\n")

    class Remapped:
        @staticmethod
        def find_spec(fullname: str, path: object = None, target: object = None) -> object:
            if fullname != name:
                return None
            spec = PathFinder.find_spec("impl", [str(folders)])
            return importlib.util.spec_from_file_location(name, spec.origin, submodule_search_locations=[])

    # The workers have it too: a .pth file installs it as every interpreter starts. So
    # does each worker that gets ready meanwhile (an earlier test's pool may be starting).
    identity = _worker_finders._identity(Remapped)
    if _worker_finders._theirs is not None:
        monkeypatch.setattr(_worker_finders, "_theirs", _worker_finders._theirs | {identity})
    take = _worker_finders.take
    monkeypatch.setattr(_worker_finders, "take", lambda finders: take([*finders, identity]))
    sys.meta_path.append(Remapped)
    try:
        module = importlib.import_module(name)
        assert module.which() == "impl"
        assert _serialization._importable_by_name(name)
    finally:
        sys.meta_path.remove(Remapped)


def test_a_task_imports_from_the_working_directory_of_its_worker(through_the_working_directory: tuple[str, Path]) -> None:
    # What the program did not send, a task imports as it did: '' is the worker's own
    # working directory, the program's when the worker started.
    name, folders = through_the_working_directory
    os.chdir(folders / "first")
    fresh_process_pool(1)
    assert in_a_worker(which_of, name) == "first"
    os.chdir(folders / "second")
    fresh_process_pool(1)
    assert in_a_worker(which_of, name) == "second"


def test_a_decorated_function_of_such_a_module(plugin: tuple[str, Path]) -> None:
    module = import_from(*plugin)
    module.double = mp.parallel(backend="process")(module.double)
    sys.path.remove(str(plugin[1]))
    fresh_process_pool(1)
    assert module.double(5).get(timeout=30) == 10


def test_a_c_method_bound_to_an_object_of_such_a_module_and_such_an_argument(plugin: tuple[str, Path]) -> None:
    module = import_from(*plugin)
    box = module.Box(answer=42)
    sys.path.remove(str(plugin[1]))
    fresh_process_pool(1)
    assert mp.parallel(backend="process")(box.get)("answer").get(timeout=30) == 42
    assert mp.parallel(backend="process")(len)(box).get(timeout=30) == 1  # an argument of its class


@pytest.mark.timeout(60)
def test_a_module_that_imports_a_sibling_through_a_path_entry_removed_since(tmp_path: Path) -> None:
    # The function travels by value, and so must the sibling module it uses: by
    # name, no worker can import it (ModuleNotFoundError, once).
    name = f"plugin_{uuid.uuid4().hex}"
    (tmp_path / f"{name}_helper.py").write_text("def triple(x):\n    return 3 * x\n")
    (tmp_path / f"{name}.py").write_text(f"import {name}_helper\n\ndef work(x):\n    return {name}_helper.triple(x)\n")
    path_before = list(sys.path)
    try:
        module = import_from(name, tmp_path)
        sys.path.remove(str(tmp_path))  # a temporary folder, or a tool that extends the path while importing
        fresh_process_pool(2)
        assert module.work(2) == 6  # the parent can call it
        assert mp.parallel(backend="process")(module.work)(7).get(timeout=30) == 21
        assert mp.parallel_map(module.work, range(20), backend="process") == [3 * x for x in range(20)]
    finally:
        sys.path[:] = path_before
        sys.modules.pop(name, None)
        sys.modules.pop(f"{name}_helper", None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("function", ["its own", "another module's"])
def test_a_module_that_runs_process_tasks_as_it_is_imported(function: str, tmp_path: Path) -> None:
    # Each worker imported the module to unpickle its function, which ran the map again,
    # in a pool of its own, whose workers did the same: processes without end, no error.
    # A map of another module's function does not recurse, and runs.
    mapped = "square" if function == "its own" else "math.factorial"
    (tmp_path / "report.py").write_text(
        "import math\nimport makeparallel as mp\n\n"
        "def square(x):\n    return x * x\n\n"
        f"TABLE = mp.parallel_map({mapped}, range(5), backend='process')\n\n"
        "def lookup(i):\n    return TABLE[i]\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(mp.__file__).parents[1])])}
    code = "import makeparallel as mp, report\nprint(mp.parallel(backend='process')(report.lookup)(3).get(timeout=30))"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, env=env, check=False
    )
    if function == "its own":
        assert completed.returncode == 1, completed.stderr
        assert "square of module report was sent to a process task while a worker process imported" in completed.stderr
        assert "if __name__ == " in completed.stderr
    else:
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.split() == ["6"]


def run_in(folder: Path, *arguments: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run this Python with ``arguments`` in ``folder``, the package importable; ``script`` on its standard input."""
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=folder,
        input=script,
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        check=False,
    )


MAIN_SCRIPT = """\
import dataclasses, pickle, sys
import makeparallel as mp

@dataclasses.dataclass
class Point:
    x: int

class Where:
    def file(self):
        import __main__
        return __main__.__file__

def pickled_here(i):
    return pickle.loads(pickle.dumps(Point(i))) == Point(i)

def load(path):
    with open(path, "rb") as file:
        return isinstance(pickle.load(file), Point)

if __name__ == "__main__":
    with open(sys.argv[1], "wb") as file:
        pickle.dump(Point(42), file)
    task = mp.parallel(backend="process")
    print(task(Where().file)().get(timeout=30) == __file__, task(pickled_here)(1).get(timeout=30))
    print(task(load)(sys.argv[1]).get(timeout=30), mp.parallel_map(pickled_here, range(3), backend="process"))
"""


def test_a_task_pickles_the_classes_of_the_main_script_it_refers_to(tmp_path: Path) -> None:
    # A worker never runs the main script; its functions travel by value, and found the
    # template's own __main__: pickling an instance of a class the script defines failed
    # (Can't pickle <class '__main__.Point'>), so did pickle.load of a file holding one,
    # and __main__.__file__ was missing. The worker's __main__ now stands for the script's.
    (tmp_path / "script.py").write_text(MAIN_SCRIPT)
    result = run_in(tmp_path, "script.py", str(tmp_path / "cache.pkl"))
    assert result.stdout.splitlines() == ["True True", "True [True, True, True]"], result.stderr



def test_a_task_pickles_an_argument_whose_class_the_main_script_defines(tmp_path: Path) -> None:
    # The worker's __main__ took on only the classes the function sent refers to: a task
    # that pickled its argument (a cache file, pickle.dumps itself as the task) failed with
    # "attribute lookup Point on __main__ failed", where every multiprocessing pool's works.
    (tmp_path / "script.py").write_text(
        "import pickle\n"
        "import makeparallel as mp\n\n"
        "class Point:\n"
        "    def __init__(self, x):\n"
        "        self.x = x\n\n"
        "def dump(value):\n"
        "    return pickle.dumps(value)\n\n"
        "if __name__ == '__main__':\n"
        "    task = mp.parallel(backend='process')\n"
        "    print(pickle.loads(task(dump)(Point(1)).get(timeout=30)).x,\n"
        "          pickle.loads(task(pickle.dumps)(Point(2)).get(timeout=30)).x,\n"
        "          [pickle.loads(p).x for p in mp.parallel_map(dump, [Point(3)], backend='process')])\n"
    )
    result = run_in(tmp_path, "script.py")
    assert result.stdout.split() == ["1", "2", "[3]"], result.stderr[-2000:]


SLOTTED_SCRIPT = """\
import dataclasses
import makeparallel as mp

@dataclasses.dataclass(slots=True)
class Reading:
    sensor: str
    value: float

class Pair:
    __slots__ = ("left", "__right")

    def __init__(self, left, right):
        self.left = left
        self.__right = right

    def right(self):
        return self.__right

def measure(sensor):
    return Reading(sensor, 1.5)

def pair(left):
    value = Pair(left, left + 1)
    return value, hasattr(value, "__dict__")

if __name__ == "__main__":
    task = mp.parallel(backend="process")
    print(task(measure)("t1").get(timeout=30))
    value, has_dict = task(pair)(1).get(timeout=30)
    print(value.left, value.right(), has_dict)
    print(mp.parallel_map(measure, ["a"], backend="process"))
"""


def test_a_task_returns_an_instance_of_a_slotted_class_of_the_main_script(tmp_path: Path) -> None:
    # cloudpickle sends a class by value without its slots: the worker's copy kept its
    # instances' attributes in a __dict__, and a result made there (a dataclass with
    # slots=True) failed to unpickle against the script's own class ("'Reading' object
    # has no attribute '__dict__'").
    (tmp_path / "script.py").write_text(SLOTTED_SCRIPT)
    result = run_in(tmp_path, "script.py")
    assert result.stdout.splitlines() == [
        "Reading(sensor='t1', value=1.5)",
        "1 2 False",
        "[Reading(sensor='a', value=1.5)]",
    ], result.stderr[-2000:]


CACHED_SCRIPT = """\
import functools
import makeparallel as mp

@functools.cache
def rate(currency):
    return {"EUR": 2, "USD": 3}[currency]

@functools.lru_cache(maxsize=8, typed=True)
def fee(amount):
    return amount // 10

def convert(amount):
    return amount * rate("EUR") + fee(amount) + rate.cache_info().misses

if __name__ == "__main__":
    print(mp.parallel(backend="process")(convert)(100).get(timeout=30))
    print(mp.parallel_map(rate, ["EUR", "USD"], backend="process"))
    print(mp.parallel(backend="process")(fee.cache_parameters)().get(timeout=30))
"""


def test_a_task_uses_a_cached_function_of_the_main_script(tmp_path: Path) -> None:
    # A functools.cache (lru_cache) function pickles by its name, and a worker's
    # __main__ has no such name: a task that called one of the script's, or a map of
    # one, failed with "Can't get attribute 'rate' on <module '__main__'>".
    (tmp_path / "script.py").write_text(CACHED_SCRIPT)
    result = run_in(tmp_path, "script.py")
    assert result.stdout.splitlines() == ["211", "[2, 3]", "{'maxsize': 8, 'typed': True}"], result.stderr[-2000:]


CACHED_PROPERTY_SCRIPT = """\
import functools
import makeparallel as mp

class Order:
    def __init__(self, items):
        self.items = items

    @functools.cached_property
    def total(self):
        \"\"\"The sum of the items.\"\"\"
        return sum(self.items)

def total(order):
    return order.total, Order.total.attrname, Order.total.__doc__

if __name__ == "__main__":
    print(mp.parallel(backend="process")(total)(Order([1, 2])).get(timeout=30))
    print(mp.parallel_map(lambda n: Order([n, n]).total, [1, 2], backend="process"))
"""


def test_a_task_uses_a_class_of_the_main_script_with_a_cached_property(tmp_path: Path) -> None:
    # On Python 3.10 and 3.11 a functools.cached_property holds a lock, which cannot be
    # pickled: every task that used such a class of the script, sent by value, failed
    # with "cannot pickle '_thread.RLock' object".
    (tmp_path / "script.py").write_text(CACHED_PROPERTY_SCRIPT)
    result = run_in(tmp_path, "script.py")
    assert result.stdout.splitlines() == ["(3, 'total', 'The sum of the items.')", "[2, 4]"], result.stderr[-2000:]


CACHED_MODULE = """\
import functools

@functools.cache
def by_name(x):
    return x + 100

def slow(x):
    return x * 10

fast = functools.lru_cache(maxsize=16, typed=True)(slow)  # its name, slow, holds the plain function

def make():
    @functools.cache
    def inner(x):
        return x - 1
    return inner

local = make()
powers = functools.cache(functools.partial(pow, 2))  # no name at all
"""

CACHED_BY_MODULE_SCRIPT = """\
import makeparallel as mp
from cached_helpers import by_name, fast, local, powers

def call(fn, x):
    return fn(x), fn.cache_info().misses

if __name__ == "__main__":
    task = mp.parallel(backend="process")
    print(task(by_name)(1).get(timeout=30), task(fast)(2).get(timeout=30), task(local)(3).get(timeout=30))
    print(task(call)(fast, 2).get(timeout=30), task(call)(powers, 5).get(timeout=30))
    print(mp.parallel_map(local, [1, 2], backend="process"), fast.cache_parameters())
"""


def test_a_task_uses_a_cached_function_of_a_module_whose_name_does_not_lead_to_it(tmp_path: Path) -> None:
    # A cached function of an importable module went by its name even where that name
    # leads elsewhere: one made in a function ("Can't pickle local object"), one cached
    # under another name (fast = lru_cache(...)(slow): "it's not the same object as
    # cached_helpers.slow"), a cached partial (no __qualname__).
    (tmp_path / "cached_helpers.py").write_text(CACHED_MODULE)
    (tmp_path / "script.py").write_text(CACHED_BY_MODULE_SCRIPT)
    result = run_in(tmp_path, "script.py")
    assert result.stdout.splitlines() == [
        "101 20 2",
        "(20, 1) (32, 1)",
        "[0, 1] {'maxsize': 16, 'typed': True}",
    ], result.stderr[-2000:]


def test_a_cached_function_that_its_module_names_goes_by_name() -> None:
    # By value only where the name does not lead to it: one that does is the worker's module's, cache and all.
    import fnmatch

    from makeparallel._serialization import _reduce_cached_function

    assert _reduce_cached_function(fnmatch._compile_pattern) is NotImplemented  # an lru_cache of the stdlib


def test_a_spawn_pool_a_task_makes_runs_a_module_run_with_dash_m_by_its_name(tmp_path: Path) -> None:
    # The worker's __main__ named the program's file but not its module: the spawn
    # pool's children ran app/main.py as a file, its relative import failed in each,
    # and the pool started new ones without end.
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "settings.py").write_text("SIGN = -1\n")
    (tmp_path / "app" / "main.py").write_text(
        "import multiprocessing\n"
        "import makeparallel as mp\n"
        "from .settings import SIGN\n\n"
        "def task():\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
        "        return pool.map(abs, [SIGN, 2 * SIGN])\n\n"
        "if __name__ == '__main__':\n"
        "    print(mp.parallel(backend='process')(task)().get(timeout=30))\n"
    )
    result = run_in(tmp_path, "-m", "app.main")
    assert result.stdout.splitlines() == ["[1, 2]"], result.stderr[-2000:]


def test_a_class_the_program_defines_again_is_the_one_a_later_task_pickles() -> None:
    # A notebook cell run again defines its class anew: the worker's __main__ kept the
    # first, and a task of the new cell failed to pickle an instance of the new one.
    cell = (
        "@dataclasses.dataclass\nclass Point:\n    x: int\n\n"
        "def rebuilt(i):\n    return pickle.loads(pickle.dumps(Point(i))).x\n"
    )
    result = run_in(
        Path.cwd(),
        "-c",
        "import dataclasses, pickle\n"
        "import makeparallel as mp\n"
        "mp.configure_process_pool(num_workers=1)\n"
        f"exec({cell!r})\n"
        "first = mp.parallel(backend='process')(rebuilt)(1).get(timeout=30)\n"
        f"exec({cell!r})\n"
        "print(first, mp.parallel(backend='process')(rebuilt)(2).get(timeout=30))\n",
    )
    assert result.stdout.split() == ["1", "2"], result.stderr[-2000:]


def test_a_script_read_from_standard_input_gives_the_workers_main_no_file() -> None:
    # Its __main__.__file__ is "<stdin>": a spawn pool a task made looked for a file of
    # that name in each child, failed, and started new ones without end.
    script = (
        "import dataclasses, pickle\n"
        "import makeparallel as mp\n"
        "@dataclasses.dataclass\n"
        "class Point:\n"
        "    x: int\n"
        "def main_file():\n"
        "    import __main__\n"
        "    return getattr(__main__, '__file__', None), pickle.loads(pickle.dumps(Point(3))).x\n"
        "print(__file__, *mp.parallel(backend='process')(main_file)().get(timeout=30))\n"
    )
    result = run_in(Path.cwd(), "-", script=script)
    assert result.stdout.split() == ["<stdin>", "None", "3"], result.stderr[-2000:]


def test_a_value_an_initializer_put_in_the_workers_main_stays_there(tmp_path: Path) -> None:
    # The worker's __main__ took on every global of each function sent, as pickled: a
    # later function's stale copy of a value replaced what the initializer had put there.
    (tmp_path / "script.py").write_text(
        "import makeparallel as mp\n"
        "CONNECTION = None\n\n"
        "def connect(name):\n"
        "    import __main__\n"
        "    __main__.CONNECTION = name\n\n"
        "def via_main():\n"
        "    import __main__\n"
        "    return __main__.CONNECTION\n\n"
        "def by_name():\n"
        "    return CONNECTION\n\n"
        "if __name__ == '__main__':\n"
        "    mp.configure_process_pool(num_workers=1, initializer=connect, initargs=('db',))\n"
        "    run = lambda fn: mp.parallel(backend='process')(fn)().get(timeout=30)\n"
        "    print(run(via_main), run(by_name), run(via_main))\n"
    )
    result = run_in(tmp_path, "script.py")
    assert result.stdout.split() == ["db", "None", "db"], result.stderr[-2000:]  # a function's own globals: None


def test_a_function_a_launcher_runs_as_main_from_another_file_travels_by_value_as_on_threads(tmp_path: Path) -> None:
    # runpy.run_module runs target.py as __main__ while the program's __main__ is the
    # launcher: its functions are no attributes of that, and pickling them by name fails
    # on threads. Taken on by the worker's __main__ (named as the launcher), they went
    # by name to a spawn pool's children, which ran the launcher, and the target's main
    # block, again; the pool waited for good.
    (tmp_path / "target.py").write_text(
        "import multiprocessing, sys\n"
        "import makeparallel as mp\n\n"
        "def square(x):\n"
        "    return x * x\n\n"
        "def pool():\n"
        "    with multiprocessing.get_context('spawn').Pool(1) as workers:\n"
        "        return workers.map(square, [2])\n\n"
        "if __name__ == '__main__':\n"
        "    for backend in ('thread', 'process'):\n"
        "        try:\n"
        "            print(mp.parallel(backend=backend)(pool)().get(timeout=30))\n"
        "        except Exception as error:\n"
        "            print(type(error).__name__)\n"
    )
    (tmp_path / "launcher.py").write_text("import runpy\nrunpy.run_module('target', run_name='__main__')\n")
    result = run_in(tmp_path, "launcher.py")
    assert result.stdout.split() == ["PicklingError", "PicklingError"], result.stderr[-2000:]


VIRTUAL_FINDER = """\
import importlib.abc, importlib.util


class VirtualFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    '''Finds the module "virtual", made of source it holds: as a notebook importer, a plugin loader.'''

    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "virtual" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec("def double(x):\\n    return 2 * x\\n", module.__dict__)
"""

RUNTIME_FINDER_SCRIPT = """\
import os, sys
import makeparallel as mp
{define}
{warm}
sys.meta_path.append(VirtualFinder())
import virtual
print(mp.parallel(backend="process")(virtual.double)(21).get(timeout=30))
"""


@pytest.mark.parametrize("where", ["script", "module"])
def test_a_function_of_a_module_only_a_finder_the_program_installed_finds_travels_by_value(
    where: str, tmp_path: Path
) -> None:
    # The program installed the finder as it ran, which no worker does: the module was
    # judged importable by name, and every worker failed with ModuleNotFoundError. A
    # finder of the script's own is known at once; one of a module, once a worker has
    # said which finders it has (the pool warmed up first).
    (tmp_path / "virtual_finder.py").write_text(VIRTUAL_FINDER)
    if where == "script":  # a cold pool: no worker said anything yet
        define, warm = VIRTUAL_FINDER, ""
    else:
        define = "from virtual_finder import VirtualFinder"
        warm = "assert mp.parallel(backend='process')(os.getpid)().get(timeout=30) != os.getpid()"
    (tmp_path / "main.py").write_text(RUNTIME_FINDER_SCRIPT.format(define=define, warm=warm))
    completed = run_in(tmp_path, "main.py")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["42"]


# Run in a fresh interpreter, as a worker would run it: take_path changes sys.path,
# sys.meta_path and the warning filters of the process it runs in.
FORGET_WHILE_ANOTHER_THREAD_IMPORTS = """
import sys
import types
from makeparallel._backends import _process_worker
from makeparallel._backends._interpreter_settings import warning_filters

package = types.ModuleType("moved_package")
package.__spec__ = types.SimpleNamespace(origin="/elsewhere/moved_package/__init__.py", submodule_search_locations=[])
sys.modules["moved_package"] = sys.modules["moved_package.part"] = package
made = []

def import_elsewhere(frame, event, arg):
    # Each line run inside take_path: another thread of the worker (one a task
    # left running) imports a module meanwhile.
    caller = frame
    while caller is not None and caller.f_code is not _process_worker.take_path.__code__:
        caller = caller.f_back
    if caller is not None and event == "line" and len(made) < 50:
        name = f"imported_meanwhile_{len(made)}"
        sys.modules[name] = types.ModuleType(name)
        made.append(name)
    return import_elsewhere

sys.settrace(import_elsewhere)
try:
    _process_worker.take_path(list(sys.path), {"moved_package": ("/here",)}, warning_filters())
finally:
    sys.settrace(None)
assert made, "no line of take_path ran under the trace"
print(sorted(name for name in sys.modules if name.startswith("moved_package")), made[-1] in sys.modules)
"""


@pytest.mark.timeout(60)
def test_a_module_forgotten_as_another_thread_of_the_worker_imports_leaves_the_worker_whole() -> None:
    # A worker forgets a module that the parent imports from elsewhere now, and its
    # submodules, found by going through sys.modules in Python: a thread a task left
    # running that imported meanwhile raised "dictionary changed size during
    # iteration" out of the worker's loop, between two tasks.
    result = subprocess.run(
        [sys.executable, "-c", FORGET_WHILE_ANOTHER_THREAD_IMPORTS],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        env={name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "True"]
