"""The base class of every error the package raises on purpose (pure: imports nothing of the package)."""

from __future__ import annotations


class S2OError(Exception):
    """An error of s2o-platform with a message meant for the user, not a bug.

    The `s2o` command line catches it in one place (cli.py's command group, for every command): it prints
    `error: <message>` in red on stderr, no traceback, and exits with the class's `exit_code`. Each concrete
    class also keeps its historical builtin base (ValueError, RuntimeError), so `except ValueError` still
    catches it.
    """

    #: The `s2o` exit code: 2, a user error (bad input, options, config, a missing store or bundle);
    #: 1, a run that was well asked for but failed (e.g. a demo stage).
    exit_code: int = 2


class SettingsError(S2OError, ValueError):
    """Settings that cannot work together, checked where one config field alone cannot say it (e.g. split
    fractions that leave nothing to train on), or a library caller's value the CLI's config would refuse."""
