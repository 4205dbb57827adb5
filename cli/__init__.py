"""The `weighbridge` command line: run the stack locally, upload, watch, fetch results."""

from core.version import __version__

__all__ = ["__version__"]
