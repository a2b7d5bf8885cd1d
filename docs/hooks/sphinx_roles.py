"""A griffe extension: the docstrings' Sphinx roles become links on the site.

The library's docstrings name other objects the way Sphinx and most Python
readers expect (:func:`gather`, :class:`AsyncHandle`). mkdocstrings would print
those roles literally; this extension turns each one into a cross-reference to
the public object of that name (``makeparallel.gather``), or into plain code when
the name is not public (a private helper, a method named by itself), so that
``mkdocs build --strict`` never meets a reference it cannot resolve.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

import makeparallel

_ROLE = re.compile(r":(?:func|class|meth|data|attr|exc|mod|obj):`~?([\w.]+)`")
_PUBLIC = set(makeparallel.__all__)


def _rewrite(match: re.Match[str]) -> str:
    target = match.group(1).removeprefix("makeparallel.")
    if target in _PUBLIC:
        return f"[`{target}`][makeparallel.{target}]"
    return f"`{target.rsplit('.', 1)[-1]}`"


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_rewrite, obj.docstring.value)
