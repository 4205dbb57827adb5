"""Runs a Weighbridge benchmark's command in a SageMaker training container.

Shipped in the job's source archive as `weighbridge_launch.py` (the job's sagemaker_program),
beside the benchmark's scripts; it runs in the training image's Python, so it uses the standard
library only, in syntax an older Python (3.6) reads. SageMaker passes the job's
hyperparameters as `--name value`: `weighbridge_command` is the command (run by /bin/sh -c,
as a local run does), `weighbridge_data` maps each input channel to its path under /data, and
the others (the descriptor's custom_params.hyper_params) are appended to the command as
`--name value`, as SageMaker's script mode hands them to an entry point.
"""

import json
import os
import shlex
import subprocess
import sys


def main(argv):  # type: (list[str]) -> int
    # No annotations, no zip(strict=): training images may carry an older Python.
    args = dict(zip(argv[1::2], argv[2::2]))  # noqa: B905
    command = args["--weighbridge_command"]
    extra = [(k, v) for k, v in args.items() if not k.startswith("--weighbridge_")]
    if extra:
        command += " " + " ".join(f"{shlex.quote(k)} {shlex.quote(v)}" for k, v in extra)
    here = os.path.dirname(os.path.abspath(__file__))
    data_root = os.environ.get("WEIGHBRIDGE_DATA_PATH", "/data")
    channels = os.environ.get("SM_INPUT_DIR", "/opt/ml/input") + "/data"
    for channel, target in json.loads(args.get("--weighbridge_data", "{}")).items():
        folder = os.path.join(channels, channel)
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        if not names:
            print(f"[weighbridge] channel {channel} is empty; /data/{target} is missing")
            continue
        link = os.path.join(data_root, target)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.join(folder, names[0]), link)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    sys.stdout.flush()
    return subprocess.call(["/bin/sh", "-c", command], cwd=here, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
