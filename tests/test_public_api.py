"""The public namespace is the contract: ``__all__`` names it, exactly and lazily."""

from __future__ import annotations

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


@pytest.mark.timeout(30)
def test_import_is_lazy() -> None:
    code = (
        "import sys\n"
        "import makeparallel\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    # Not measured by coverage, which imports multiprocessing itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKEPARALLEL_", "COVERAGE_"))}
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=25,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    loaded = set(completed.stdout.split())
    assert "makeparallel" in loaded  # the probe did import the package
    heavy = sorted(
        module
        for module in loaded
        for banned in _HEAVY_MODULES
        if module == banned or module.startswith(banned + ".")
    )
    assert not heavy, f"import makeparallel loaded heavy modules: {heavy}"


def test_reimport_is_the_same_module() -> None:
    assert importlib.import_module("makeparallel") is mp
