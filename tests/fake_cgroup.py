"""A fake cgroup tree in a temporary folder, for the CPU-quota and memory-budget readers."""

from __future__ import annotations

from pathlib import Path


def fake_cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[str, str]:
    """Write ``files`` under ``tmp_path/cgroup`` and ``proc_line`` as ``/proc/self/cgroup``.

    Returns the root folder and the fake ``/proc/self/cgroup``, as the readers take them.
    """
    root = tmp_path / "cgroup"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_line)
    return str(root), str(proc)
