"""The scheduler role: cron ticks of periodic benchmarks, their histories and regression alerts.

`run_scheduler` is the loop `weighbridge up` and `weighbridge serve scheduler` run: it submits
each scheduled benchmark's children at every cron tick (scheduler.ticks) and records every
done benchmark in its history, judging it for regressions (scheduler.histories). Any number
of schedulers may run at once: unique keys make each tick and each recording happen once.
"""

from scheduler.loop import run_scheduler

__all__ = ["run_scheduler"]
