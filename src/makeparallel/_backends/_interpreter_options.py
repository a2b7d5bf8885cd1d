"""The command-line options that start a new interpreter with this one's settings: ``-O``, ``-W``, ``-X``, ``-I``...

A worker runs the program's code, so it must run it as the program does: with
``python -O`` its ``assert`` statements are gone, with ``-X utf8`` its files
open as UTF-8, with ``-W error::DeprecationWarning`` a deprecated call raises.
The template and each fresh-interpreter worker are started with these options,
as ``multiprocessing`` starts its ``spawn`` and ``forkserver`` children (the
mapping is the one ``subprocess._args_from_interpreter_flags`` makes, read
here without importing ``subprocess``, which costs a first process task about
3 ms). Options set through the environment (``PYTHONOPTIMIZE``,
``PYTHONDONTWRITEBYTECODE``...) are passed as well, which changes nothing: the
new interpreter would read them from the same environment.
"""

from __future__ import annotations

import sys

__all__ = ["interpreter_options"]

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
    for name, value in getattr(sys, "_xoptions", {}).items():
        options += ["-X", name if value is True else f"{name}={value}"]
    return options
