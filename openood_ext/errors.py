"""User-facing errors.

Every error a user can cause (bad config, unknown name, missing file, bad data) is raised as a
subclass of :class:`OpenOODError`. The command line prints such errors as a single line on stderr
and exits with status 2; anything else is a bug and keeps its traceback.
"""


class OpenOODError(Exception):
    """An error caused by the user's input; its message is one self-contained line."""

    exit_code = 2


class ConfigError(OpenOODError):
    """Malformed, missing or inconsistent configuration."""


class RegistryError(OpenOODError, LookupError):
    """Unknown or duplicate name in a registry."""

    def __str__(self):  # LookupError would quote the message like a KeyError; keep it plain
        return str(self.args[0]) if self.args else ""


class PluginError(OpenOODError):
    """A plugin module or entry point failed to import."""


class DataError(OpenOODError):
    """Missing, unreadable or malformed data (images, image lists, score arrays)."""


class CheckpointError(OpenOODError):
    """Missing, corrupt or incompatible checkpoint."""
