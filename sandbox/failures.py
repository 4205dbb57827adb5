"""How a handler worker can fail, and the reasons a person reads for each.

`SandboxLimits` are the limits a worker runs under; `SandboxError` is every way it can fail
(its `kind` for programs, its `reason` for people); the functions turn the worker's error
replies into those errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sandbox.jail import Limits

MiB = 1 << 20


@dataclass(frozen=True)
class SandboxLimits:
    """Wall-clock seconds for initialisation and for each batch; resident memory in MB.

    The address-space limit (RLIMIT_AS) is `memory_mb + address_space_slack_mb`: libraries
    reserve address space they never touch (importing torch maps ~700 MB), so the resident
    memory watch enforces `memory_mb` and RLIMIT_AS stops a runaway allocation at once.
    """

    timeout_seconds: float
    memory_mb: int
    address_space_slack_mb: int = 1024
    poll_seconds: float = 0.05
    scratch_mb: int = 512
    pids: int = 512
    output_mb: int = 64  # the handler's log (stdout + stderr); RLIMIT_FSIZE enforces it

    def kernel(self) -> Limits:
        """The kernel's share: cgroup memory a little above the watched limit (the watch gives
        the reason; the cgroup is the backstop), RLIMIT_AS with the slack for reservations."""
        return Limits(
            memory_mb=self.memory_mb + 256,
            address_space_mb=self.memory_mb + self.address_space_slack_mb,
            pids=self.pids,
            file_mb=self.output_mb,
            scratch_mb=self.scratch_mb,
        )


class SandboxError(Exception):
    """The worker failed; `kind` says how, `reason` says it to a person, `detail` holds data.

    Kinds: init, handler, timeout, memory, violation (file / network / exec), not_json,
    not_list, died, protocol.
    """

    def __init__(self, kind: str, reason: str, **detail: Any) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.detail = detail


def memory_error(limits: SandboxLimits, where: str, *, watched: int | None) -> SandboxError:
    """The worker went over its memory: `watched` (bytes seen by the evaluator's watch), or
    None when the kernel refused an allocation."""
    limit = limits.memory_mb
    if watched is not None:
        reason = (
            f"{where}: the handler used {watched / MiB:.0f} MB of memory, over the limit "
            f"of {limit} MB (eval.memory_mb: the memory its processes allocated, watched by "
            "the evaluator); it was stopped"
        )
        which = "rss"
    else:
        space = limit + limits.address_space_slack_mb
        reason = (
            f"{where}: the handler ran out of memory under the limit of {limit} MB "
            f"(eval.memory_mb; address-space limit RLIMIT_AS {space} MB)"
        )
        which = "rlimit_as"
    return SandboxError("memory", reason, limit_mb=limit, which=which)


def failure_of(reply: dict[str, Any], where: str, limits: SandboxLimits) -> SandboxError:
    """The SandboxError for the worker's error reply, with a reason a person can act on."""
    kind = reply.get("error", "protocol")
    message = reply.get("message", "")
    at = f" ({reply['where']})" if reply.get("where") else ""
    if kind == "memory":
        error = memory_error(limits, where, watched=None)
        error.detail["message"] = message
        return error
    if kind == "violation":
        return violation_of(reply, where)
    if "File too large" in message:
        return SandboxError(
            "output",
            f"{where}: the handler wrote more than {limits.output_mb} MB of output "
            "(the limit on its log); print less",
            limit_mb=limits.output_mb,
        )
    if kind == "init":
        return SandboxError(
            "init",
            f"the handler failed to initialise: {message}{at}",
            traceback=reply.get("traceback", ""),
        )
    if kind == "handler" and "Address family not supported" in message:
        return SandboxError(
            "violation",
            f"{where}: the handler tried to use the network ({message}{at}); evaluation "
            "runs without network access, so a model must carry everything it needs",
            violation="network",
            target=message,
        )
    if kind == "handler":
        return SandboxError(
            "handler",
            f"{where}: the handler raised {message}{at}",
            traceback=reply.get("traceback", ""),
        )
    if kind == "not_json":
        index = reply.get("index")
        return SandboxError(
            "not_json",
            f"{where}: answer {index} is not JSON-serialisable ({message}): "
            f"{reply.get('answer', '')}",
            index=index,
        )
    if kind == "not_list":
        return SandboxError(
            "not_list", f"{where}: {message}: {reply.get('answer', '')}", answer=reply
        )
    return SandboxError("protocol", f"{where}: {message or 'the worker misbehaved'}")


def violation_of(reply: dict[str, Any], where: str) -> SandboxError:
    """The reason for what the worker's audit hook refused."""
    kind, detail = reply.get("kind"), reply.get("detail", "")
    if kind == "network":
        reason = (
            f"{where}: the handler tried to use the network ({detail}); evaluation runs "
            "without network access, so a model must carry everything it needs"
        )
    elif kind == "signal":
        reason = f"{where}: the handler tried to signal a process that is not its own ({detail})"
    else:
        reason = (
            f"{where}: the handler tried to start a program ({detail}); evaluation allows "
            "no other programs"
        )
    return SandboxError("violation", reason, violation=kind, target=detail)
