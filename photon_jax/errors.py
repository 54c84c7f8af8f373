"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (config, CLI argument, data file, checkpoint)."""

    exit_code = 2


class ConfigError(UserError):
    """A config value or key is invalid."""


class CorpusError(UserError):
    """The corpus itself is bad (a line that is not JSON, bytes that are not UTF-8, a corrupt stream, a
    missing text column, no text at all): rerunning on the same files fails the same way, so a prepare
    that hits one keeps nothing (unlike an I/O error, after which finished work is kept for the rerun)."""
