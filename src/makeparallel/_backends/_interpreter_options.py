"""The command line that starts a new interpreter as this one: its options (``-O``, ``-W``, ``-X``...) and ``sys.path``.

A worker runs the program's code, so it must run it as the program does: with
``python -O`` its ``assert`` statements are gone, with ``-X utf8`` its files
open as UTF-8, with ``-W error::DeprecationWarning`` a deprecated call raises.
The template and each fresh-interpreter worker are started with these options,
as ``multiprocessing`` starts its ``spawn`` and ``forkserver`` children (the
mapping is the one ``subprocess._args_from_interpreter_flags`` makes, but with
every ``-X`` option, and without importing ``subprocess``, which would cost a
first process task about 3 ms). Options set through the environment
(``PYTHONOPTIMIZE``, ``PYTHONDONTWRITEBYTECODE``...) are passed as well, which
changes nothing: the new interpreter would read them from the same environment.

``-R`` is passed too, where the program was started with it, which
``subprocess`` leaves out (since Python 3.3): with ``PYTHONHASHSEED`` set (to
0, or a seed), ``python -R`` hashes with a random secret, and a worker
without it hashed with the seed, ``hash("abc")`` the same in every run; a
program that asked for random hashes (against hash flooding by its input)
had its tasks run without them. ``sys.flags.hash_randomization`` cannot say
whether it was given (it is 1 without ``-R`` too, by default and with a seed
other than 0), and passed for it, it overrode the seed of a program that
set one: so ``-R`` is looked for on the interpreter's own command line
(:func:`_started_with_random_hashes`). A worker forked from the template
hashes with the template's secret, random too but not the program's, as
two programs started with ``-R`` do.

A ``-W`` option that names a package's warning class
(``-W ignore::numpy.exceptions.ComplexWarning``) makes the template import that
package as it starts, as the program did as it started; NumPy's BLAS then
starts in the template, before the pool's thread limits reach a worker. Where
it started threads there, the template forks no worker (``_template.serve``):
workers are fresh interpreters, which load it with the limits. Where it did
not (``OPENBLAS_NUM_THREADS=1`` in the program's environment), it keeps that
thread count in every worker forked from it.

The ``sys.path`` travels as arguments (:func:`path_arguments`), after this
package's folder (:data:`PACKAGE_FOLDER`), not in ``PYTHONPATH``, which a
worker's environment would keep: a task that ran another Python would hand it
this interpreter's folders.
"""

from __future__ import annotations

import os
import sys

# typing.TYPE_CHECKING without importing typing: the template's starter imports this on a first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["PACKAGE_FOLDER", "interpreter_options", "path_arguments", "program_arguments", "refused_start"]

#: The folder this package was imported from: a new interpreter imports it from there first,
#: the copy the program runs, wherever the program's sys.path says now (it may have removed it).
PACKAGE_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

# sys.flags read as repeatable single-letter options: -OO is optimize=2, -vv verbose=2.
_LETTERS = (
    ("optimize", "O"),
    ("dont_write_bytecode", "B"),
    ("no_site", "S"),
    ("verbose", "v"),
    ("bytes_warning", "b"),
    ("quiet", "q"),
    ("debug", "d"),
)


def interpreter_options() -> list[str]:
    """The options of ``sys.flags``, ``sys.warnoptions`` and ``sys._xoptions``, for a new interpreter's command line."""
    flags = sys.flags
    options = ["-" + letter * getattr(flags, name) for name, letter in _LETTERS if getattr(flags, name) > 0]
    if flags.isolated:
        options.append("-I")  # implies -E, -s and -P
    else:
        for name, option in (("ignore_environment", "-E"), ("no_user_site", "-s"), ("safe_path", "-P")):
            if getattr(flags, name, 0):  # safe_path: Python 3.11+
                options.append(option)
    # -b and -X dev add warning filters of their own, which they add again in the new interpreter.
    implied = {("error" if flags.bytes_warning > 1 else "default") + "::BytesWarning"} if flags.bytes_warning else set()
    if flags.dev_mode:
        implied.add("default")
    options += ["-W" + option for option in sys.warnoptions if option not in implied]
    xoptions = getattr(sys, "_xoptions", {})
    if flags.dev_mode and ("dev" in xoptions or not os.environ.get("PYTHONDEVMODE")):
        options += ["-X", "dev"]  # also where PYTHONDEVMODE set it, and the program removed it since
    for name, value in xoptions.items():
        if name != "dev":
            options += ["-X", name if value is True else f"{name}={value}"]
    if flags.hash_randomization and _started_with_random_hashes():
        options.append("-R")
    return options


def _started_with_random_hashes() -> bool:
    """Whether ``-R`` is among the options of this interpreter's command line (``sys.orig_argv``), read as the interpreter reads them.

    The options end at the first argument that is not one (the script), a
    lone ``-`` or ``--``, and with ``-c`` or ``-m`` (what follows is the
    program's); ``-W`` and ``-X`` take a value, in the same argument or the
    next, as the long option ``--check-hash-based-pycs`` does in the next.
    """
    arguments = iter(sys.orig_argv[1:])
    for argument in arguments:
        if argument == "--check-hash-based-pycs":
            next(arguments, None)
            continue
        if argument in ("-", "--") or not argument.startswith("-"):
            return False
        if argument.startswith("--"):  # --help, --version...
            continue
        for position, letter in enumerate(argument[1:], start=2):
            if letter == "R":
                return True
            if letter in "cm":
                return False
            if letter in "WX":
                if position == len(argument):  # its value is the next argument
                    next(arguments, None)
                break
    return False


def path_arguments(path: list[Any]) -> list[str]:
    """``path`` (a ``sys.path``) as a worker takes it: on its command line, one argument per entry, or in a message.

    Plain text entries only (a ``str`` subclass of ``__main__`` could not be
    unpickled there; ``bytes`` and other entries find nothing), and none with a
    NUL character, which no argument can hold and no folder name has. One
    argument per entry: joined, an entry holding ``os.pathsep`` would split,
    and a long ``sys.path`` would pass the kernel's 128 KiB limit for one
    argument (``E2BIG``).
    """
    return [str.__str__(entry) for entry in path if isinstance(entry, str) and "\0" not in entry]


def program_arguments() -> list[str]:
    """This program's ``sys.argv`` as a worker takes it on, its entries as plain text.

    A worker's own command line is the pool's (the template's, or a fresh
    interpreter's: ``-c``, descriptors, ``sys.path``), which a module reading
    ``sys.argv`` as it is imported (settings parsed with ``argparse``) would
    take for the program's, as ``multiprocessing``'s workers never do.
    """
    argv = getattr(sys, "argv", None)
    if not isinstance(argv, (list, tuple)):  # None, say, where an embedding program set it so
        return []
    return [_as_text(entry) for entry in argv]


def _as_text(entry: object) -> str:
    """An argument as plain text: ``bytes`` and paths decoded as file names, else its ``str()``, or where that raises its ``repr``."""
    if isinstance(entry, str):
        return str.__str__(entry)
    try:
        return os.fsdecode(entry)  # type: ignore[arg-type]
    except TypeError:
        pass
    try:
        return str(entry)
    except Exception:  # read in the pool's loop thread, which must not die of it
        return object.__repr__(entry)


def refused_start(error: ValueError | TypeError | OSError) -> OSError:
    """``error``, raised as a new interpreter was started with this one's command line, as a start refused.

    An embedded interpreter's ``sys.executable`` may be empty or None, and an
    entry of ``sys.path`` may hold what no command line can (a lone
    surrogate): the ``TypeError`` or ``ValueError`` killed the pool's loop
    thread, or, from the template's start, went unnoticed until its workers
    were reported killed by ``SIGKILL``. As an ``OSError`` the pool takes it
    as the system's refusal: it tries again, then fails the tasks with it.
    An ``OSError`` about the executable keeps its ``errno`` and says that it
    is ``sys.executable``: an empty one (a program started with ``exec -a``)
    was reported as ``Permission denied: ''``.
    """
    if isinstance(error, OSError):
        return OSError(error.errno, f"cannot start sys.executable ({sys.executable!r}) as a new interpreter: {error.strerror}")
    return OSError(f"cannot start {sys.executable!r} as a new interpreter: {type(error).__name__}: {error}")
