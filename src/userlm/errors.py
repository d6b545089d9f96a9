"""Errors a user can cause.

Everything the command line turns into one clear sentence and a non-zero exit code derives
from :class:`UserError`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input or the options, explained in one sentence."""


class ConfigurationError(UserError):
    """A setting that cannot work for the whole run (abort instead of failing every conversation)."""
