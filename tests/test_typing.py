"""The types users see, checked by the type checkers users run: mypy and pyright.

``tests/typing/check_types.py`` holds ``assert_type`` checks (``parallel_map``,
``gather`` and ``imap`` give ``list[T]`` unless ``on_error="none"``, handles keep
their result type, parallel methods their parameters less ``self``); each checker
must find no error in it, and must find the errors in a file that asserts a wrong
type and passes a wrong argument, so that a checker that checks nothing cannot pass. The file also runs as a program, so that values agree with types.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
CHECKS = TYPING / "check_types.py"
WRONG = '''
import makeparallel as mp
from typing_extensions import assert_type

assert_type(mp.parallel_map(abs, [1, -2]), list[int | None])


class Service:
    @mp.parallel
    def lookup(self, key: int) -> str:
        return str(key)


Service().lookup("key")  # a parallel method keeps its parameters, less self


async def grouped() -> None:
    async with mp.TaskGroup():  # a group is entered with `with` only (refused at run time too)
        pass
'''


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # The checkers must see this checkout's sources, before any installed copy.
    env = {**os.environ, "MYPYPATH": str(ROOT / "src"), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)


def mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy", reason='the type checks need mypy: pip install -e ".[test]"')
    return run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), str(path)], path.parent)


def pyright(folder: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("pyright", reason='the type checks need pyright: pip install -e ".[test]"')
    if shutil.which("node") is None:
        pytest.skip("pyright needs Node.js")
    return run([sys.executable, "-m", "pyright", "-p", str(folder / "pyrightconfig.json")], folder)


def wrong_checks(tmp_path: Path) -> Path:
    folder = tmp_path / "wrong"
    folder.mkdir()
    (folder / "check_types.py").write_text(WRONG)
    config = (TYPING / "pyrightconfig.json").read_text().replace('"../../src"', f'"{ROOT / "src"}"')
    (folder / "pyrightconfig.json").write_text(config)
    return folder


def test_the_checks_run_as_a_program() -> None:
    completed = run([sys.executable, str(CHECKS)], ROOT)
    assert completed.returncode == 0, completed.stderr


@pytest.mark.timeout(300)
def test_mypy_agrees(tmp_path: Path) -> None:
    completed = mypy(CHECKS, tmp_path / "cache")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    wrong = mypy(wrong_checks(tmp_path) / "check_types.py", tmp_path / "cache")
    assert wrong.returncode == 1 and "[assert-type]" in wrong.stdout, wrong.stdout + wrong.stderr
    assert "[arg-type]" in wrong.stdout, wrong.stdout
    # The run time's refusal of `async with` (its __aenter__) made mypy take it for a protocol met.
    assert '"ParallelContext" has no attribute "__aenter__"' in wrong.stdout, wrong.stdout


@pytest.mark.timeout(300)
def test_pyright_agrees(tmp_path: Path) -> None:
    completed = pyright(TYPING)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    wrong = pyright(wrong_checks(tmp_path))
    assert wrong.returncode == 1 and "reportAssertTypeFailure" in wrong.stdout, wrong.stdout + wrong.stderr
    assert "reportArgumentType" in wrong.stdout, wrong.stdout
    assert 'Attribute "__aenter__" is unknown' in wrong.stdout, wrong.stdout


def test_the_generic_classes_subscript_at_run_time_as_typing_does() -> None:
    # Annotations that run (a module without `from __future__ import annotations`,
    # or pydantic evaluating them) get typing's aliases: hashable, checked, substitutable.
    import typing

    import makeparallel as mp

    optional = typing.Optional[mp.ParallelFunction[[int], str]]  # hashes its arguments
    assert typing.get_args(typing.get_args(optional)[0]) == ((int,), str)
    assert typing.get_args(mp.AsyncHandle[int]) == (int,)
    with pytest.raises(TypeError):
        mp.AsyncHandle[int, str]  # type: ignore[misc]
    P = typing.ParamSpec("P")
    T = typing.TypeVar("T")
    assert typing.get_args(mp.ParallelFunction[P, T][[bytes], int]) == ((bytes,), int)
