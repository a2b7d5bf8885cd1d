"""The usable CPU count honours affinity and the cgroup CPU quota, read from a fake cgroup tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from makeparallel._cpus import cgroup_cpu_quota, usable_cpus
from fake_cgroup import fake_cgroup


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_v2_quota_is_read_from_the_process_own_cgroup(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "0::/app/web\n", {"app/web/cpu.max": "150000 100000\n"})
    assert cgroup_cpu_quota(root, proc) == 1.5


def test_the_tightest_ancestor_quota_wins(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path,
        "0::/app/web\n",
        {"app/web/cpu.max": "max 100000\n", "app/cpu.max": "100000 100000\n", "cpu.max": "400000 100000\n"},
    )
    assert cgroup_cpu_quota(root, proc) == 1.0


def test_v1_quota_and_minus_one_as_none(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path,
        "4:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/docker/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_quota(root, proc) == 0.5


def test_no_quota_anywhere_is_none(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None
    assert cgroup_cpu_quota(str(tmp_path / "absent"), str(tmp_path / "absent-proc")) is None


def test_usable_cpus_rounds_a_quota_up_and_caps_affinity(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "50000 100000\n"})
    result = usable_cpus(root, proc)
    assert result.cpus == 1
    assert result.source == ("cgroup quota" if affinity() > 1 else "affinity")


def test_a_quota_above_the_affinity_leaves_the_affinity(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": f"{(affinity() + 3) * 100000} 100000\n"})
    assert usable_cpus(root, proc) == (affinity(), "affinity")


@pytest.mark.parametrize("text", ["garbage\n", "100000 0\n"])
def test_unreadable_quota_is_ignored(tmp_path: Path, text: str) -> None:
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": text})
    assert cgroup_cpu_quota(root, proc) is None


def test_a_cgroup_named_with_bytes_that_are_not_utf8_is_read(tmp_path: Path) -> None:
    # A cgroup's name is bytes; decoded as os.fsdecode does, it opens its folder again.
    folder = os.path.join(os.fsencode(tmp_path / "cgroup"), b"caf\xe9.scope")
    os.makedirs(folder)
    with open(os.path.join(folder, b"cpu.max"), "wb") as file:
        file.write(b"150000 100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_bytes(b"0::/caf\xe9.scope\n")
    assert cgroup_cpu_quota(str(tmp_path / "cgroup"), str(proc)) == 1.5


def test_a_cgroup_named_in_utf8_is_read_in_an_ascii_locale(tmp_path: Path) -> None:
    # Where the file system's encoding is ASCII, the name still opens its folder.
    folder = tmp_path / "cgroup" / "café.scope"
    folder.mkdir(parents=True)
    (folder / "cpu.max").write_text("150000 100000\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_bytes("0::/café.scope\n".encode())
    program = (
        "import sys; from makeparallel._cpus import cgroup_cpu_quota; "
        f"print(sys.getfilesystemencoding(), cgroup_cpu_quota({str(tmp_path / 'cgroup')!r}, {str(proc)!r}))"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    completed = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=25, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["ascii", "1.5"]
