"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (config, CLI argument, data file, checkpoint)."""

    exit_code = 2


class ConfigError(UserError):
    """A config value or key is invalid."""
