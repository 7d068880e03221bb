"""Option declarations shared by several commands (one place, as sqlite-utils bundles them)."""

from __future__ import annotations

from typing import Annotated, Any

import typer


def opt(*param_decls: str, **kwargs: Any) -> Any:
    """``typer.Option`` without the per-option env-var line in --help.

    Every option can still be set as ``MLDBG_<COMMAND>_<OPTION>`` (the root help says so); only
    ``--db``'s variable is listed, because it is the one people set.
    """
    return typer.Option(*param_decls, show_envvar=False, **kwargs)


DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="MLDBG_DB",
        help="DuckDB file of mldbg (default: ./mldbg.duckdb).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, opt("--json", help="Print machine-readable JSON on stdout.")]
