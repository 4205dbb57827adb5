"""One run of a benchmark's command in the sandbox: its output, usage, samples and metrics.

The command runs as one sandboxed process tree (`sandbox.jail`: bubblewrap, the cell's own
uid, seccomp, no network, cgroup and rlimit limits, /scratch as cwd). What is kept of it:

- `log` (stdout and stderr interleaved as they arrive), `stdout` and `stderr`, each bounded:
  the first part and the last part are kept, and a line in between says how much was not;
- the command's full rusage from `os.wait4` (every `ru_*` field, Amun's names), taken inside
  the sandbox by sandbox/host/measured.py, the command's parent there: the waited-for
  processes' usage adds up in their parents, so it covers the command's whole tree (bubblewrap's
  own wait4 does not: its init never hands that usage up). A run killed before the wrapper
  could report (timeout, cancel) keeps bubblewrap's figures, marked `usage_of: outer`;
- exit code (negative: killed by that signal), timeout (killed past `run.timeout`), OOM (the
  cell's memory cgroup killed it), start and end as ISO 8601 UTC;
- CPU % and resident memory of the process tree every `SAMPLE_SECONDS` (psutil), with the peak
  and the mean;
- the metrics: every `[[output.metrics]]` pattern over the log (`re.findall`, group 1 when the
  pattern has groups), and every `emit()` line on stdout (`WEIGHBRIDGE_METRIC {json}`, see
  sandbox/host/pythonpath/weighbridge_metrics.py). Emit lines are left out of the text the
  patterns see, so a value is never counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from core.descriptor import Metric
from core.inspection_results import RUSAGE_FIELDS
from sandbox.jail import Cell, Jail, Job, host_file, signalled
from sandbox.rootfs import gpu_devices

SAMPLE_SECONDS = 0.5
STOP_CHECK_SECONDS = 0.5
READ_BYTES = 1 << 16
HEAD_BYTES = 8 << 20  # of each captured stream kept from its start
TAIL_BYTES = 4 << 20  # and from its end
DRAIN_SECONDS = 5.0  # output still arriving after the process ended (a stray holder of a pipe)
MAX_SAMPLES = 7200  # one hour at two a second; later samples thin out (every other kept)
EMIT_PREFIX = "WEIGHBRIDGE_METRIC "
MEASURED = "measured.py"

StopCheck = Callable[[], Awaitable[bool]]
SampleSink = Callable[[dict[str, Any]], Awaitable[None]]
# How often a running run's newest sample is handed on (stored on its row for /metrics).
LIVE_SECONDS = 2.0


class BoundedCapture:
    """A captured stream on disk: its first `head` bytes, then its last `tail` bytes, with a
    line saying how many in between were dropped."""

    def __init__(self, path: Path, *, head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> None:
        self.path = path
        self.head = head
        self.tail = tail
        self.written = 0
        self.total = 0
        self._tail = bytearray()
        self._file: IO[bytes] = path.open("wb")

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head - self.written
        if room > 0:
            self._file.write(data[:room])
            self.written += min(room, len(data))
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > self.tail:
                del self._tail[: len(self._tail) - self.tail]

    @property
    def dropped(self) -> int:
        return self.total - self.written - len(self._tail)

    def close(self) -> None:
        if self.dropped:
            self._file.write(f"\n[... {self.dropped} bytes not kept ...]\n".encode())
        self._file.write(bytes(self._tail))
        self._file.close()


@dataclass
class RunOutcome:
    """What one run did (the metrics are read from its files afterwards)."""

    n: int
    exit_code: int | None
    timed_out: bool
    oom: bool
    cancelled: bool
    start: dt.datetime
    end: dt.datetime
    usage: dict[str, float | int]
    usage_of: str  # "sandbox": the command's own (measured.py); "outer": bubblewrap's
    samples: list[dict[str, float | int]]
    log_path: Path
    stdout_path: Path
    stderr_path: Path
    dropped: dict[str, int] = field(default_factory=dict)
    sandbox: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.oom and not self.cancelled

    def peak(self) -> dict[str, Any]:
        cpu = [float(s["cpu_percent"]) for s in self.samples[1:]]  # the first has no interval
        busy = float(self.usage.get("ru_utime", 0.0)) + float(self.usage.get("ru_stime", 0.0))
        return {
            "rss_bytes": max((int(s["rss_bytes"]) for s in self.samples), default=0),
            "cpu_percent": max(cpu, default=0.0),
            "mean_cpu_percent": round(sum(cpu) / len(cpu), 2) if cpu else 0.0,
            # Over the whole run, from the kernel's accounting (exact, unlike the samples).
            "cpu_percent_rusage": round(100 * busy / self.seconds, 2) if self.seconds else 0.0,
            "processes": max((int(s["processes"]) for s in self.samples), default=0),
            "n_samples": len(self.samples),
            **_gpu_peak(self.samples),
        }

    def failure(self, timeout: float) -> str | None:
        """Why the run failed, in a few words (None: it succeeded)."""
        if self.cancelled:
            return "stopped: the submission was cancelled"
        if self.timed_out:
            return f"timed out after {timeout:g} s (run.timeout) and was killed"
        if self.oom:
            return "was killed at the sandbox's memory limit (out of memory)"
        if self.exit_code is None:
            return "ended without an exit status"
        if self.exit_code < 0:
            return f"was killed by {_signal_name(-self.exit_code)}"
        if self.exit_code != 0:
            return f"exited with code {self.exit_code}"
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def usage_of(rusage: Any) -> dict[str, float | int]:
    """Every ru_* field (times in seconds, ru_maxrss in KiB as Linux reports it)."""
    return {name: getattr(rusage, name) for name in RUSAGE_FIELDS}


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class _Execution:
    """The process and its three helpers: wait4 (here), the reader and the sampler threads."""

    def __init__(self, cell: Cell, argv: list[str], folder: Path, *, timeout: float) -> None:
        self.cell = cell
        self.argv = argv
        self.folder = folder
        self.timeout = timeout
        self.stop = threading.Event()
        self.ended = threading.Event()
        self.timed_out = False
        self.cancelled = False
        self.samples: list[dict[str, float | int]] = []
        self.log = BoundedCapture(folder / "log")
        self.out = BoundedCapture(folder / "stdout")
        self.err = BoundedCapture(folder / "stderr")

    def run(self, n: int, *, cwd: Path, env: dict[str, str] | None) -> RunOutcome:
        # The measuring wrapper (sandbox/host/measured.py) waits for the command inside the
        # sandbox and writes its status and rusage to this pipe.
        report_r, report_w = os.pipe()
        wrapper = [self.cell.job.python, "-I", host_file(MEASURED, self.cell.jail)]
        command = self.cell.command([*wrapper, str(report_w), "--", *self.argv])
        started = time.time()
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(cwd),
                env=env if env is not None else {},
                start_new_session=True,
                pass_fds=(*self.cell.pass_fds, report_w),
                preexec_fn=self.cell.preexec,
            )
        except OSError:
            for capture in (self.log, self.out, self.err):
                capture.close()
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
        assert proc.stdout is not None and proc.stderr is not None
        reader = threading.Thread(target=self._read, args=(proc,), name=f"run-{n}-output")
        sampler = threading.Thread(target=self._sample, args=(proc, started), name=f"run-{n}-cpu")
        reader.start()
        sampler.start()
        status: int | None = None
        rusage: Any = None
        try:
            _, status, rusage = os.wait4(proc.pid, 0)
        finally:
            ended = time.time()
            self.ended.set()
            # Reaped here (Popen must not wait for it again): the status, as Popen gives it.
            proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else None
            self._kill(proc)
            sampler.join()
            reader.join()
            for capture in (self.log, self.out, self.err):
                capture.close()
            report = _read_report(report_r)
        exit_code = signalled(proc.returncode)
        usage = usage_of(rusage)
        measured = "sandbox"
        if isinstance(report.get("usage"), dict) and isinstance(report.get("exit_code"), int):
            exit_code = report["exit_code"]
            usage = {f: report["usage"].get(f, 0) for f in RUSAGE_FIELDS}
        else:
            measured = "outer"  # killed before the wrapper could report: bubblewrap's own
        return RunOutcome(
            n=n,
            exit_code=exit_code,
            timed_out=self.timed_out,
            oom=self.cell.oom_killed(),
            cancelled=self.cancelled,
            start=_utc(started),
            end=_utc(ended),
            usage=usage,
            usage_of=measured,
            samples=self.samples,
            log_path=self.log.path,
            stdout_path=self.out.path,
            stderr_path=self.err.path,
            dropped={
                "log": self.log.dropped,
                "stdout": self.out.dropped,
                "stderr": self.err.dropped,
            },
        )

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        # bubblewrap's sandbox dies with it (--die-with-parent: its PID namespace's init goes,
        # and everything in the namespace with it); without a sandbox, the process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ, self.out)
        selector.register(proc.stderr, selectors.EVENT_READ, self.err)
        drain_until: float | None = None
        try:
            while selector.get_map():
                if self.ended.is_set():
                    drain_until = drain_until or time.monotonic() + DRAIN_SECONDS
                    if time.monotonic() > drain_until:
                        break  # something outside the sandbox kept a pipe open: stop here
                for key, _ in selector.select(timeout=0.2):
                    data = os.read(key.fd, READ_BYTES)
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    key.data.write(data)
                    self.log.write(data)
        finally:
            selector.close()
            proc.stdout.close()
            proc.stderr.close()

    @functools.cached_property
    def gpus(self) -> bool:
        """GPUs to watch: device nodes here and nvidia-smi to ask."""
        return bool(gpu_devices()) and shutil.which("nvidia-smi") is not None

    def _sample(self, proc: subprocess.Popen[bytes], started: float) -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            root = None
        last_cpu: float | None = None
        last_at = time.monotonic()
        while not self.ended.wait(SAMPLE_SECONDS if self.samples else 0.05):
            now = time.time()
            if now - started > self.timeout and not self.timed_out:
                self.timed_out = True
                self._kill(proc)
            if self.stop.is_set() and not self.cancelled:
                self.cancelled = True
                self._kill(proc)
            if root is None:
                continue
            tree = _tree(root)
            cpu, rss = 0.0, 0
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    cpu += times.user + times.system
                    rss += process.memory_info().rss
            at = time.monotonic()
            percent = 0.0
            if last_cpu is not None and at > last_at:
                percent = max(0.0, 100 * (cpu - last_cpu) / (at - last_at))
            last_cpu, last_at = cpu, at
            sample: dict[str, Any] = {
                "t": round(now - started, 3),
                "cpu_percent": round(percent, 1),
                "rss_bytes": rss,
                "processes": len(tree),
            }
            if self.gpus and len(self.samples) % GPU_EVERY == 0:
                sample["gpus"] = gpu_utilisation()
            self.samples.append(sample)
            if len(self.samples) > MAX_SAMPLES:
                self.samples[:] = self.samples[::2]


def _read_report(fd: int) -> dict[str, Any]:
    """The wrapper's report (its writers are gone: the sandbox ended), {} when there is none."""
    os.set_blocking(fd, False)
    data = b""
    try:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(fd, READ_BYTES):
                data += chunk
                if len(data) > READ_BYTES:
                    return {}
    finally:
        os.close(fd)
    try:
        report = json.loads(data)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def _tree(process: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [process, *process.children(recursive=True)]
    return [process]


async def run_command(
    jail: Jail,
    job: Job,
    argv: list[str],
    *,
    n: int,
    folder: Path,
    scratch: Path,
    seconds: float,
    should_stop: StopCheck | None = None,
    on_sample: SampleSink | None = None,
) -> RunOutcome:
    """Run `argv` once in a new cell of `jail`; its files go to `folder`; it is killed
    past `seconds`. A True from `should_stop` (asked every half second) kills it and marks
    the outcome cancelled. `on_sample` is given the newest CPU/memory sample of the process
    tree every `LIVE_SECONDS` while it runs (for /metrics)."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    cell = await asyncio.to_thread(jail.cell, job)
    try:
        execution = _Execution(cell, argv, folder, timeout=seconds)
        env = None if jail.isolated else cell.env()
        work = asyncio.ensure_future(asyncio.to_thread(execution.run, n, cwd=scratch, env=env))
        told_at = time.monotonic()
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=STOP_CHECK_SECONDS)
                if done:
                    break
                if should_stop is not None and await should_stop():
                    execution.stop.set()
                if (
                    on_sample is not None
                    and execution.samples
                    and time.monotonic() - told_at >= LIVE_SECONDS
                ):
                    told_at = time.monotonic()
                    await on_sample(latest_sample(execution.samples))
        finally:
            if not work.done():  # this task was cancelled (the worker stops): kill, then wait
                execution.stop.set()
                await asyncio.shield(asyncio.gather(work, return_exceptions=True))
        outcome = work.result()
        outcome.sandbox = cell.describe()
        return outcome
    finally:
        await asyncio.to_thread(cell.close)


# -- GPUs ------------------------------------------------------------------------------------

GPU_EVERY = 4  # samples between two GPU readings (nvidia-smi takes tens of milliseconds)
NVIDIA_QUERY = "index,utilization.gpu,memory.used,memory.total"


def gpu_utilisation() -> list[dict[str, Any]]:
    """Each GPU's utilisation and memory in use, as nvidia-smi reports them (device-wide: the
    run's cell is what uses the devices bound into it); [] when it cannot tell."""
    try:
        answer = subprocess.run(
            ["nvidia-smi", f"--query-gpu={NVIDIA_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(answer.stdout) if answer.returncode == 0 else []


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """`index, utilization %, memory used MiB, memory total MiB` lines, as numbers; a field
    nvidia-smi reports as `[N/A]` (or anything else not a number) is None."""

    def number(raw: str) -> float | None:
        try:
            return float(raw.strip())
        except ValueError:
            return None

    gpus = []
    for line in text.strip().splitlines():
        parts = line.split(",")
        if len(parts) != 4 or number(parts[0]) is None:
            continue
        index, percent, used, total = (number(p) for p in parts)
        gpus.append(
            {
                "index": int(index or 0),
                "utilization_percent": percent,
                "memory_used_bytes": int(used * 2**20) if used is not None else None,
                "memory_total_bytes": int(total * 2**20) if total is not None else None,
            }
        )
    return gpus


def latest_sample(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest sample, with the newest GPU reading (taken every few samples) in it."""
    latest = dict(samples[-1])
    if "gpus" not in latest:
        reading = next((s["gpus"] for s in reversed(samples[-GPU_EVERY:]) if "gpus" in s), None)
        if reading is not None:
            latest["gpus"] = reading
    return latest


def _gpu_peak(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The busiest and fullest any GPU was in the run (nothing without GPU readings)."""
    readings = [g for s in samples for g in s.get("gpus") or []]
    if not readings:
        return {}
    percent = [g["utilization_percent"] for g in readings if g["utilization_percent"] is not None]
    used = [g["memory_used_bytes"] for g in readings if g["memory_used_bytes"] is not None]
    return {
        "gpu_percent": max(percent, default=None),
        "gpu_memory_used_bytes": max(used, default=None),
    }


# -- metrics --------------------------------------------------------------------------------


@dataclass
class Extracted:
    """The metric series of one run and what could not be read."""

    series: dict[str, list[float]]
    warnings: list[str]


def split_emitted(stdout: str) -> tuple[list[tuple[int, str]], list[str]]:
    """(line number, JSON text) of each emit() line, and the stdout lines that are not."""
    emitted: list[tuple[int, str]] = []
    rest: list[str] = []
    for number, line in enumerate(stdout.splitlines(), start=1):
        if line.startswith(EMIT_PREFIX):
            emitted.append((number, line[len(EMIT_PREFIX) :]))
        else:
            rest.append(line)
    return emitted, rest


def extract_metrics(metrics: Sequence[Metric], *, log: str, stdout: str) -> Extracted:
    """Each declared metric's pattern over the log (emit lines left out), then each emit()
    line; a value that is not a finite number is a warning, never a failure."""
    series: dict[str, list[float]] = {m.name: [] for m in metrics}
    warnings: list[str] = []
    emitted, _ = split_emitted(stdout)
    text = "\n".join(line for line in log.splitlines() if not line.startswith(EMIT_PREFIX))
    for metric in metrics:
        pattern = re.compile(metric.pattern)
        for found in pattern.findall(text):
            raw = found[0] if isinstance(found, tuple) else found
            value = _number(raw)
            if value is None:
                warnings.append(
                    f"metric {metric.name}: pattern matched {raw!r}, which is not a number; "
                    "make the pattern's first group match the number alone"
                )
                continue
            series[metric.name].append(value)
    for number, body in emitted:
        try:
            values = json.loads(body)
        except ValueError:
            warnings.append(f"stdout line {number}: an emit() line that is not JSON: {body[:80]}")
            continue
        if not isinstance(values, dict):
            warnings.append(f"stdout line {number}: an emit() line that is not a JSON object")
            continue
        for name, raw_value in values.items():
            value = _number(raw_value)
            if value is None or not isinstance(name, str) or not name:
                warnings.append(f"stdout line {number}: emit() value {name}={raw_value!r} kept out")
                continue
            series.setdefault(name, []).append(value)
    return Extracted(series=series, warnings=warnings)


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
