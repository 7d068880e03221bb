"""Errors mldbg raises for user mistakes; the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class MldbgError(Exception):
    """A user-facing error: the message names the problem, the offending value and the fix."""

    exit_code = 1


class UsageError(MldbgError):
    """An option or argument has an invalid value."""

    exit_code = 2


class StoreError(MldbgError):
    """The DuckDB file cannot be opened, is locked, or has an unsupported schema."""


class DatasetError(MldbgError):
    """The dataset directory or manifest is missing, empty or malformed."""


class ModelError(MldbgError):
    """The model cannot be loaded, hooked, or returns outputs of the wrong shape."""


class RunExistsError(MldbgError):
    """A run of that name already exists and cannot be resumed as asked."""


class NotFoundError(MldbgError):
    """A named run (or other stored object) does not exist."""


class Interrupted(MldbgError):
    """The user interrupted a long job; what was finished is saved."""

    exit_code = 130
