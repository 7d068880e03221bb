"""Option declarations shared by several commands (one place, as sqlite-utils bundles them)."""

from __future__ import annotations

from typing import Annotated

import typer

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="MLDBG_DB",
        help="DuckDB file of mldbg [default: ./mldbg.duckdb].",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
