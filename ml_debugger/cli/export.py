"""``mldbg export``: write a selection as a manifest for labelers (and copy its images)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ml_debugger.cli._console import err, out, print_json, user_errors
from ml_debugger.cli._options import DbOption, JsonOption, opt


class Format(str, Enum):
    csv = "csv"
    json = "json"
    jsonl = "jsonl"
    labelstudio = "labelstudio"
    coco = "coco"
    kitti = "kitti"


def export_command(
    selection: Annotated[
        str | None, typer.Argument(help="Selection id, e.g. sel-3 (default: the newest).", show_default=False)
    ] = None,
    format: Annotated[Format, opt("--format", "-f", help="Manifest format.")] = Format.csv,
    out_path: Annotated[
        str | None,
        opt("--out", "-o", help="Manifest file, or - for stdout (kitti: a folder of .txt files).", show_default=False),
    ] = None,
    url_prefix: Annotated[
        str | None,
        opt(help="labelstudio: data.image = PREFIX + sample_id (e.g. /data/local-files/?d=).", show_default=False),
    ] = None,
    copy_to: Annotated[
        Path | None, opt(help="Also copy the images here, keeping relative paths.", show_default=False)
    ] = None,
    link: Annotated[bool, opt(help="With --copy-to: symlink instead of copying.")] = False,
    force: Annotated[bool, opt(help="With --copy-to or --format kitti: allow a non-empty folder.")] = False,
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Export a selection for labelers: csv, json, jsonl, Label Studio tasks, COCO (2D
    detection) or KITTI prediction files (3D detection, one .txt per frame).

    The file is written whole or not at all (a temporary file renamed into place).

    Example: mldbg export sel-3 --format labelstudio --out tasks.json
    """
    with user_errors():
        from ml_debugger.core.export import export

        summary = export(
            selection, db=db, fmt=format.value, out=out_path, stream=sys.stdout, url_prefix=url_prefix,
            copy_to=copy_to, link=link, force=force,
        )  # fmt: skip
    if out_path == "-":
        return
    if json:
        print_json(summary.__dict__)
        return
    where = f" → {summary.out}" if summary.out else ""
    out.print(f"exported {summary.selection}: {summary.rows:,} samples as {summary.format}{where}")
    if summary.copied:
        err.print(f"{'linked' if link else 'copied'} {summary.copied:,} images to {copy_to}")
