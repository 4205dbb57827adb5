"""Virtual environments for bundles with a requirements.txt: core.environments, shared with the
remote evaluator workers (which build their own); kept here for the builder's imports."""

from core.environments import (
    INSTALL_LIMITS,
    MARKER,
    PIP_SETTINGS,
    PythonEnv,
    ensure_env,
    is_ready,
    pip_environment,
    requirements_sha256,
)

__all__ = [
    "INSTALL_LIMITS",
    "MARKER",
    "PIP_SETTINGS",
    "PythonEnv",
    "ensure_env",
    "is_ready",
    "pip_environment",
    "requirements_sha256",
]
