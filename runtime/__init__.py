"""threadline's assembly: ``open_runtime()``, configuration, stores, the CLI."""

from .api import Runtime, RuntimeConfig, ThreadHandle, UserHandle, open_runtime

__all__ = ["Runtime", "RuntimeConfig", "ThreadHandle", "UserHandle", "open_runtime"]
