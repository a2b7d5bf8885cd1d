"""A ``@parallel`` function pickles with ``pickle`` too: by its name, as a plain function does.

So it can be an argument of a ``multiprocessing`` task (its ``ForkingPickler``),
part of an object another library sends to another process, or stored. The
library's own process backend pickles it its own way: as its function and
options, a function of the main script by value, which fresh workers need
(the rows at the end, and ``tests/test_process_*.py``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import MethodType
from typing import Any

import pytest

import makeparallel as mp
from makeparallel._decorators import ParallelFunction

pytestmark = pytest.mark.timeout(60)


@mp.parallel(backend="sync")
def double(x: int) -> int:
    return 2 * x


@mp.parallel(backend="sync", timeout=5, priority=2, name="tripled", max_concurrent=3)
def triple(x: int) -> int:
    return 3 * x


BREAKER = mp.CircuitBreaker("pickled_with_its_function")


@mp.parallel(backend="sync", circuit_breaker=BREAKER)
def guarded(x: int) -> int:
    return x + 1


class Shapes:
    @mp.parallel(backend="sync")
    def area(self, side: int) -> int:
        return side * side

    @staticmethod
    @mp.parallel(backend="sync")
    def static_double(x: int) -> int:
        return 2 * x

    @mp.parallel(backend="sync")
    @classmethod
    def class_above(cls, x: int) -> tuple[str, int]:
        return cls.__name__, x

    @classmethod
    @mp.parallel(backend="sync")
    def class_below(cls, x: int) -> tuple[str, int]:
        return cls.__name__, x


# Each a parallel function its module holds under its name (a class method's, through its class).
NAMED: dict[str, Callable[[], Any]] = {
    "function": lambda: double,
    "function with options": lambda: triple,
    "function with a circuit breaker": lambda: guarded,
    "method, read on its class": lambda: Shapes.area,
    "static method": lambda: Shapes.static_double,
    "class method, @parallel above": lambda: vars(Shapes)["class_above"].__func__,
    "class method, @parallel below": lambda: vars(Shapes)["class_below"].__func__,
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("get", NAMED.values(), ids=NAMED.keys())
def test_a_parallel_function_its_module_holds_unpickles_as_itself(get: Callable[[], Any], protocol: int) -> None:
    # pickle sent the plain function by its name, which holds the parallel one: "Can't
    # pickle <function double>: it's not the same object as test_pickling.double".
    fn = get()
    assert pickle.loads(pickle.dumps(fn, protocol=protocol)) is fn


def test_a_class_method_held_as_its_class_holds_it_unpickles_as_itself() -> None:
    held = vars(Shapes)["class_above"]
    back = pickle.loads(pickle.dumps(held))
    assert type(back) is type(held) and back.__func__ is held.__func__
    assert back.__get__(None, Shapes)(3).get(timeout=5) == ("Shapes", 3)


def test_unpickling_where_the_name_holds_no_parallel_function_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    data = pickle.dumps(double)
    monkeypatch.setattr(sys.modules[__name__], "double", double.__wrapped__)
    with pytest.raises(TypeError, match=rf"pickled as {__name__}\.double cannot be unpickled: that name holds <function double"):
        pickle.loads(data)


# Copies no name holds: each unpickles as its function (by its name) with its options.
COPIES: dict[str, Callable[[], Any]] = {
    "options copy": lambda: double.options(timeout=2, priority=1),
    "options copy of one with options": lambda: triple.options(name="tripled again"),
    "options copy of a method": lambda: Shapes.area.options(timeout=2),
    "options copy of a class method": lambda: vars(Shapes)["class_above"].__func__.options(priority=4),
}


@pytest.mark.parametrize("get", COPIES.values(), ids=COPIES.keys())
def test_a_copy_with_other_options_unpickles_as_its_function_and_options(get: Callable[[], Any]) -> None:
    copy = get()
    back = pickle.loads(pickle.dumps(copy))
    assert type(back) is ParallelFunction and back is not copy
    assert back.__wrapped__ is copy.__wrapped__
    assert back._options == copy._options
    assert repr(back) == repr(copy)


def test_an_options_copy_runs_as_the_copy_does() -> None:
    back = pickle.loads(pickle.dumps(double.options(timeout=2)))
    assert back(4).get(timeout=5) == 8


def test_a_copy_leaves_its_circuit_breaker_and_executor_in_this_process() -> None:
    # As it does for the process backend: they belong to this process (README, "What travels").
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as executor:
        copy = guarded.options(backend=executor, timeout=3)
        back = pickle.loads(pickle.dumps(copy))
    assert back._options == {"timeout": 3.0}
    assert back(1).get(timeout=5) == 2


def test_a_parallel_lambda_pickles_as_far_as_its_function_does() -> None:
    # No name holds it: the function itself is pickled, and a pickler that can send a lambda
    # (cloudpickle) sends it by value. pickle cannot, and says which function and why.
    import cloudpickle  # type: ignore[import-untyped]

    fn = mp.parallel(backend="sync")(lambda x: x - 1)
    assert cloudpickle.loads(cloudpickle.dumps(fn))(3).get(timeout=5) == 2
    # ("Can't get local object" from Python 3.13)
    with pytest.raises(AttributeError, match=r"Can't (pickle|get) local object .*<lambda>"):
        pickle.dumps(fn)


# Parallel methods bound: to an instance, and class methods to their class.
BOUND: dict[str, Callable[[], Any]] = {
    "method bound to an instance": lambda: Shapes().area,
    "class method, @parallel above": lambda: Shapes.class_above,
    "class method, @parallel below": lambda: Shapes.class_below,
}


@pytest.mark.parametrize("get", BOUND.values(), ids=BOUND.keys())
def test_a_bound_parallel_method_unpickles_bound_as_it_was(get: Callable[[], Any]) -> None:
    # Pickled as its slots, it was rebuilt without them, and unpickling asked it for
    # __setstate__, which its __getattr__ looked up on a function not set yet: RecursionError.
    bound = get()
    back = pickle.loads(pickle.dumps(bound))
    # From Python 3.13, @classmethod above @parallel binds it as a method does (its __func__ and __self__).
    function, instance = ("__func__", "__self__") if isinstance(bound, MethodType) else ("_function", "_instance")
    assert type(back) is type(bound) and getattr(back, function) is getattr(bound, function)
    assert type(getattr(back, instance)) is type(getattr(bound, instance)) or getattr(back, instance) is getattr(bound, instance)
    assert back(3).get(timeout=5) == bound(3).get(timeout=5)


def test_a_bound_options_copy_unpickles_bound_with_its_options() -> None:
    copy = Shapes.class_above.options(priority=4)
    back = pickle.loads(pickle.dumps(copy))
    assert back._instance is Shapes and back._function._options == copy._function._options
    assert back(3).get(timeout=5) == ("Shapes", 3)


def call_bound(method: Callable[[int], mp.AsyncHandle[Any]], x: int) -> Any:
    return method(x).get(timeout=30)


@pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now")
@pytest.mark.parametrize("get", BOUND.values(), ids=BOUND.keys())
def test_a_process_task_gets_a_bound_parallel_method(get: Callable[[], Any]) -> None:
    bound = get()
    assert mp.parallel(backend="process")(call_bound)(bound, 3).get(timeout=30) == bound(3).get(timeout=5)


@mp.profiled
def profiled_square(x: int) -> int:
    return x * x


class Measured:
    @mp.profiled
    def method(self, x: int) -> int:
        return x + 1

    @mp.profiled
    @classmethod
    def class_above(cls, x: int) -> tuple[str, int]:
        return cls.__name__, x

    @classmethod
    @mp.profiled
    def class_below(cls, x: int) -> tuple[str, int]:
        return cls.__name__, x

    @mp.profiled
    @staticmethod
    def static_above(x: int) -> int:
        return 2 * x

    @staticmethod
    @mp.profiled
    def static_below(x: int) -> int:
        return 3 * x


# Each @profiled function, as a task gets it, and the name it is measured under.
PROFILED: dict[str, tuple[Callable[[], Any], str]] = {
    "function": (lambda: profiled_square, "profiled_square"),
    "method, bound": (lambda: Measured().method, "Measured.method"),
    "class method, @profiled above": (lambda: Measured.class_above, "Measured.class_above"),
    "class method, @profiled below": (lambda: Measured.class_below, "Measured.class_below"),
    "static method, @profiled above": (lambda: Measured.static_above, "Measured.static_above"),
    "static method, @profiled below": (lambda: Measured.static_below, "Measured.static_below"),
}


def call_counted(fn: Callable[[int], Any], name: str, x: int) -> tuple[Any, int]:
    """``fn(x)``, and how many calls the metrics of ``name`` counted meanwhile, here."""
    before = mp.get_metrics(name)
    result = fn(x)
    after = mp.get_metrics(name)
    assert after is not None
    return result, after.total_tasks - (0 if before is None else before.total_tasks)


@pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now")
@pytest.mark.parametrize(("get", "name"), PROFILED.values(), ids=PROFILED.keys())
def test_a_process_task_gets_a_profiled_function_measured_once(get: Callable[[], Any], name: str) -> None:
    # Sent by value, its wrapper took the metrics record's lock along: "cannot pickle
    # '_thread.lock' object" for a class method (@profiled above or below @classmethod),
    # whose name reads as a bound method, not as the wrapper. It goes by its name.
    fn = get()
    expected = fn(3)
    assert mp.parallel(backend="process")(call_counted)(fn, name, 3).get(timeout=30) == (expected, 1)
    assert mp.parallel(backend="process")(fn)(3).get(timeout=30) == expected


@pytest.mark.parametrize(("get", "name"), PROFILED.values(), ids=PROFILED.keys())
def test_cloudpickle_sends_a_profiled_function_measured_where_it_is_unpickled(get: Callable[[], Any], name: str) -> None:
    # Another library's cloudpickle (Dask's) sends a class method's wrapper by value, its
    # closure too: the metrics record's lock could not be pickled. The copy counts in the
    # record of its name in the process that unpickles it (this one, here).
    import cloudpickle  # type: ignore[import-untyped]

    fn = get()
    copy = pickle.loads(cloudpickle.dumps(fn))
    assert call_counted(copy, name, 4) == (fn(4), 1)


@mp.parallel(backend="process")
@mp.profiled
def parallel_cube(x: int) -> int:
    return x * x * x


@mp.parallel(backend="process")
@mp.profiled(name="profiled cube")
def named_cube(x: int) -> int:
    return x * x * x


class Cubes:
    @mp.parallel(backend="process")
    @mp.profiled
    def method(self, x: int) -> int:
        return x * x * x

    @mp.parallel(backend="process")
    @mp.profiled
    @classmethod
    def class_method(cls, x: int) -> tuple[str, int]:
        return cls.__name__, x

    @staticmethod
    @mp.parallel(backend="process")
    @mp.profiled
    def static_method(x: int) -> int:
        return x * x * x


@mp.profiled
@mp.parallel(backend="process")
def profiled_cube(x: int) -> int:
    return x * x * x


@pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now")
def test_a_profiled_function_over_a_parallel_one_is_counted_once_as_its_task() -> None:
    # The profiled wrapper counted the submission, which returns the handle at once, as a call
    # completed here, beside the task: two counts for one call. It is the parallel function itself.
    before = mp.get_metrics("profiled_cube")
    assert profiled_cube(3).get(timeout=30) == 27
    after = mp.get_metrics("profiled_cube")
    assert after is not None and after.total_tasks == (0 if before is None else before.total_tasks) + 1
    assert pickle.loads(pickle.dumps(profiled_cube)) is profiled_cube


# Each @parallel function over a @profiled one, as a call gets it, the name it is measured under, and its value at 3.
PARALLEL_OVER_PROFILED: dict[str, tuple[Callable[[], Any], str, Any]] = {
    "function": (lambda: parallel_cube, "parallel_cube", 27),
    "function, named by @profiled": (lambda: named_cube, "profiled cube", 27),
    "method, bound": (lambda: Cubes().method, "Cubes.method", 27),
    "class method": (lambda: Cubes.class_method, "Cubes.class_method", ("Cubes", 3)),
    "static method": (lambda: Cubes.static_method, "Cubes.static_method", 27),
}


@pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now")
@pytest.mark.parametrize(("get", "name", "expected"), PARALLEL_OVER_PROFILED.values(), ids=PARALLEL_OVER_PROFILED.keys())
def test_a_parallel_function_over_a_profiled_one_runs_its_function_in_a_worker(
    get: Callable[[], Any], name: str, expected: Any
) -> None:
    # Its task runs the function underneath, which goes by its name: the name holds the
    # parallel function, whose __wrapped__ it is. Counted once, here, as the task.
    fn = get()
    before = mp.get_metrics(name)
    assert fn(3).get(timeout=30) == expected
    after = mp.get_metrics(name)
    assert after is not None and after.total_tasks == (0 if before is None else before.total_tasks) + 1
    assert pickle.loads(pickle.dumps(fn))(3).get(timeout=30) == expected


def test_the_process_pickler_asks_no_ordinary_function_whether_it_is_a_profiled_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Once any @profiled wrapper existed, every function the process backend pickled by its
    # name (an argument, a global of a function sent by value) was looked up as one: its
    # code hashed three times and its name looked up twice, 45% more time per function.
    from makeparallel import _metrics, _serialization

    asked: list[Any] = []
    real = _metrics.profiled_layer
    monkeypatch.setattr(_metrics, "profiled_layer", lambda fn: asked.append(fn) or real(fn))
    ordinary = [os.path.join, os.path.split, pickle.dumps, subprocess.run]
    assert _serialization.loads(*_serialization.dumps(ordinary)) == ordinary
    assert asked == []
    # A profiled one still is, and goes by its name.
    assert _serialization.loads(*_serialization.dumps(Measured.class_above))(5) == ("Measured", 5)
    assert asked != []


# -- other processes -------------------------------------------------------------------------

SHAPES_MODULE = """\
import makeparallel as mp

@mp.parallel
def square(x):
    return x * x
"""

MAIN_SCRIPT = """\
import multiprocessing, pickle, sys
import makeparallel as mp
import shapes

@mp.parallel
def double(x):
    return 2 * x

def use(fn, x):
    return fn.__wrapped__(x), fn(x).get(timeout=30)

if __name__ == "__main__":
    try:
        pickle.dumps(double)
    except pickle.PicklingError:
        print("refused", pickle.loads(pickle.dumps(shapes.square)) is shapes.square)
    with multiprocessing.get_context(sys.argv[1]).Pool(1) as pool:
        print(pool.apply(use, (shapes.square, 3)), pool.apply(use, (shapes.square.options(timeout=9), 5)))
"""


def run_in(folder: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run this Python with ``arguments`` in ``folder``, the package importable."""
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *arguments], cwd=folder, capture_output=True, text=True, timeout=50, env=env, check=False
    )


@pytest.mark.skipif(os.name != "posix", reason="fork and forkserver are POSIX's")
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_multiprocessing_task_gets_a_parallel_function_of_a_module(tmp_path: Path, start_method: str) -> None:
    # Its ForkingPickler is pickle: the task could not be sent. A child imports the module.
    # One of the script goes as cloudpickle sends it (below), which pickle refuses.
    (tmp_path / "shapes.py").write_text(SHAPES_MODULE)
    (tmp_path / "script.py").write_text(MAIN_SCRIPT)
    result = run_in(tmp_path, "script.py", start_method)
    assert result.stdout.splitlines() == ["refused True", "(9, 9) (25, 25)"], result.stderr[-3000:]


PROCESS_SCRIPT = """\
import fractions, sys
from makeparallel import _serialization

if sys.argv[1] == "pickler first":  # the process backend's pickler made before the decorators are imported
    _serialization.dumps(fractions.Fraction(1, 3))

import makeparallel as mp

@mp.parallel
def double(x):
    return 2 * x

@mp.parallel(backend="process")
def call(fn, x):
    return fn.__wrapped__(x), fn.__name__

if __name__ == "__main__":
    print(call(double, 4).get(timeout=30), call(double.options(timeout=9), 5).get(timeout=30))
"""


@pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now")
@pytest.mark.parametrize("order", ["decorators first", "pickler first"])
def test_the_process_backend_still_sends_a_parallel_function_of_the_script_by_value(
    tmp_path: Path, order: str
) -> None:
    # Its workers never run the script: sent by its name, the function would not be found there.
    (tmp_path / "script.py").write_text(PROCESS_SCRIPT)
    result = run_in(tmp_path, "script.py", order)
    assert result.stdout.splitlines() == ["(8, 'double') (10, 'double')"], result.stderr[-3000:]


PROFILED_SCRIPT = """\
import makeparallel as mp

@mp.profiled
def square(x):
    return x * x

class Measured:
    @mp.profiled
    @classmethod
    def named(cls, x):
        return cls.__name__, x

    @staticmethod
    @mp.profiled(name="tripled")
    def triple(x):
        return 3 * x

def call_counted(fn, name, x):
    before = mp.get_metrics(name)
    result = fn(x)
    return result, mp.get_metrics(name).total_tasks - (0 if before is None else before.total_tasks)

if __name__ == "__main__":
    call = mp.parallel(backend="process")(call_counted)
    for fn, name in ((square, "square"), (Measured.named, "Measured.named"), (Measured.triple, "tripled")):
        print(call(fn, name, 4).get(timeout=30), mp.parallel(backend="process")(fn)(4).get(timeout=30))
"""


@pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now")
def test_the_process_backend_sends_a_profiled_function_of_the_script_by_value(tmp_path: Path) -> None:
    # Sent by value, as the script's functions go, the wrapper took its metrics record's
    # lock along ("cannot pickle '_thread.lock' object"): its function goes, and is profiled there.
    (tmp_path / "script.py").write_text(PROFILED_SCRIPT)
    result = run_in(tmp_path, "script.py")
    assert result.stdout.splitlines() == [
        "(16, 1) 16",
        "(('Measured', 4), 1) ('Measured', 4)",
        "(12, 1) 12",
    ], result.stderr[-3000:]


PARALLEL_OVER_PROFILED_SCRIPT = """\
import makeparallel as mp

@mp.parallel(backend="process")
@mp.profiled
def cube(x):
    return x * x * x

class Cubes:
    @mp.parallel(backend="process")
    @mp.profiled
    @classmethod
    def named(cls, x):
        return cls.__name__, x

if __name__ == "__main__":
    print(cube(3).get(timeout=30), Cubes.named(3).get(timeout=30))
    print(mp.get_metrics("cube").total_tasks, mp.get_metrics("Cubes.named").total_tasks)
"""


@pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now")
def test_the_process_backend_sends_a_parallel_function_over_a_profiled_one_of_the_script_by_value(tmp_path: Path) -> None:
    # Its task runs the function underneath, sent by value with the script's; counted once, as the task.
    (tmp_path / "script.py").write_text(PARALLEL_OVER_PROFILED_SCRIPT)
    result = run_in(tmp_path, "script.py")
    assert result.stdout.splitlines() == ["27 ('Cubes', 3)", "1 1"], result.stderr[-3000:]


SHIPPED_MODULE = """\
import makeparallel as mp

@mp.parallel(backend="sync")
def double(x):
    return 2 * x

def use(x):  # sent by value, it takes double along
    return double(x).get(timeout=30), double.options(timeout=9)(x).get(timeout=30)
"""

SHIPPING_SCRIPT = """\
import sys
import cloudpickle

sys.path.insert(0, "modules")
import shipped

cloudpickle.register_pickle_by_value(shipped)
with open("use.pickle", "wb") as file:
    file.write(cloudpickle.dumps(shipped.use))
"""


def test_a_module_cloudpickle_sends_by_value_sends_its_parallel_functions_by_value(tmp_path: Path) -> None:
    # cloudpickle.register_pickle_by_value is how a module that a cluster's workers cannot
    # import reaches them (Dask, Ray): its @parallel functions went by name, and unpickling
    # failed there with ModuleNotFoundError, where they had gone by value with the rest.
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "shipped.py").write_text(SHIPPED_MODULE)
    (tmp_path / "ship.py").write_text(SHIPPING_SCRIPT)
    shipped = run_in(tmp_path, "ship.py")
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    (tmp_path / "elsewhere").mkdir()  # where no shipped module can be imported
    loaded = run_in(
        tmp_path / "elsewhere", "-c", "import pickle; print(pickle.load(open('../use.pickle', 'rb'))(4))"
    )
    assert loaded.stdout.splitlines() == ["(8, 8)"], loaded.stderr[-3000:]


SHIPPING_MAIN_SCRIPT = """\
import cloudpickle
import makeparallel as mp

@mp.parallel(backend="sync")
def double(x):
    return 2 * x

def use(x):  # sent by value, as cloudpickle sends the script's functions, it takes double along
    return double(x).get(timeout=30), double.options(timeout=9)(x).get(timeout=30)

with open("use.pickle", "wb") as file:
    file.write(cloudpickle.dumps(use))
"""


def test_cloudpickle_sends_a_parallel_function_of_the_script_by_value(tmp_path: Path) -> None:
    # A cluster's workers (Dask's own submit, loky's under joblib) never run the script: sent
    # by its name, a parallel function of it was not found there, the worker's task or the
    # pool broken.
    (tmp_path / "script.py").write_text(SHIPPING_MAIN_SCRIPT)
    shipped = run_in(tmp_path, "script.py")
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    loaded = run_in(tmp_path, "-c", "import pickle; print(pickle.load(open('use.pickle', 'rb'))(4))")
    assert loaded.stdout.splitlines() == ["(8, 8)"], loaded.stderr[-3000:]
