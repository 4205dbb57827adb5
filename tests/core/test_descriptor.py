"""Benchmark descriptors: Anubis's sample shapes validate; bad ones are refused naming the key
path, the line and what is allowed; ranges expand; local runs say what they cannot honour.

The samples are written here from the field list of Anubis's descriptor (spec_version, [info],
[hardware], [env], [ml], [[data.sources]], [[output.metrics]], [custom_params], [server]), in
the shapes of its sample benchmarks: hello-world, script mode, scheduled, single-node CPU and
GPU with data sources, horovod, SageMaker and an inference server.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from core.descriptor import (
    MAX_RANGE_CHILDREN,
    Descriptor,
    DescriptorError,
    Problem,
    apply_range,
    descriptor_schema,
    expand_ranges,
    parse_descriptor,
)
from core.errors import WeighbridgeError

HELLO_WORLD = """\
# Anubis's hello-world shape.
spec_version = "0.1.0"

[info]
description = "A hello world example: prints how long it slept."

[info.labels]
task_name = "hello-world"

[hardware]
instance_type = "t3.small"
strategy = "single_node"

[env]
docker_image = "benchmarkai/hello-world:latest"

[ml]
benchmark_code = "python3 hello-world.py"

[output]
[[output.metrics]]
name = "elapsed"
units = "ms"
pattern = 'elapsed: ([-+]?\\d*\\.\\d+|\\d+)'
"""

SCRIPT_MODE = """\
spec_version = "0.1.0"

[info]
description = "Script mode: the code travels with the descriptor."

[info.labels]
task_name = "script-mode-hello-world"

[hardware]
instance_type = "t3.small"
strategy = "single_node"

[env]
docker_image = "python:3.11-slim"

[ml]
benchmark_code = "python3 $(BAI_SCRIPTS_PATH)/src/hello.py"

[ml.script]
script = "x.tar"

[output]
[[output.metrics]]
name = "elapsed"
units = "ms"
pattern = 'elapsed: ([-+]?\\d*\\.\\d+|\\d+)'
"""

SCHEDULED = """\
spec_version = "0.1.0"

[info]
description = "Runs every five minutes."
scheduling = "*/5 * * * *"

[info.labels]
task_name = "scheduled-hello-world"

[hardware]
instance_type = "t3.small"
strategy = "single_node"

[env]
docker_image = "benchmarkai/hello-world:latest"

[ml]
benchmark_code = "python3 hello-world.py"
"""

SINGLE_NODE_CPU = """\
spec_version = "0.1.0"

[info]
description = \"\"\" \\
    Image classification on MNIST with ResNet50 on MXNet, \\
    on one CPU instance. \\
    \"\"\"

[info.labels]
task_name = "example_single-node_cpu_benchmark"
team = "frameworks"

[hardware]
instance_type = "c5.4xlarge"
strategy = "single_node"

[env]
docker_image = "benchmarkai/single-node-cpu:091219"

[ml]
benchmark_code = "python3 /home/benchmark/image_classification.py --model=resnet50_v2"
args = "--batch-size=32"
framework = "mxnet"
framework_version = "1.5.1"

[data]
[[data.sources]]
src = "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz"
path = "/data/mnist/train-images-idx3-ubyte.gz"
md5 = "f68b3c2dcbeaaa9fbdd348bbdeb94873"

[[data.sources]]
src = "s3://datasets/mnist/train-labels-idx1-ubyte.gz"
path = "/data/mnist/train-labels-idx1-ubyte.gz"
id = "mnist-labels"
md5 = "sha1:2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"

[[data.sources]]
src = "file:///srv/mnist/t10k-images-idx3-ubyte.gz"
path = "/data/mnist/t10k-images-idx3-ubyte.gz"
md5 = ""

[output]
[[output.metrics]]
name = "throughput"
units = "img/s"
pattern = 'Speed: ([-+]?\\d*\\.\\d+|\\d+) samples/sec'
"""

SINGLE_NODE_GPU = """\
spec_version = "0.1.0"

[info]
description = "ResNet50 on MNIST on four GPUs."

[info.labels]
task_name = "example_single-node_gpu_benchmark"

[hardware]
instance_type = "p3.8xlarge"
strategy = "single_node"
aws_zone_id = "use1-az2"

[env]
docker_image = "benchmarkai/single-node-gpu:091219"
extended_shm = true

[ml]
benchmark_code = "python3 /home/benchmark/image_classification.py --gpus=4"

[[data.sources]]
src = "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz"
path = "/data/mnist/train-images-idx3-ubyte.gz"
md5 = "F68B3C2DCBEAAA9FBDD348BBDEB94873"

[[data.sources]]
src = "http://yann.lecun.com/exdb/mnist/t10k-labels-idx1-ubyte.gz"
path = "/data/mnist/t10k-labels-idx1-ubyte.gz"

[[output.metrics]]
name = "throughput"
units = "img/s"
pattern = 'Speed: ([-+]?\\d*\\.\\d+|\\d+) samples/sec'
"""

HOROVOD = """\
spec_version = "0.1.0"

[info]
description = "Horovod ResNet50 synthetic benchmark over three nodes."

[info.labels]
task_name = "example_horovod_benchmark"

[hardware]
instance_type = "p3.8xlarge"
strategy = "horovod"

[hardware.distributed]
num_instances = 3
processes_per_instance = "gpus"

[env]
docker_image = "benchmarkai/horovod:0.16.0-tf1.12.0-torch1.0.0-mxnet1.4.0rc0-py3.6"
privileged = true
extended_shm = true

[env.vars]
NCCL_DEBUG = "INFO"

[ml]
benchmark_code = "python /examples/tensorflow_synthetic_benchmark.py --model ResNet50"

[[output.metrics]]
name = "throughput"
units = "img/sec"
pattern = 'Total img/sec on \\d+ GPU\\(s\\): ([-+]?\\d*\\.\\d+|\\d+)'
"""

SAGEMAKER = """\
spec_version = "0.1.0"

[info]
description = "TensorFlow on SageMaker."
execution_engine = "aws.sagemaker"

[info.labels]
task_name = "example_sagemaker_benchmark"

[hardware]
instance_type = "ml.c5.18xlarge"
strategy = "single_node"

[hardware.distributed]
num_instances = 4

[env]
docker_image = "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-training:1.15.3-cpu-py37"

[env.vars]
OMP_NUM_THREADS = "36"
KMP_AFFINITY = "granularity=fine,verbose,compact,1,0"

[ml]
benchmark_code = "python -W ignore tensorflow_synthetic_benchmark.py --model ResNet50"
framework = "tensorflow"
framework_version = "1.15.3"

[custom_params]
python_version = "py3"
sagemaker_job_name = "testJob"
region = "us-east-1"
dashboard = "test_dashboard"
merge = true

[custom_params.hyper_params]
amp = "true"
validation_frequency = 10

[[output.metrics]]
name = "throughput"
units = "img/sec"
pattern = 'images\\/sec: (\\d*.\\d+|\\d+)'
"""

INFERENCE = """\
spec_version = "0.1.0"

[info]
description = "A client measuring a model server's response time."

[info.labels]
task_name = "inference_benchmark_example"

[hardware]
instance_type = "t3.small"
strategy = "inference"

[env]
docker_image = "benchmarkai/inference_benchmark_client:c14bb5f"

[env.vars]
MODEL_NAME = "squeezenet_v1.1"

[ml]
benchmark_code = "./run_benchmark.sh"

[output]
[[output.metrics]]
name = "response_time"
units = "seconds"
pattern = 'response_time:([-+]?\\d*\\.\\d+|\\d+)'

[server]

[server.hardware]
instance_type = "c5.xlarge"

[server.env]
docker_image = "benchmarkai/mxnet-model-server:79a39b0"
start_command = "mxnet-model-server --start --model-store /models --foreground"
ports = [8080, 8081]

[server.env.readiness_probe]
path = "/ping"
port = 8080
scheme = "http"

[[server.models]]
src = "https://s3.amazonaws.com/model-server/model_archive_1.0/squeezenet_v1.1.mar"
path = "/models/squeezenet_v1.1.mar"

[server.output]
[[server.output.metrics]]
name = "Requests2XX"
units = "requests"
pattern = 'Requests2XX\\.Count:(\\d+)'
"""

# Weighbridge's own tables on top of hello-world.
OURS = """\
spec_version = "0.1.0"

[info]
description = "Matrix multiply over batch sizes and thread counts, nightly."
scheduling = "0 3 * * *"

[info.labels]
task_name = "matmul"

[hardware]
instance_type = "c5.xlarge"

[env]
docker_image = "python:3.11-slim"

[env.vars]
OMP_NUM_THREADS = "{threads}"
HOME_COPY = "${HOME}"

[environment]
base = "python:3.11"
python_packages = ["numpy>=1.26", "scipy==1.13.1; python_version >= '3.10'"]
native_packages = ["libgomp1", "libstdc++6"]

[run]
count = 3
timeout = 600

[ranges]
batch_size = [16, 32, 64]
threads = [1, 4]

[ml]
benchmark_code = "python3 matmul.py --batch {batch_size} --json '{{\\"x\\": 1}}'"
args = "--threads {threads}"

[[data.sources]]
src = "https://example.org/weights.bin"
path = "/data/weights.bin"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

[[output.metrics]]
name = "gflops"
units = "GFLOP/s"
pattern = 'gflops: (\\d+(?:\\.\\d+)?)'

[[output.metrics]]
name = "latency"
units = "ms"
pattern = 'latency: (\\d+(?:\\.\\d+)?)'

[[output.alerts]]
metric = "gflops"
worse = "lower"

[[output.alerts]]
metric = "latency"
worse = "higher"
method = "zscore"
lookback = 10
z = 2.5
min_change = 0.1
"""

SAMPLES = {
    "hello-world": HELLO_WORLD,
    "script-mode": SCRIPT_MODE,
    "scheduled": SCHEDULED,
    "single-node-cpu": SINGLE_NODE_CPU,
    "single-node-gpu": SINGLE_NODE_GPU,
    "horovod": HOROVOD,
    "sagemaker": SAGEMAKER,
    "inference": INFERENCE,
    "weighbridge-additions": OURS,
}


def refusal(text: str | bytes) -> DescriptorError:
    with pytest.raises(DescriptorError) as err:
        parse_descriptor(text, filename="bench.toml")
    return err.value


def line_number(text: str, fragment: str) -> int:
    """The 1-based line of the first line containing `fragment`."""
    for n, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return n
    raise AssertionError(f"{fragment!r} is not in the text")


def without(text: str, *fragments: str) -> str:
    """The text less every line containing one of `fragments` (each must be there)."""
    for fragment in fragments:
        line_number(text, fragment)
    return "".join(
        line for line in text.splitlines(keepends=True) if not any(f in line for f in fragments)
    )


def replaced(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# The samples.


@pytest.mark.parametrize("name", list(SAMPLES))
def test_anubis_sample_shapes_validate(name: str) -> None:
    descriptor = parse_descriptor(SAMPLES[name], filename=f"{name}.toml")
    assert isinstance(descriptor, Descriptor)
    assert descriptor.spec_version == "0.1.0"
    assert descriptor.task_name


def test_the_typed_view_reads_what_the_samples_say() -> None:
    hello = parse_descriptor(HELLO_WORLD)
    assert hello.hardware.instance_type == "t3.small"
    assert hello.ml.benchmark_code == "python3 hello-world.py"
    assert [(m.name, m.units) for m in hello.output.metrics] == [("elapsed", "ms")]
    # Absent tables read as their defaults.
    assert hello.info.scheduling == "single_run" and not hello.scheduled
    assert hello.run.count == 1 and hello.run.timeout == 3600
    assert hello.data.sources == [] and hello.server is None and hello.ranges == {}
    assert hello.env.extended_shm is True and hello.env.privileged is False

    assert parse_descriptor(SCRIPT_MODE).ml.script is not None
    assert parse_descriptor(SCHEDULED).scheduled

    cpu = parse_descriptor(SINGLE_NODE_CPU)
    assert cpu.info.description.strip().startswith("Image classification on MNIST")
    assert [s.path for s in cpu.data.sources][1] == "/data/mnist/train-labels-idx1-ubyte.gz"

    horovod = parse_descriptor(HOROVOD)
    assert horovod.hardware.distributed is not None
    assert horovod.hardware.distributed.num_instances == 3
    assert horovod.hardware.distributed.processes_per_instance == "gpus"

    sagemaker = parse_descriptor(SAGEMAKER)
    assert sagemaker.info.execution_engine == "aws.sagemaker"
    assert sagemaker.custom_params.hyper_params == {"amp": "true", "validation_frequency": 10}

    inference = parse_descriptor(INFERENCE)
    assert inference.server is not None
    assert inference.server.env.ports == [8080, 8081]
    assert inference.server.env.readiness_probe is not None
    assert inference.server.env.readiness_probe.path == "/ping"
    assert inference.server.models[0].path == "/models/squeezenet_v1.1.mar"

    ours = parse_descriptor(OURS)
    assert ours.environment.python_packages[0] == "numpy>=1.26"
    assert ours.environment.native_packages == ["libgomp1", "libstdc++6"]
    assert ours.run.count == 3 and ours.run.timeout == 600
    assert ours.ranges == {"batch_size": [16, 32, 64], "threads": [1, 4]}
    first, second = ours.output.alerts
    assert (first.method, first.lookback, first.z, first.min_change) == ("both", 20, 3.0, 0.05)
    assert (second.worse, second.method, second.lookback, second.z) == ("higher", "zscore", 10, 2.5)


def test_a_descriptor_is_frozen() -> None:
    hello = parse_descriptor(HELLO_WORLD)
    with pytest.raises(ValidationError):
        hello.hardware.instance_type = "p3.2xlarge"  # type: ignore[misc]


def test_sources_tell_the_fetcher_the_sums_the_file_must_have() -> None:
    cpu = parse_descriptor(SINGLE_NODE_CPU).data.sources
    assert cpu[0].fetch_spec().checksums() == {"md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873"}
    assert cpu[1].fetch_spec().checksums() == {"sha1": "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"}
    assert cpu[2].fetch_spec().checksums() == {}
    gpu = parse_descriptor(SINGLE_NODE_GPU).data.sources
    assert gpu[0].fetch_spec().checksums() == {"md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873"}
    ours = parse_descriptor(OURS).data.sources[0]
    assert ours.fetch_spec().checksums() == {"sha256": ours.sha256}
    assert ours.fetch_spec().src == ours.src


# The refusals: (descriptor text, key path, line fragment or None, words of the hint).

INFERENCE_WITHOUT_PROBE = without(
    INFERENCE, "[server.env.readiness_probe]", 'path = "/ping"', "port = 8080", 'scheme = "http"'
)

BAD: dict[str, tuple[str, str, str | None, str]] = {
    "missing spec_version": (
        without(HELLO_WORLD, "spec_version"),
        "spec_version",
        None,
        '"0.1.0"',
    ),
    "missing info": (
        without(HELLO_WORLD, "[info]", "description =", "[info.labels]", "task_name"),
        "info",
        None,
        "description (required)",
    ),
    "missing info.description": (
        without(HELLO_WORLD, "description ="),
        "info.description",
        "[info]",
        "what the benchmark measures",
    ),
    "missing labels.task_name": (
        replaced(HELLO_WORLD, 'task_name = "hello-world"', 'team = "x"'),
        "info.labels.task_name",
        "[info.labels]",
        "Kubernetes label value",
    ),
    "missing hardware": (
        without(HELLO_WORLD, "[hardware]", "instance_type", "strategy"),
        "hardware",
        None,
        "instance_type (required)",
    ),
    "missing hardware.instance_type": (
        without(HELLO_WORLD, "instance_type"),
        "hardware.instance_type",
        "[hardware]",
        '"t3.small"',
    ),
    "missing env": (
        without(HELLO_WORLD, "[env]", "docker_image"),
        "env",
        None,
        "docker_image (required)",
    ),
    "missing env.docker_image": (
        without(HELLO_WORLD, "docker_image"),
        "env.docker_image",
        "[env]",
        "the image the benchmark runs in",
    ),
    "metric without name": (
        without(HELLO_WORLD, 'name = "elapsed"'),
        "output.metrics[0].name",
        "[[output.metrics]]",
        'name = "throughput"',
    ),
    "metric without units": (
        without(HELLO_WORLD, 'units = "ms"'),
        "output.metrics[0].units",
        "[[output.metrics]]",
        'units = "img/s"',
    ),
    "metric without pattern": (
        without(HELLO_WORLD, "pattern ="),
        "output.metrics[0].pattern",
        "[[output.metrics]]",
        "Python regular expression",
    ),
    "output without metrics": (
        without(HELLO_WORLD, "[[output.metrics]]", "name =", "units =", "pattern ="),
        "output.metrics",
        "[output]",
        "[[output.metrics]] entries",
    ),
    "bad cron": (
        replaced(SCHEDULED, '"*/5 * * * *"', '"every five minutes"'),
        "info.scheduling",
        "scheduling",
        "5-field cron",
    ),
    "cron with six fields": (
        replaced(SCHEDULED, '"*/5 * * * *"', '"0 */5 * * * *"'),
        "info.scheduling",
        "scheduling",
        "minute hour day-of-month month day-of-week",
    ),
    "cron out of range": (
        replaced(SCHEDULED, '"*/5 * * * *"', '"61 * * * *"'),
        "info.scheduling",
        "scheduling",
        "5-field cron",
    ),
    "unknown key in a table": (
        replaced(HELLO_WORLD, 'strategy = "single_node"', 'strategy = "single_node"\ngpus = 4'),
        "hardware.gpus",
        "gpus = 4",
        "allowed in [hardware]: instance_type, strategy, aws_zone_id",
    ),
    "unknown table": (
        HELLO_WORLD + '\n[extras]\nanswer = "42"\n',
        "extras",
        "[extras]",
        "allowed in the top level: spec_version, info, hardware, env",
    ),
    "data source with uri (Anubis's README) instead of src": (
        replaced(SINGLE_NODE_GPU, 'src = "http://yann.lecun.com/exdb/mnist/train', 'uri = "x'),
        "data.sources[0].uri",
        'uri = "x',
        "allowed in [data.sources[0]]: src, path, id, md5, sha256",
    ),
    "md5 of the wrong length": (
        replaced(SINGLE_NODE_CPU, '"f68b3c2dcbeaaa9fbdd348bbdeb94873"', '"f68b3c2d"'),
        "data.sources[0].md5",
        'md5 = "f68b3c2d"',
        "32 hexadecimal digits",
    ),
    "md5 that is not hex": (
        replaced(SINGLE_NODE_CPU, 'md5 = ""', 'md5 = "not a checksum at all!!"'),
        "data.sources[2].md5",
        "not a checksum",
        "ALGORITHM:HEX",
    ),
    "sha256 of the wrong length": (
        replaced(OURS, 'sha256 = "9f86d081', 'sha256 = "9f86d08'),
        "data.sources[0].sha256",
        "sha256 =",
        "64 hexadecimal digits",
    ),
    "md5 of an algorithm the fetcher does not know": (
        replaced(
            SINGLE_NODE_CPU, '"sha1:2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"', '"crc32:1c291ca3"'
        ),
        "data.sources[1].md5",
        "crc32:1c291ca3",
        "ALGORITHM:HEX",
    ),
    "md5 of a known algorithm with the wrong length": (
        replaced(SINGLE_NODE_CPU, '"sha1:2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"', '"sha1:2fd4"'),
        "data.sources[1].md5",
        "sha1:2fd4",
        "ALGORITHM:HEX",
    ),
    "a source the fetcher cannot fetch": (
        replaced(SINGLE_NODE_CPU, 'src = "s3://datasets/', 'src = "ftp://datasets/'),
        "data.sources[1].src",
        "ftp://",
        "an http(s)://, s3:// or file:// URL",
    ),
    "a server model the fetcher cannot fetch": (
        replaced(
            INFERENCE, 'src = "https://s3.amazonaws.com/', 'src = "gopher://s3.amazonaws.com/'
        ),
        "server.models[0].src",
        "gopher://",
        "an http(s)://, s3:// or file:// URL",
    ),
    "pattern that is not a regex": (
        replaced(HELLO_WORLD, "pattern = 'elapsed: ([-+]", "pattern = 'elapsed: (([-+]"),
        "output.metrics[0].pattern",
        "pattern =",
        "single quotes",
    ),
    "pattern with two groups": (
        replaced(HELLO_WORLD, "pattern = 'elapsed: ", "pattern = '(elapsed): "),
        "output.metrics[0].pattern",
        "pattern =",
        "non-capturing",
    ),
    "inference without a server": (
        without(
            INFERENCE, "[server", "start_command", "ports", "path =", "port =", "scheme", "src ="
        )
        .replace('instance_type = "c5.xlarge"\n', "")
        .replace('docker_image = "benchmarkai/mxnet-model-server:79a39b0"\n', "")
        .replace(
            'name = "Requests2XX"\nunits = "requests"\npattern = \'Requests2XX\\.Count:(\\d+)\'\n',
            "",
        ),
        "hardware.strategy",
        'strategy = "inference"',
        "[server.env.readiness_probe] path",
    ),
    "inference server without ports": (
        without(INFERENCE, "ports = [8080, 8081]"),
        "server.env.ports",
        "[server.env]",
        "ports = [8080, 8081]",
    ),
    "inference server without a start command": (
        without(INFERENCE, "start_command ="),
        "server.env.start_command",
        "[server.env]",
        "the command that starts the server",
    ),
    "inference server probe without a path": (
        without(INFERENCE, 'path = "/ping"'),
        "server.env.readiness_probe.path",
        "[server.env.readiness_probe]",
        'path = "/ping"',
    ),
    "inference server without a probe": (
        INFERENCE_WITHOUT_PROBE,
        "server.env.readiness_probe",
        "[server.env]",
        "[server.env.readiness_probe]",
    ),
    "alert naming an unknown metric": (
        replaced(OURS, 'metric = "gflops"', 'metric = "gflop"'),
        "output.alerts[0].metric",
        'metric = "gflop"',
        "metrics defined: gflops, latency",
    ),
    "alert without a direction": (
        without(OURS, 'worse = "lower"'),
        "output.alerts[0].worse",
        "[[output.alerts]]",
        '"higher" (e.g. a latency) or "lower"',
    ),
    "a lookback too short for a standard deviation": (
        replaced(OURS, "lookback = 10", "lookback = 4"),
        "output.alerts[1].lookback",
        "lookback = 4",
        "from 5 to 1000",
    ),
    "a threshold that is not a number": (
        replaced(OURS, "z = 2.5", "z = nan"),
        "output.alerts[1].z",
        "z = nan",
        "a number such as 2.5",
    ),
    "an infinite threshold": (
        replaced(OURS, "min_change = 0.1", "min_change = inf"),
        "output.alerts[1].min_change",
        "min_change = inf",
        "a number such as 2.5",
    ),
    "too many range combinations": (
        replaced(
            OURS,
            "threads = [1, 4]",
            "threads = [1, 4]\nseed = [" + ", ".join(str(i) for i in range(43)) + "]",
        ),
        "ranges",
        "[ranges]",
        "shorten a list",
    ),
    "placeholder naming no range": (
        replaced(OURS, "--threads {threads}", "--threads {thread}"),
        "ml.args",
        "args =",
        "ranges defined: batch_size, threads",
    ),
    "empty range": (
        replaced(OURS, "threads = [1, 4]", "threads = []"),
        "ranges.threads",
        "threads = []",
        "non-empty list",
    ),
    "range with a bad name": (
        replaced(OURS, "threads = [1, 4]", '"2threads" = [1, 4]'),
        "ranges.2threads",
        '"2threads"',
        "a letter or '_'",
    ),
    "packages and a requirements file": (
        replaced(OURS, 'base = "python:3.11"', 'base = "python:3.11"\nrequirements = "r.txt"'),
        "environment.requirements",
        'requirements = "r.txt"',
        "python_packages or requirements, not both",
    ),
    "a pip option as a package": (
        replaced(OURS, '"numpy>=1.26"', '"--index-url=http://evil.example"'),
        "environment.python_packages[0]",
        "python_packages =",
        "pip options",
    ),
    "a package that is not a requirement": (
        replaced(OURS, '"numpy>=1.26"', '"numpy=1.26"'),
        "environment.python_packages[0]",
        "python_packages =",
        '"numpy>=1.26"',
    ),
    "a requirements file outside the scripts": (
        replaced(OURS, "python_packages = [", 'requirements = "../secret.txt"\n# ['),
        "environment.requirements",
        "../secret.txt",
        "no '..'",
    ),
    "run count of 0": (
        replaced(OURS, "count = 3", "count = 0"),
        "run.count",
        "count = 0",
        "from 1 to 1000",
    ),
    "timeout past a day": (
        replaced(OURS, "timeout = 600", "timeout = 86401"),
        "run.timeout",
        "timeout = 86401",
        "from 1 to 86400",
    ),
    "num_instances as a string": (
        replaced(HOROVOD, "num_instances = 3", 'num_instances = "3"'),
        "hardware.distributed.num_instances",
        "num_instances",
        "an integer of 2 or more",
    ),
    "a bad strategy": (
        replaced(HELLO_WORLD, 'strategy = "single_node"', 'strategy = "multi_node"'),
        "hardware.strategy",
        "strategy =",
        '"single_node" (the default), "horovod" or "inference"',
    ),
    "too many labels": (
        replaced(
            HELLO_WORLD,
            'task_name = "hello-world"',
            'task_name = "hello-world"\n' + "".join(f'l{i} = "v"\n' for i in range(10)),
        ),
        "info.labels",
        "[info.labels]",
        "at most 10 labels",
    ),
    "a label value Kubernetes refuses": (
        replaced(HELLO_WORLD, 'task_name = "hello-world"', 'task_name = "hello world!"'),
        "info.labels.task_name",
        "task_name",
        "Kubernetes label value",
    ),
    "a numeric env var": (
        replaced(HOROVOD, 'NCCL_DEBUG = "INFO"', "OMP_NUM_THREADS = 4"),
        "env.vars.OMP_NUM_THREADS",
        "OMP_NUM_THREADS",
        "quote numbers",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_descriptors_are_refused_naming_path_line_and_hint(case: str) -> None:
    text, path, line_fragment, hint = BAD[case]
    error = refusal(text)
    problems = {p.path: p for p in error.problems}
    assert path in problems, f"{case}: {[str(p) for p in error.problems]}"
    problem = problems[path]
    expected_line = line_number(text, line_fragment) if line_fragment else None
    assert problem.line == expected_line, str(problem)
    assert hint in problem.hint or hint in problem.message, str(problem)
    # The error's message lists the problem where a person reads it.
    assert f"{path}: " in error.message and "bench.toml" in error.message


def test_a_missing_table_is_named_as_a_table() -> None:
    problem = refusal(without(HELLO_WORLD, "[env]", "docker_image")).problems[0]
    assert problem.message == "the [env] table is missing"


def test_a_toml_syntax_error_gives_line_and_column() -> None:
    text = replaced(HELLO_WORLD, 'instance_type = "t3.small"', "instance_type = t3.small")
    [problem] = refusal(text).problems
    assert problem.line == line_number(text, "instance_type")
    assert problem.column == len("instance_type = ") + 1
    assert problem.message.startswith("not valid TOML: Invalid value")
    assert "strings need quotes" in problem.hint


def test_a_table_declared_twice_is_a_syntax_error_with_a_hint() -> None:
    text = HELLO_WORLD + '\n[hardware]\ninstance_type = "t3.large"\n'
    [problem] = refusal(text).problems
    assert problem.line == line_number(text, "t3.large") - 1
    assert "[[name]]" in problem.hint


def test_bytes_that_are_not_utf8_are_refused_with_their_line() -> None:
    text = HELLO_WORLD.encode() + b"\n# caf\xe9\n"
    [problem] = refusal(text).problems
    assert problem.line == HELLO_WORLD.count("\n") + 2
    assert "UTF-8" in problem.message


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    text = replaced(
        replaced(HELLO_WORLD, 'strategy = "single_node"', 'strategy = "single_node"\ngpus = 1'),
        'units = "ms"',
        "",
    )
    text = without(text, "docker_image")
    error = refusal(text)
    assert [p.path for p in error.problems] == [
        "hardware.gpus",
        "env.docker_image",
        "output.metrics[0].units",
    ]
    assert [p.line for p in error.problems] == sorted(p.line or 0 for p in error.problems)


def test_the_error_is_a_weighbridge_error_rendered_with_its_problems() -> None:
    error = refusal(without(HELLO_WORLD, "instance_type"))
    assert isinstance(error, WeighbridgeError)
    assert error.status == 422 and error.field == "hardware.instance_type"
    body = error.to_dict()["error"]
    assert body["code"] == "invalid_descriptor" and body["file"] == "bench.toml"
    assert (
        body["problems"][0]
        == Problem(
            path="hardware.instance_type",
            line=line_number(HELLO_WORLD, "[hardware]"),
            message="required key 'instance_type' is missing in [hardware]",
            hint=error.problems[0].hint,
        ).model_dump()
    )


def test_anubis_braces_without_ranges_are_left_as_written() -> None:
    text = replaced(HELLO_WORLD, "python3 hello-world.py", "python3 -c 'print({x})'")
    assert parse_descriptor(text).ml.benchmark_code == "python3 -c 'print({x})'"


# Ranges.


def test_ranges_expand_to_the_cross_product_in_a_stable_order() -> None:
    ours = parse_descriptor(OURS)
    assert expand_ranges(ours) == [
        {"batch_size": 16, "threads": 1},
        {"batch_size": 16, "threads": 4},
        {"batch_size": 32, "threads": 1},
        {"batch_size": 32, "threads": 4},
        {"batch_size": 64, "threads": 1},
        {"batch_size": 64, "threads": 4},
    ]
    assert expand_ranges(parse_descriptor(HELLO_WORLD)) == []


def test_the_largest_family_allowed_expands() -> None:
    values = ", ".join(str(i) for i in range(MAX_RANGE_CHILDREN // 2))
    text = replaced(OURS, "batch_size = [16, 32, 64]", f"batch_size = [{values}]")
    assert len(expand_ranges(parse_descriptor(text))) == MAX_RANGE_CHILDREN


def test_a_child_has_its_values_in_the_placeholders_and_no_ranges() -> None:
    ours = parse_descriptor(OURS)
    child = apply_range(ours, {"batch_size": 32, "threads": 4})
    assert child.ml.benchmark_code == ("python3 matmul.py --batch 32 --json '{{\"x\": 1}}'")
    assert child.ml.args == "--threads 4"
    assert child.env.vars == {"OMP_NUM_THREADS": "4", "HOME_COPY": "${HOME}"}
    assert child.ranges == {} and expand_ranges(child) == []
    # The parent is unchanged (descriptors are values).
    assert ours.ml.args == "--threads {threads}"


def test_range_values_are_written_as_toml_spells_them() -> None:
    text = replaced(OURS, "threads = [1, 4]", 'threads = [true, 0.5, "x y"]')
    ours = parse_descriptor(text)
    args = [apply_range(ours, values).ml.args for values in expand_ranges(ours)[:3]]
    assert args == ["--threads true", "--threads 0.5", "--threads x y"]


def test_a_child_of_values_the_ranges_do_not_list_is_refused() -> None:
    ours = parse_descriptor(OURS)
    with pytest.raises(DescriptorError) as err:
        apply_range(ours, {"batch_size": 8, "cores": 2})
    messages = sorted(p.message for p in err.value.problems)
    assert messages == [
        "'cores' is not a range of this descriptor",
        "8 is not one of range 'batch_size''s values",
        "no value given for range 'threads'",
    ]
    with pytest.raises(DescriptorError):
        apply_range(ours, {"batch_size": True, "threads": 1})  # True is not 1 here


# Local runs.


def warnings_of(text: str, **kwargs: Any) -> str:
    return "\n".join(parse_descriptor(text).local_warnings(**kwargs))


def test_hello_world_warns_only_about_the_image_without_docker() -> None:
    warnings = parse_descriptor(HELLO_WORLD).local_warnings()
    assert len(warnings) == 1 and warnings[0].startswith("env.docker_image = ")
    assert parse_descriptor(HELLO_WORLD).local_warnings(docker=True) == []


def test_what_a_local_run_cannot_honour_is_named() -> None:
    horovod = warnings_of(HOROVOD, docker=True)
    assert "hardware.strategy = 'horovod'" in horovod
    assert "hardware.distributed" in horovod
    assert "env.privileged" in horovod and "env.extended_shm" in horovod
    assert "hardware.instance_type = 'p3.8xlarge'" in horovod

    gpu = warnings_of(SINGLE_NODE_GPU, docker=True)
    assert "hardware.aws_zone_id = 'use1-az2'" in gpu
    assert "which has no GPU" in gpu
    assert "this machine's 4 GPU(s)" in warnings_of(SINGLE_NODE_GPU, docker=True, gpus=4)

    sagemaker = warnings_of(SAGEMAKER, docker=True)
    assert 'info.execution_engine = "aws.sagemaker"' in sagemaker
    assert "custom_params" in sagemaker and "hardware.distributed" in sagemaker
    assert "hardware.instance_type" not in sagemaker  # a CPU instance
    # Where the evaluators run aws.sagemaker descriptors as training jobs, none of that applies.
    on_sagemaker = warnings_of(SAGEMAKER, sagemaker=True)
    assert "execution_engine" not in on_sagemaker and "custom_params" not in on_sagemaker
    assert "env.docker_image" not in on_sagemaker and "hardware.distributed" not in on_sagemaker
    # A descriptor for the default engine still runs locally there, with its warnings.
    assert "env.docker_image" in warnings_of(HELLO_WORLD, sagemaker=True)

    assert "hardware.strategy = 'inference'" in warnings_of(INFERENCE, docker=True)


# The schema and the typed view say the same thing.


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not ref:
        return schema
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in schema.items() if k != "$ref"}}


def _unwrap_optional(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is list:
        return "array"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "object"
    if origin is typing.Literal:
        return "string"
    return _JSON_TYPES[annotation]


def _walk(schema: dict[str, Any], model: type[BaseModel], where: str, root: dict) -> int:
    """Compare one table; returns how many keys were compared."""
    schema = _resolve(schema, root)
    properties = schema["properties"]
    fields = model.model_fields
    assert set(properties) == set(fields), f"{where}: schema {set(properties)} vs model"
    required = {name for name, field in fields.items() if field.is_required()}
    assert required == set(schema.get("required", [])), f"{where}: required keys differ"
    compared = 0
    for name, field in fields.items():
        sub = _resolve(properties[name], root)
        annotation = _unwrap_optional(field.annotation)
        at = f"{where}.{name}" if where else name
        assert sub.get("type") == _json_type(annotation), f"{at}: types differ"
        if "default" in sub:
            assert field.get_default(call_default_factory=True) == sub["default"], at
        if "enum" in sub:
            assert set(typing.get_args(annotation)) == set(sub["enum"]), f"{at}: values differ"
        compared += 1
        item = annotation
        if typing.get_origin(annotation) is list:
            (item,) = typing.get_args(annotation)
            sub = _resolve(sub["items"], root)
        if isinstance(item, type) and issubclass(item, BaseModel):
            compared += _walk(sub, item, at, root)
        elif sub.get("additionalProperties", True) is False:
            raise AssertionError(f"{at}: a closed table in the schema, a {item} in the model")
    return compared


def test_the_schema_and_the_model_have_the_same_tables_keys_and_defaults() -> None:
    schema = descriptor_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert _walk(schema, Descriptor, "", schema) > 90


def test_the_schema_alone_refuses_what_anubis_refuses() -> None:
    """Tools that only have the served schema (editors) see the same structural rules."""
    import tomllib

    validator = jsonschema.Draft202012Validator(descriptor_schema())
    assert not list(validator.iter_errors(tomllib.loads(HELLO_WORLD)))
    missing = tomllib.loads(without(HELLO_WORLD, "[hardware]", "instance_type", "strategy"))
    assert [e.message for e in validator.iter_errors(missing)] == [
        "'hardware' is a required property"
    ]
