"""The jail itself: what it binds, who runs inside, what it refuses, and how it says so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import jail as jail_module
from sandbox import rootfs
from sandbox.jail import UNSAFE, Job, Limits, SandboxUnavailable, probe, signalled
from sandbox.rootfs import Mount, device_nodes, interpreter_roots
from sandbox.seccomp import compile_filter


def run_in(job: Job, code: str) -> subprocess.CompletedProcess[str]:
    """`python -I -c code` in a cell for `job`."""
    with probe().cell(job) as cell:
        return subprocess.run(
            cell.command([job.python, "-I", "-c", code]),
            pass_fds=cell.pass_fds,
            preexec_fn=cell.preexec,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def test_gpu_device_nodes_are_found_and_bound(tmp_path: Path, monkeypatch) -> None:
    for name in ("nvidiactl", "nvidia0", "nvidia1", "nvidia-uvm", "null", "nvidia-caps"):
        (tmp_path / name).touch()
    found = device_nodes(tmp_path)
    assert sorted(Path(p).name for p in found) == [
        "nvidia-uvm",
        "nvidia0",
        "nvidia1",
        "nvidiactl",
    ]
    devices = ["/dev/nvidiactl", "/dev/nvidia0"]
    monkeypatch.setattr(rootfs, "gpu_devices", lambda: devices)
    monkeypatch.setattr(jail_module, "gpu_devices", lambda: devices)
    args = rootfs.root_filesystem(sys.executable, mounts=(), network=False, scratch_mb=64)
    binds = [args[i + 1] for i, a in enumerate(args) if a == "--dev-bind"]
    assert binds == ["/dev/nvidiactl", "/dev/nvidia0"]
    # With a device, CUDA's address-space reservations rule out RLIMIT_AS.
    import resource

    assert resource.RLIMIT_AS not in Limits().rlimits(per_uid=True)


def test_no_gpu_means_no_device_binds(tmp_path: Path) -> None:
    assert device_nodes(tmp_path) == []


def test_interpreter_roots_are_the_outermost_folders() -> None:
    roots = interpreter_roots(sys.executable)
    assert "/" not in roots and "/usr" not in roots
    for a in roots:
        assert not [b for b in roots if b != a and a.startswith(b + "/")]
    assert any(os.path.realpath(sys.executable).startswith(r + "/") for r in roots)


def test_bubblewrap_reports_a_signal_as_128_plus_n() -> None:
    assert signalled(137) == -9 and signalled(139) == -11
    assert signalled(0) == 0 and signalled(3) == 3 and signalled(None) is None


def test_without_bubblewrap_the_sandbox_refuses_in_one_sentence(monkeypatch) -> None:
    jail_module.reset_probe()
    monkeypatch.setattr(jail_module.shutil, "which", lambda name: None)
    try:
        with pytest.raises(SandboxUnavailable) as caught:
            probe("bwrap")
    finally:
        jail_module.reset_probe()
    message = str(caught.value)
    assert "bubblewrap is not installed" in message
    assert "apt-get install bubblewrap" in message and "\n" not in message


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(SandboxUnavailable, match="WEIGHBRIDGE_SANDBOX"):
        probe("docker")


def test_the_unsafe_mode_says_so_everywhere() -> None:
    jail = probe(UNSAFE)
    assert not jail.isolated
    with jail.cell(Job(python=sys.executable)) as cell:
        assert cell.command(["python", "-c", "1"]) == ["python", "-c", "1"]
        assert "UNSAFE" in cell.describe()["warning"]


def test_inside_it_is_another_user_with_no_capabilities_and_a_filter() -> None:
    code = (
        "import os, json; s = open('/proc/self/status').read();"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),"
        "'caps': [l for l in s.splitlines() if l.startswith(('Cap', 'NoNewPrivs', 'Seccomp'))],"
        "'root': sorted(os.listdir('/')), 'procs': [p for p in os.listdir('/proc') if p.isdigit()],"
        "'env': dict(os.environ), 'hostname': os.uname().nodename}))"
    )
    import json

    run = run_in(Job(python=sys.executable), code)
    assert run.returncode == 0, run.stderr
    me = json.loads(run.stdout)
    assert me["uid"] >= 424_200 and me["gid"] == me["uid"] and me["groups"] in ([], [me["gid"]])
    caps = dict(line.split(":\t") for line in me["caps"])
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == "0000000000000000"
    assert caps["NoNewPrivs"] == "1" and caps["Seccomp"] == "2"
    assert "home" not in me["root"] and "var" not in me["root"] and "srv" not in me["root"]
    assert sorted(me["procs"]) == ["1", "2"]  # bubblewrap's init and this process only
    assert not [k for k in me["env"] if k.startswith(("WEIGHBRIDGE", "AWS", "PG", "MYSQL"))]
    assert me["env"]["HOME"] == "/scratch" and me["hostname"] == "sandbox"


def test_two_cells_alive_at_once_have_different_users() -> None:
    jail = probe()
    with jail.cell(Job(python=sys.executable)) as one, jail.cell(Job(python=sys.executable)) as two:
        assert one.uid != two.uid
        held = one.uid
    with jail.cell(Job(python=sys.executable)) as again:
        assert again.uid == held  # given back when the first closed


def test_mounts_are_read_only_unless_asked(tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    os.chmod(rw, 0o777)
    code = (
        "import os\n"
        "for p in ('/model/x', '/out/y', '/usr/z', '/z'):\n"
        "    try:\n"
        "        open(p, 'w').write('1'); print(p, 'written')\n"
        "    except OSError as e:\n"
        "        print(p, e.errno)\n"
    )
    job = Job(
        python=sys.executable,
        mounts=(Mount(str(ro), "/model"), Mount(str(rw), "/out", writable=True)),
    )
    run = run_in(job, code)
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert lines["/out/y"] == "written" and (rw / "y").read_text() == "1"
    assert lines["/model/x"] == "30"  # EROFS
    assert lines["/usr/z"] == "30"
    assert lines["/z"] in ("13", "30")  # the root is not writable by the sandbox's user
    assert not (ro / "x").exists()


def test_the_scratch_is_bounded(tmp_path: Path) -> None:
    code = (
        "import errno\n"
        "try:\n"
        "    with open('/scratch/fill', 'wb') as fh:\n"
        "        for _ in range(200): fh.write(b'x' * (1 << 20))\n"
        "    print('no limit')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
    )
    run = run_in(Job(python=sys.executable, limits=Limits(scratch_mb=16, file_mb=512)), code)
    assert run.stdout.strip() == "ENOSPC", run.stderr


def test_network_jobs_may_open_inet_sockets_and_others_may_not() -> None:
    code = "import socket; socket.socket(socket.AF_INET); print('inet ok')"
    assert run_in(Job(python=sys.executable, network=True), code).stdout.strip() == "inet ok"
    refused = run_in(Job(python=sys.executable), code)
    assert refused.returncode != 0 and "Address family not supported" in refused.stderr


def test_the_filter_names_what_it_refuses() -> None:
    strict = compile_filter(network=False).describe()
    loose = compile_filter(network=True).describe()
    for name in ("setns", "unshare", "mount", "ptrace", "process_vm_readv", "bpf", "keyctl"):
        assert name in strict["denied"]
    assert strict["sockets"] == "AF_UNIX only" and loose["sockets"] == "any family"
    assert strict["sha256"] != loose["sha256"]


def test_a_listener_on_the_host_hears_nothing() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "for family in (socket.AF_INET, socket.AF_INET6):\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {port}), timeout=1); print('reached')\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
    )
    run = run_in(Job(python=sys.executable), code)
    assert "reached" not in run.stdout
    with pytest.raises(TimeoutError):
        server.accept()
    server.close()


def test_empty_groups_left_behind_are_swept_later() -> None:
    from sandbox import cgroups

    group = cgroups.Cgroup.create(cgroups.CgroupLimits(memory_mb=64, pids=8))
    if not group.active:
        pytest.skip("no writable cgroup controller here")
    old = 0.0
    for folder in group.dirs.values():
        os.utime(folder, (old, old))
    cgroups._swept_at[0] = 0.0
    assert cgroups.sweep_stale(now=cgroups.STALE_SECONDS + 10) >= len(group.dirs)
    assert not [d for d in group.dirs.values() if d.exists()]
    fresh = cgroups.Cgroup.create(cgroups.CgroupLimits(memory_mb=64, pids=8))
    try:
        cgroups._swept_at[0] = 0.0
        cgroups.sweep_stale()  # a group just made is never touched
        assert all(d.exists() for d in fresh.dirs.values())
    finally:
        fresh.close()


def links(args: list[str]) -> dict[str, str]:
    """bubblewrap's `--symlink TARGET LINK` options, as {link: target}."""
    return {args[i + 2]: args[i + 1] for i, a in enumerate(args) if a == "--symlink"}


def test_a_checkout_below_tmp_keeps_tmp_a_folder(monkeypatch) -> None:
    # CI may clone the project (and its .venv) into /tmp: /tmp then holds mount points and
    # cannot also be the link into /scratch, for exec'd workers and the warm interpreter.
    monkeypatch.setattr(rootfs, "interpreter_roots", lambda python: ["/tmp/ci/.venv"])
    monkeypatch.setattr(jail_module, "interpreter_roots", lambda python: ["/tmp/ci/.venv"])
    args = rootfs.root_filesystem(
        "/tmp/ci/.venv/bin/python", mounts=(), network=False, scratch_mb=64
    )
    assert "/tmp" not in links(args)
    assert "/tmp" in [args[i + 1] for i, a in enumerate(args) if a == "--dir"]
    command, fds = jail_module.zygote_command(probe(), "/tmp/ci/.venv/bin/python", ["python"])
    for fd in fds:
        os.close(fd)
    assert "/tmp" not in links(command)
    # Elsewhere /tmp is the link into the scratch.
    monkeypatch.setattr(rootfs, "interpreter_roots", lambda python: ["/opt/venv"])
    args = rootfs.root_filesystem("/opt/venv/bin/python", mounts=(), network=False, scratch_mb=64)
    assert links(args)["/tmp"] == "/scratch/tmp"
