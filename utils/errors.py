"""Errors the toolkit raises for problems a user can fix.

Every command-line entry turns a :class:`ToolkitError` into one line on stderr and exit code 2
(see :func:`utils.cli.run`). The message names the problem and the fix.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""

    exit_code = 2


class ConfigError(ToolkitError):
    """An invalid option or combination of options."""


class DataError(ToolkitError):
    """A dataset, CSV or audio file that cannot be used."""


class BaseModelError(ToolkitError):
    """Missing or broken XTTS base-model files."""


class LanguageError(ToolkitError):
    """A language the toolkit cannot handle as asked."""
