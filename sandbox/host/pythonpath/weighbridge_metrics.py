"""Report benchmark metrics from inside a Weighbridge job: `emit({"accuracy": 0.9})`.

Each call prints one line on stdout, `WEIGHBRIDGE_METRIC ` followed by a JSON object of metric
names to numbers, and flushes it. The evaluator reads those lines back from the run's stdout;
several calls naming one metric make a series. Only the standard library is used, so any
interpreter the job runs can import it (the evaluator puts this folder on PYTHONPATH).
"""

from __future__ import annotations

import json
import math
import numbers
import sys

PREFIX = "WEIGHBRIDGE_METRIC "

__all__ = ["PREFIX", "emit"]


def emit(metrics):
    """Print `metrics` (a mapping of metric name to a finite number) as one metric line."""
    if not hasattr(metrics, "items"):
        raise TypeError(
            f"emit() takes a dict of metric name to number, not {type(metrics).__name__}"
        )
    line = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"emit(): metric names are non-empty strings, not {name!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"emit(): metric {name!r} must be a number, not {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"emit(): metric {name!r} is {value}; only finite numbers are kept")
        line[name] = value
    sys.stdout.write(PREFIX + json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()
