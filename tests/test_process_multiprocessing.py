"""What a process task does with ``multiprocessing`` works as it does in the program itself.

A task that makes a pool (``Pool``, ``ProcessPoolExecutor``) or starts a
``Process``, with ``spawn``, ``forkserver`` or ``fork``, hands it the
functions of the main script by name, as the program's own pools do: the
worker's ``__main__`` (``_backends/_main_module``) must hold the very objects
the task refers to. Each test runs a real script, its workers forked from the
template or fresh interpreters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import makeparallel as mp

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(120),
]

METHODS = pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
BOTH_WAYS = pytest.mark.parametrize("template", [True, False], ids=["forked from the template", "fresh interpreters"])

# Workers as fresh interpreters (tests/test_process_template.py does the same); the
# children of a spawn pool run this too, as they run the whole script but its main block.
_FRESH_INTERPRETERS = "from makeparallel._backends import _process\n_process.template_available = lambda: False\n"


def run_script(folder: Path, source: str, *arguments: str, template: bool) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as the script ``main.py`` in ``folder`` with ``arguments``, the package importable."""
    (folder / "main.py").write_text(source if template else _FRESH_INTERPRETERS + source)
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "main.py", *arguments],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        check=False,
    )


SHARED_FUNCTION = """\
import multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
import makeparallel as mp

def square(x):
    return x * x

def put_square(queue, x):
    queue.put(square(x))

def with_pool(method):
    with multiprocessing.get_context(method).Pool(1) as pool:
        return pool.map(square, [1, 2])

def with_executor(method):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method)) as executor:
        return list(executor.map(square, [3]))

def with_process(method):
    context = multiprocessing.get_context(method)
    queue = context.SimpleQueue()
    process = context.Process(target=put_square, args=(queue, 4))
    process.start()
    process.join()
    return queue.get(), process.exitcode

def given(method, fn):
    with multiprocessing.get_context(method).Pool(1) as pool:
        return pool.map(fn, [5])

if __name__ == "__main__":
    mp.configure_process_pool(num_workers=1)
    task = mp.parallel(backend="process")
    method = sys.argv[1]
    for fn in (with_pool, with_executor, with_process, with_pool):
        print(task(fn)(method).get(timeout=60))
    print(task(given)(method, square).get(timeout=60), task(with_executor)(method).get(timeout=60))
"""


@METHODS
@BOTH_WAYS
def test_functions_sent_apart_that_use_one_function_of_the_script_hand_it_to_a_pool(
    tmp_path: Path, method: str, template: bool
) -> None:
    # Each function sent by value brings its own copy of the script's functions it uses,
    # and the worker's __main__ held the one that came last: a task whose function came
    # earlier handed its copy to a pool, which pickles it by name, and failed with "Can't
    # pickle <function square>: it's not the same object as __main__.square". Which
    # worker had run what decided it: intermittent with several workers, certain with one.
    result = run_script(tmp_path, SHARED_FUNCTION, method, template=template)
    assert result.stdout.splitlines() == ["[1, 4]", "[9]", "(16, 0)", "[1, 4]", "[25] [9]"], result.stderr[-3000:]
