"""An evaluator in its own OS process, for the crash test (which kills it with SIGKILL).

Run as `python -m tests.evaluator.consumer_process SETTINGS_JSON`; serves the toy fleet
until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from core.context import start_services
from core.settings import Settings
from evaluator.worker import run_evaluator
from tests.evaluator.factories import FLEET


async def serve(values: dict) -> None:
    services = await start_services(Settings(**values, _env_file=None), migrate=False)
    try:
        await run_evaluator(services, [FLEET], asyncio.Event())
    finally:
        await services.close()


if __name__ == "__main__":
    asyncio.run(serve(json.loads(sys.argv[1])))
