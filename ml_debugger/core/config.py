"""Configuration files: the built-in ``configs/default.yaml`` merged with a user's ``--config``."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ml_debugger.errors import UsageError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


@cache
def _defaults() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))


def read_yaml(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Parse a YAML mapping, with one clear error for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(
            f"{what} {p}{where} is not valid YAML ({getattr(err, 'problem', err)}); fix the file"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} {p} must be a mapping of settings, not a {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The default configuration, overridden section by section by the YAML file at ``path``.

    Raises
    ------
    UsageError
        The file is missing, malformed, or names an unknown section or key.
    """
    base = {section: dict(values) for section, values in _defaults().items()}
    if path is None:
        return base
    user = read_yaml(path, "--config")
    for section, values in user.items():
        if section not in base:
            raise UsageError(f"--config {path}: unknown section {section!r}; valid sections: {', '.join(base)}")
        if not isinstance(values, dict):
            raise UsageError(f"--config {path}: section {section!r} must be a mapping of key: value")
        unknown = sorted(set(values) - set(base[section]))
        if unknown:
            raise UsageError(
                f"--config {path}: unknown key(s) {', '.join(unknown)} in {section!r}; "
                f"valid keys: {', '.join(base[section])}"
            )
        base[section].update(values)
    return base
