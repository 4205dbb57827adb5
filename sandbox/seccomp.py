"""The seccomp filter every sandboxed process runs under, compiled by libseccomp.

The filter allows by default and refuses, with EPERM, the system calls that let a process
leave or look past its namespaces, load kernel code, or read another process's memory
(setns, unshare, mount and the new mount API, pivot_root, chroot, ptrace,
process_vm_readv/writev, kexec_*, bpf, perf_event_open, keyctl, add_key, request_key,
init/finit/delete_module, open_by_handle_at, name_to_handle_at, userfaultfd, io_uring_*,
swapon/off, reboot, acct, quotactl). `clone` with any namespace flag is refused; `clone3`
answers ENOSYS (its flags live in memory a filter cannot read) so the C library falls back to
`clone`, which is checked. Without network, `socket` refuses every family but AF_UNIX.

libseccomp is reached through PyPI's `pyseccomp` (ctypes over the system's libseccomp2); the
compiled BPF program is what bubblewrap loads (`--seccomp FD`) and what a child of the warm
interpreter loads itself with prctl just before the handler runs.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import socket
import tempfile
from dataclasses import dataclass

DENIED = (
    "setns",
    "unshare",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "lookup_dcookie",
    "fanotify_init",
)
NAMESPACE_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)


class SeccompUnavailable(Exception):
    """libseccomp (or its Python binding) cannot be loaded here."""


@dataclass(frozen=True)
class Filter:
    """A compiled filter: the BPF program's bytes, its sha256 and what it refuses."""

    program: bytes
    network: bool
    denied: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.program).hexdigest()

    def describe(self) -> dict[str, object]:
        return {
            "sha256": self.sha256,
            "denied": list(self.denied),
            "clone_namespace_flags": "refused",
            "sockets": "any family" if self.network else "AF_UNIX only",
            "instructions": len(self.program) // 8,
        }

    def memfd(self) -> int:
        """A readable descriptor holding the program (for `bwrap --seccomp FD`)."""
        fd = os.memfd_create("weighbridge-seccomp", os.MFD_CLOEXEC)
        os.write(fd, self.program)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd


@functools.cache
def compile_filter(*, network: bool) -> Filter:
    """The filter for a job with (or without) network, compiled once per process."""
    try:
        import pyseccomp as seccomp
    except Exception as exc:  # the binding, or libseccomp under it, is missing
        raise SeccompUnavailable(f"cannot load libseccomp through pyseccomp: {exc}") from None
    refuse = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    denied = []
    for name in DENIED:
        try:
            rules.add_rule(refuse, name)
        except (OSError, ValueError, RuntimeError):
            continue  # not a system call on this architecture
        denied.append(name)
    # clone(flags, ...): refused when any namespace flag is set; libseccomp compares a masked
    # argument for equality, so "any of" takes one rule per flag.
    flag = 1
    while flag <= NAMESPACE_FLAGS:
        if NAMESPACE_FLAGS & flag:
            rules.add_rule(refuse, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        flag <<= 1
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    if not network:
        rules.add_rule(
            seccomp.ERRNO(errno.EAFNOSUPPORT),
            "socket",
            seccomp.Arg(0, seccomp.NE, socket.AF_UNIX),
        )
    with tempfile.TemporaryFile() as fh:
        rules.export_bpf(fh)
        fh.seek(0)
        program = fh.read()
    return Filter(program=program, network=network, denied=tuple(denied))
