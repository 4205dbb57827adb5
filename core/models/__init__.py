"""Every table, imported in one place so metadata and migrations see them all."""

from core.models.base import SQLModel, new_id, table_of, utcnow
from core.models.benchmarks import (
    BenchmarkAlert,
    BenchmarkAlertState,
    BenchmarkPoint,
    BenchmarkRun,
    BenchmarkSeries,
    Schedule,
    ScheduleTick,
)
from core.models.fetches import DataFetch
from core.models.leaderboards import Leaderboard, LeaderboardEntry
from core.models.notifications import Notification
from core.models.queue import OutboxMessage, QueueMessage
from core.models.submissions import Event, Run, Score, Submission
from core.models.tasks import Dataset, Task
from core.models.users import ApiToken, User
from core.models.workers import RemoteJob, WorkerToken

__all__ = [
    "ApiToken",
    "BenchmarkAlert",
    "BenchmarkAlertState",
    "BenchmarkPoint",
    "BenchmarkRun",
    "BenchmarkSeries",
    "DataFetch",
    "Dataset",
    "Event",
    "Leaderboard",
    "LeaderboardEntry",
    "Notification",
    "OutboxMessage",
    "QueueMessage",
    "RemoteJob",
    "Run",
    "SQLModel",
    "Schedule",
    "ScheduleTick",
    "Score",
    "Submission",
    "Task",
    "User",
    "WorkerToken",
    "new_id",
    "table_of",
    "utcnow",
]
