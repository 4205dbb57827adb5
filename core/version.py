"""The package version, stamped on every event and answered by /api/v1/ping."""

__version__ = "0.1.0"
