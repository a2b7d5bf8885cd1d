"""The public namespace is the contract: ``__all__`` names it, exactly and lazily."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.resources
import inspect
import os
import subprocess
import sys
import types

import pytest

import makeparallel as mp
import makeparallel.errors
import makeparallel.testing

# Public module attributes that are deliberately outside ``__all__``.
_NOT_IN_ALL = {"__version__", "errors", "testing", "prometheus", "statsd", "fastapi", "flask"}  # submodules

# Modules that ``import makeparallel`` must not load (STYLE.md item 4).
_HEAVY_MODULES = (
    "multiprocessing",
    "asyncio",
    "concurrent.futures.process",
    "tqdm",
    "cloudpickle",
    "prometheus_client",
    "distributed",
)

# Nor may a first task on threads: these load only for the features that need them.
_NOT_FOR_A_THREAD_TASK = (
    *_HEAVY_MODULES,
    "psutil",
    "dataclasses",
    "inspect",
    "random",
    "makeparallel._backends._process",
    "makeparallel._circuit",
    "makeparallel._collect",
    "makeparallel._map",
    "makeparallel._retry",
)


def test_all_is_sorted_without_duplicates() -> None:
    assert list(mp.__all__) == sorted(mp.__all__)
    assert len(set(mp.__all__)) == len(mp.__all__)


@pytest.mark.parametrize("name", mp.__all__)
def test_every_name_in_all_exists_and_imports(name: str) -> None:
    assert hasattr(mp, name), f"makeparallel.__all__ names {name!r}, which does not exist"
    namespace: dict[str, object] = {}
    exec(f"from makeparallel import {name}", namespace)
    assert namespace[name] is getattr(mp, name)


@pytest.mark.parametrize("name", mp.__all__)
def test_every_public_name_is_documented(name: str) -> None:
    obj = getattr(mp, name)
    if not callable(obj):
        return  # constants carry no docstring of their own
    assert inspect.getdoc(obj), f"makeparallel.{name} has no docstring"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from makeparallel import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(mp.__all__)


def test_no_public_attribute_outside_all() -> None:
    public = {n for n in vars(mp) if not n.startswith("_")}
    stray = public - set(mp.__all__) - _NOT_IN_ALL
    assert not stray, f"public names missing from makeparallel.__all__: {sorted(stray)}"


def test_submodules_are_modules() -> None:
    assert isinstance(mp.errors, types.ModuleType)
    assert isinstance(mp.testing, types.ModuleType)


def test_error_classes_are_reexported_from_errors() -> None:
    for name in makeparallel.errors.__all__:
        assert name in mp.__all__, f"makeparallel.errors.{name} is not re-exported"
        assert getattr(mp, name) is getattr(makeparallel.errors, name)


def test_submodule_all_names_exist() -> None:
    for module in (makeparallel.errors, makeparallel.testing):
        assert list(module.__all__) == sorted(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"


def test_version_matches_the_distribution() -> None:
    assert isinstance(mp.__version__, str)
    assert mp.__version__ == importlib.metadata.version("makeparallel")


@pytest.mark.parametrize("alias", ["parallel_fast", "parallel_pool", "parallel_priority"])
def test_aliases_are_parallel(alias: str) -> None:
    assert getattr(mp, alias) is mp.parallel


def test_py_typed_ships() -> None:
    marker = importlib.resources.files("makeparallel") / "py.typed"
    assert marker.is_file()


def modules_loaded_by(code: str) -> set[str]:
    """The modules in ``sys.modules`` after ``code`` ran in a fresh interpreter."""
    program = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))\n"
    # Not measured by coverage, which imports multiprocessing itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKEPARALLEL_", "COVERAGE_"))}
    completed = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=25,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    loaded = set(completed.stdout.split())
    assert "makeparallel" in loaded  # the probe did import the package
    return loaded


def among(loaded: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded for b in banned if m == b or m.startswith(b + "."))


@pytest.mark.timeout(30)
def test_import_is_lazy() -> None:
    loaded = modules_loaded_by("import makeparallel")
    heavy = among(loaded, _HEAVY_MODULES)
    assert not heavy, f"import makeparallel loaded heavy modules: {heavy}"
    ours = sorted(m for m in loaded if m.startswith("makeparallel."))
    assert ours == ["makeparallel.errors"], (
        f"import makeparallel loaded more than its errors: {ours}; a new public name goes in "
        "makeparallel._LAZY and in the imports under `if TYPE_CHECKING:`, not in a plain import"
    )


@pytest.mark.timeout(30)
def test_a_first_thread_task_loads_only_what_it_uses() -> None:
    loaded = modules_loaded_by(
        "import makeparallel as mp\n"
        "@mp.parallel\n"
        "def negate(x):\n"
        "    return -x\n"
        "assert negate(-1).get(20) == 1\n"
    )
    assert "makeparallel._backends._thread" in loaded  # the probe did run a thread task
    heavy = among(loaded, _NOT_FOR_A_THREAD_TASK)
    assert not heavy, f"a first @parallel call on threads loaded: {heavy}"


@pytest.mark.timeout(30)
def test_a_first_thread_task_of_a_c_function_loads_only_what_it_uses() -> None:
    loaded = modules_loaded_by("import makeparallel as mp\nassert mp.parallel(abs)(-1).get(20) == 1\n")
    assert "makeparallel._backends._thread" in loaded
    heavy = among(loaded, _NOT_FOR_A_THREAD_TASK)
    assert not heavy, f"a first @parallel call of a C function on threads loaded: {heavy}"


@pytest.mark.timeout(30)
def test_a_first_task_wait_or_map_evaluates_no_annotation() -> None:
    # typing.NamedTuple compiles each annotation written as a string into a
    # ForwardRef: about a millisecond of a first task, for the named tuples.
    program = (
        "import typing\n"
        "made = []\n"
        "make = typing.ForwardRef.__init__\n"
        "def counted(self, arg, *args, **kwargs):\n"
        "    made.append(arg)\n"
        "    make(self, arg, *args, **kwargs)\n"
        "typing.ForwardRef.__init__ = counted\n"
        "import makeparallel as mp\n"
        "assert mp.parallel(abs)(-1).get(20) == 1\n"
        "assert mp.parallel(backend='process')(abs)(-1).get(20) == 1\n"
        "assert len(mp.wait([mp.parallel(abs)(-1)], timeout=20).done) == 1\n"
        "assert mp.parallel_map(abs, [-1, -2]) == [1, 2]\n"
        "print(made)\n"
    )
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=25, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["[]"]


@pytest.mark.timeout(30)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked from a template on Linux")
def test_a_first_process_task_on_linux_does_not_import_subprocess() -> None:
    # The template forks the workers: subprocess (several ms) serves only the other systems' fresh workers.
    loaded = modules_loaded_by("import makeparallel as mp\nassert mp.parallel(backend='process')(abs)(-1).get(20) == 1\n")
    assert "makeparallel._backends._template" in loaded  # the probe did run a process task
    assert "subprocess" not in loaded


def test_every_lazy_name_is_imported_for_type_checkers() -> None:
    # The names the package loads on first use (``_LAZY``) and the imports type
    # checkers and the documentation read (under ``if TYPE_CHECKING:``) must agree.
    tree = ast.parse(inspect.getsource(mp))
    guarded = next(
        node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )
    imported = {
        alias.asname or alias.name: (node.module, alias.name)
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == dict(mp._LAZY), "makeparallel._LAZY and the imports under `if TYPE_CHECKING:` differ"
    assert set(mp._LAZY) | set(vars(mp.errors)) >= set(mp.__all__)


def test_dir_lists_every_public_name_before_use() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", "import makeparallel as mp; print(' '.join(dir(mp)))"],
        capture_output=True, text=True, timeout=25, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert set(mp.__all__) <= set(completed.stdout.split())


def test_an_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'paralel'"):
        mp.paralel  # type: ignore[attr-defined]  # noqa: B018


def test_reimport_is_the_same_module() -> None:
    assert importlib.import_module("makeparallel") is mp
