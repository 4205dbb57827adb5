"""Runs a benchmark's command as its own child, inside the sandbox, and reports the child's
exit status and full rusage (os.wait4) to the evaluator, as Amun's job did (getrusage of its
children): the sandbox's outer process cannot, as bubblewrap's init never hands its waited-for
children's usage up.

    python -I measured.py FD -- COMMAND...

The report is one JSON object written to descriptor FD (a pipe the evaluator holds; the
command does not inherit it). The exit code is the command's, or 128 + N when signal N
killed it, as a shell reports it. Standard library only: any interpreter can run it.
"""

import json
import os
import subprocess
import sys

FIELDS = (
    "ru_utime",
    "ru_stime",
    "ru_maxrss",
    "ru_ixrss",
    "ru_idrss",
    "ru_isrss",
    "ru_minflt",
    "ru_majflt",
    "ru_nswap",
    "ru_inblock",
    "ru_oublock",
    "ru_msgsnd",
    "ru_msgrcv",
    "ru_nsignals",
    "ru_nvcsw",
    "ru_nivcsw",
)


def main(argv):
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: measured.py FD -- COMMAND...\n")
        return 2
    report = os.fdopen(int(argv[0]), "w")
    try:
        child = subprocess.Popen(argv[2:])  # close_fds: the report's pipe stays here
    except OSError as exc:
        sys.stderr.write(f"cannot start {argv[2]}: {exc}\n")
        report.write(json.dumps({"error": str(exc)}))
        report.close()
        return 127
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here
    report.write(
        json.dumps({"exit_code": child.returncode, "usage": {f: getattr(usage, f) for f in FIELDS}})
    )
    report.close()
    code = child.returncode
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
