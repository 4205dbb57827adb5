"""The task configs shipped with Weighbridge: one TOML file per task, found from any folder.

This folder is the default of WEIGHBRIDGE_TASK_CONFIGS; point the variable at a folder of
your own to serve other tasks.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
