"""The root filesystem a sandboxed process sees, as bubblewrap options, and the host folders
it is made of: the interpreter's, the model's (made readable to the sandbox's user), the jobs
folder the warm interpreter has in view, and the GPU's device nodes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sandbox.jobs import jobs_root

MODEL = "/model"
JOBS = "/jobs"
SCRATCH = "/scratch"
OUT = "/out"
HOST_FILES = "/run/weighbridge"
HOST_SOURCE = Path(__file__).parent / "host"
MiB = 1 << 20
# Read-only pieces of /etc a Python process needs (shared libraries, time zone, certificates);
# the whole of /etc only where the job installs packages (pip reads its configuration there).
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf", "/etc/alternatives")
NETWORK_ETC = ("/etc",)
NETWORK_EXTRA = ("/opt",)  # local package indexes and wheel folders named in pip's config


@dataclass(frozen=True)
class Mount:
    """A host path bound into the sandbox (read-only unless `writable`)."""

    source: str
    target: str
    writable: bool = False


def gpu_devices() -> list[str]:
    """The NVIDIA device nodes present (bound into the sandbox when there are any)."""
    return device_nodes(Path("/dev"))


def device_nodes(dev: Path) -> list[str]:
    names = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
    found = [str(dev / n) for n in names if (dev / n).exists()]
    with contextlib.suppress(OSError):
        found += sorted(
            str(p) for p in dev.iterdir() if p.name.startswith("nvidia") and p.name[6:].isdigit()
        )
    if (dev / "dxg").exists():
        found.append(str(dev / "dxg"))
    return found


def interpreter_roots(python: str) -> list[str]:
    """The folders an interpreter needs: its own prefix, its virtualenv (and the evaluator's,
    whose site-packages a build environment adds through a .pth file)."""
    roots = {sys.base_prefix, sys.prefix}
    path = Path(python)
    venv = path.parent.parent
    if (venv / "pyvenv.cfg").is_file():
        roots.add(str(venv))
        with contextlib.suppress(OSError):
            for line in (venv / "pyvenv.cfg").read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "home" and value.strip():
                    roots.add(str(Path(value.strip()).parent))
    real = Path(os.path.realpath(python))
    roots.add(str(real.parent.parent))
    roots.add(os.path.abspath(path.parent))  # the interpreter's own folder, wherever it is
    # Keep the outermost folders only, and never a bare / or /usr (bound anyway).
    kept: list[str] = []
    for root in sorted({os.path.realpath(r) for r in roots} | roots, key=len):
        if root in ("/", "/usr") or any(root == k or root.startswith(k + "/") for k in kept):
            continue
        kept.append(root)
    return kept


def _readable_by_all(folder: Path) -> bool:
    for root, dirs, files in os.walk(folder):
        for name in [root, *(os.path.join(root, d) for d in dirs)]:
            if os.stat(name).st_mode & 0o005 != 0o005:
                return False
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path) and os.stat(path).st_mode & 0o004 == 0:
                return False
    return True


def _open_up(folder: Path) -> None:
    """o+r on files, o+rx on folders (the sandbox's user is nobody's owner or group)."""
    for root, dirs, files in os.walk(folder):
        os.chmod(root, os.stat(root).st_mode | 0o755)
        for name in dirs:
            path = os.path.join(root, name)
            os.chmod(path, os.stat(path).st_mode | 0o755)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)


def readable_view(folder: Path) -> tuple[Path, Path | None]:
    """A folder the sandbox's unprivileged user can read, with the contents of `folder`:
    `folder` itself when it already is readable by all or lies in the jobs folder (its
    permissions are opened up there: the jobs folder is ours), else a copy in the jobs folder
    (a user's own 0700 folder for `weighbridge test`: their permissions are left alone).
    Returns (the folder, the copy to remove afterwards or None)."""
    if os.geteuid() != 0 or _readable_by_all(folder):
        return folder, None
    root = os.path.realpath(jobs_root())
    if os.path.realpath(folder).startswith(root + "/"):
        _open_up(folder)
        return folder, None
    copy = Path(tempfile.mkdtemp(prefix="view-", dir=root))
    target = copy / "model"
    shutil.copytree(folder, target, symlinks=True)
    _open_up(copy)
    return target, copy


def _bind_args(source: str, target: str, *, writable: bool = False, optional=False) -> list[str]:
    kind = "--bind" if writable else "--ro-bind"
    return [kind + ("-try" if optional else ""), source, target]


def _parents(targets: Iterable[str]) -> list[str]:
    """`--dir` for every folder above a mount point, mode 0755: bubblewrap would otherwise
    make them 0700, which the sandbox's unprivileged user cannot cross."""
    made: set[str] = {"/"}
    args: list[str] = []
    for target in targets:
        for parent in reversed(Path(target).parents):
            name = str(parent)
            if name not in made:
                made.add(name)
                args += ["--perms", "0755", "--dir", name]
    return args


def base_filesystem(python: str, *, network: bool, targets: Iterable[str] = ()) -> list[str]:
    """/usr and friends, /etc's few files, the interpreter, the host modules, /proc, /dev."""
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = Path("/") / name
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    for path in NETWORK_ETC if network else ETC_FILES:
        args += _bind_args(path, path, optional=True)
    if network:
        for path in NETWORK_EXTRA:
            args += _bind_args(path, path, optional=True)
    roots = interpreter_roots(python)
    args += _parents([*roots, HOST_FILES, *targets])
    for root in roots:
        args += ["--ro-bind", root, root]
    args += ["--ro-bind", str(HOST_SOURCE), HOST_FILES]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for device in gpu_devices():
        args += ["--dev-bind", device, device]
    return args


def root_filesystem(
    python: str, *, mounts: Sequence[Mount], network: bool, scratch_mb: int
) -> list[str]:
    """The base, size-limited tmpfs at /scratch (and /tmp in it) and /dev/shm, the mounts."""
    args = base_filesystem(python, network=network, targets=[m.target for m in mounts])
    size = str(scratch_mb * MiB)
    args += ["--perms", "1777", "--size", size, "--tmpfs", SCRATCH]
    args += ["--perms", "1777", "--dir", f"{SCRATCH}/tmp"]
    # A /dev/shm of its own (POSIX semaphores and shared memory: multiprocessing, DataLoader
    # workers); its pages count against the cell's memory cgroup.
    args += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
    args += tmp_link([*interpreter_roots(python), *(m.target for m in mounts)])
    for mount in mounts:
        args += _bind_args(mount.source, mount.target, writable=mount.writable)
    return args


def tmp_link(targets: Iterable[str]) -> list[str]:
    """/tmp as a link into /scratch, unless something is mounted below /tmp (an interpreter
    or a project checked out there): then /tmp is a plain read-only folder, and TMPDIR still
    points into /scratch."""
    if any(t == "/tmp" or t.startswith("/tmp/") for t in targets):
        return []
    return ["--symlink", f"{SCRATCH}/tmp", "/tmp"]
