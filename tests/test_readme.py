"""Every ```python block of README.md runs, each on its own in a fresh interpreter.

A block is a complete program: it shares nothing with the others, so a reader can
paste any one of them. Blocks that are not meant to run use ```bash or ```text.
"""

from __future__ import annotations

import ast
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# A fence opens with ```python on a line of its own and closes at the next ```.
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[str, str]]:
    """``(id, code)`` for each python block, the id naming its place in the file."""
    blocks = []
    for number, match in enumerate(_BLOCK.finditer(text), start=1):
        line = text.count("\n", 0, match.start(1)) + 1  # the first line of code
        blocks.append((f"block-{number}-line-{line}", match.group(1)))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks() -> None:
    assert BLOCKS, f"no ```python block found in {README}"


def test_block_extraction_finds_only_python_fences() -> None:
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [("block-1-line-3", "x = 1\n"), ("block-2-line-10", "y = 2\n")]


@pytest.mark.parametrize(("block_id", "code"), BLOCKS, ids=[block_id for block_id, _ in BLOCKS])
def test_readme_block_runs(block_id: str, code: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, (
        f"README {block_id} exited with {completed.returncode}\n"
        f"--- code ---\n{code}\n--- stderr ---\n{completed.stderr}"
    )


def test_the_process_pool_example_seeds_each_workers_generator() -> None:
    """The initializer example draws what a generator seeded with 42 draws, in each worker.

    Each of its two workers is seeded once and draws at most the four numbers of
    the map, so every number printed is one of the first four of ``Random(42)``.
    """
    code = next(code for _, code in BLOCKS if "initargs=(42,)" in code)
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    draws = ast.literal_eval(completed.stdout.splitlines()[0])
    seeded = random.Random(42)
    first_draws = [seeded.random() for _ in range(4)]
    assert len(draws) == 4 and set(draws) <= set(first_draws), (draws, first_draws)
