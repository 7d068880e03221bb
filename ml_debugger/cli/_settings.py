"""Defaults from ``./mldbg.yaml``: precedence flag > environment > mldbg.yaml > built-in default.

The file maps option names (as in ``--batch-size`` → ``batch_size``) to values. Top-level keys
apply to every command that has the option; a section named after a command applies to that
command only::

    db: data/mldbg.duckdb
    extract:
      image_size: 28
      batch_size: 256

They become Click's ``default_map``, which sits below command-line flags and environment
variables and above the built-in defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SETTINGS_FILE = "mldbg.yaml"


def _param_names(command: Any) -> set[str]:
    return {p.name for p in command.params if p.name}


def build_default_map(root: Any, settings: dict[str, Any], source: str) -> dict[str, Any]:
    """Turn the parsed settings into a Click default_map for the command tree under ``root``."""
    from ml_debugger.errors import UsageError

    settings = {str(k).replace("-", "_"): v for k, v in settings.items()}
    commands: dict[str, Any] = dict(getattr(root, "commands", {}))

    def for_command(cmd: Any, section: dict[str, Any], path: str) -> dict[str, Any]:
        names = _param_names(cmd)
        result = {k: v for k, v in settings.items() if k in names and not isinstance(v, dict)}
        for key, value in section.items():
            key = str(key).replace("-", "_")
            subs = dict(getattr(cmd, "commands", {}))
            if isinstance(value, dict) and key in subs:
                result[key] = for_command(subs[key], value, f"{path} {key}")
            elif key in names:
                result[key] = value
            else:
                valid = sorted(names | set(subs))
                raise UsageError(f"{source}: unknown option {key!r} for `mldbg {path}`; valid: {', '.join(valid)}")
        for name, sub in getattr(cmd, "commands", {}).items():
            if name not in result:
                result[name] = for_command(sub, {}, f"{path} {name}")
        return result

    global_names = set().union(*(_param_names(c) for c in commands.values())) if commands else set()
    default_map: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            if key.replace("_", "-") not in commands and key not in commands:
                raise UsageError(f"{source}: unknown command section {key!r}; commands: {', '.join(sorted(commands))}")
        elif key not in global_names:
            raise UsageError(f"{source}: unknown option {key!r}; options: {', '.join(sorted(global_names))}")
    for name, cmd in commands.items():
        section = settings.get(name) or settings.get(name.replace("-", "_")) or {}
        default_map[name] = for_command(cmd, section, name)
    return default_map


def load_settings(root: Any, directory: Path | None = None) -> dict[str, Any] | None:
    """The default_map from ``mldbg.yaml`` in ``directory`` (the working directory), or None."""
    from ml_debugger.core.config import read_yaml

    path = (directory or Path.cwd()) / SETTINGS_FILE
    if not path.is_file():
        return None
    return build_default_map(root, read_yaml(path, SETTINGS_FILE), str(path))
