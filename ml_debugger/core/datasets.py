"""Dataset formats for classification: class-per-folder, flat folder, CSV/JSONL manifest.

Each format is one small function that turns a path into a :class:`Dataset` (sorted sample ids,
file paths, optional labels, the class list); ``FORMATS`` is the registry. A ``sample_id`` is the
file's path relative to the dataset root, with ``/`` separators, so it is stable across runs.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ml_debugger.errors import DatasetError, UsageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
MANIFEST_EXTENSIONS = frozenset({".csv", ".jsonl"})


@dataclass(frozen=True)
class Dataset:
    """The samples of one dataset, sorted by ``sample_id``.

    ``labels[i]`` is the class index of sample i in ``classes`` (None when unlabelled).
    """

    root: Path
    format: str
    sample_ids: list[str]
    paths: list[str]
    labels: list[int | None]
    classes: list[str]

    @property
    def labelled(self) -> bool:
        return any(label is not None for label in self.labels)

    def __len__(self) -> int:
        return len(self.sample_ids)


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_classes_file(path: str | os.PathLike[str]) -> list[str]:
    """Class names in model output order: one per line (blank lines and ``#`` comments ignored)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--classes file {p} does not exist; give a text file with one class name per line")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise UsageError(f"--classes file {p} lists no class names; write one name per line")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"--classes file {p} repeats class names {dup}; each class must appear once")
    return names


def _walk_images(root: Path) -> list[str]:
    """Relative posix paths of every image under ``root`` (hidden entries skipped), sorted.

    Plain strings and ``os.scandir`` (no per-file Path objects or stat calls): listing a
    million files must take seconds, not minutes.
    """
    found: list[str] = []
    stack = [("", str(root))]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    stack.append((f"{prefix}{e.name}/", e.path))
                elif _is_image(e.name):
                    found.append(prefix + e.name)
    found.sort()
    return found


def _image_folder(root: Path, classes: list[str] | None) -> Dataset:
    class_dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    ids: list[str] = []
    labels: list[int | None] = []
    names = classes if classes is not None else class_dirs
    index = {name: i for i, name in enumerate(names)}
    unknown = [d for d in class_dirs if d not in index]
    if unknown:
        raise DatasetError(
            f"class folders {unknown} in {root} are not in the --classes file; add them to it or remove the folders"
        )
    for name in class_dirs:
        for rel in _walk_images(root / name):
            ids.append(f"{name}/{rel}")
            labels.append(index[name])
    order = sorted(range(len(ids)), key=ids.__getitem__)
    ids = [ids[i] for i in order]
    return Dataset(
        root=root,
        format="imagefolder",
        sample_ids=ids,
        paths=[os.path.join(str(root), s) for s in ids],
        labels=[labels[i] for i in order],
        classes=list(names),
    )


def _flat_folder(root: Path, classes: list[str] | None) -> Dataset:
    ids = _walk_images(root)
    base = os.path.join(str(root), "")
    return Dataset(
        root=root,
        format="folder",
        sample_ids=ids,
        paths=[base + s for s in ids],
        labels=[None] * len(ids),
        classes=list(classes or []),
    )


def _manifest_rows(path: Path) -> list[dict[str, str]]:
    if path.suffix.lower() == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(
                    f"{path}:{i} is not valid JSON ({err.msg}); write one JSON object per line"
                ) from None
            if not isinstance(row, dict):
                raise DatasetError(f'{path}:{i} is not a JSON object; write {{"path": ..., "label": ...}} per line')
            rows.append({k: ("" if v is None else str(v)) for k, v in row.items()})
        return rows
    with path.open(newline="", encoding="utf-8") as fh:
        return [dict(r) for r in csv.DictReader(fh)]


def _manifest(path: Path, classes: list[str] | None) -> Dataset:
    rows = _manifest_rows(path)
    if not rows:
        raise DatasetError(f"manifest {path} lists no samples; add rows with a 'path' column")
    if "path" not in rows[0]:
        raise DatasetError(f"manifest {path} has no 'path' column (columns: {sorted(rows[0])}); add one")
    base = path.parent
    has_label = any(r.get("label") for r in rows)
    if classes is None:
        classes = sorted({r["label"] for r in rows if r.get("label")}) if has_label else []
    index = {name: i for i, name in enumerate(classes)}
    entries: dict[str, tuple[str, int | None]] = {}
    for i, r in enumerate(rows, start=2):
        rel = r.get("path", "")
        if not rel:
            raise DatasetError(f"manifest {path} row {i} has an empty path; fill it in or drop the row")
        file = Path(rel) if Path(rel).is_absolute() else base / rel
        sid = r.get("id") or (Path(os.path.relpath(file, base)).as_posix())
        label_name = r.get("label") or None
        label = None
        if label_name is not None:
            if label_name not in index:
                raise DatasetError(
                    f"manifest {path} row {i}: label {label_name!r} is not a known class; "
                    f"known: {', '.join(classes[:20])}"
                )
            label = index[label_name]
        if sid in entries:
            raise DatasetError(f"manifest {path} lists sample id {sid!r} twice; ids must be unique")
        entries[sid] = (str(file), label)
    ids = sorted(entries)
    return Dataset(
        root=base,
        format="manifest",
        sample_ids=ids,
        paths=[entries[s][0] for s in ids],
        labels=[entries[s][1] for s in ids],
        classes=list(classes),
    )


FORMATS: dict[str, Callable[[Path, list[str] | None], Dataset]] = {
    "imagefolder": _image_folder,
    "folder": _flat_folder,
    "manifest": _manifest,
}


def detect_format(path: Path) -> str:
    """Guess the format: a .csv/.jsonl file is a manifest; a folder of class folders is an
    imagefolder; a folder with images at its top level is a flat (unlabelled) folder."""
    if path.is_file():
        if path.suffix.lower() in MANIFEST_EXTENSIONS:
            return "manifest"
        raise DatasetError(f"{path} is a file but not a .csv/.jsonl manifest; pass a dataset directory or a manifest")
    with os.scandir(path) as entries:
        top = [e for e in entries if not e.name.startswith(".")]
    top_images = [e for e in top if e.is_file() and _is_image(e.name)]
    sub_dirs = [e for e in top if e.is_dir()]
    if top_images and sub_dirs:
        raise DatasetError(
            f"{path} holds both images and sub-folders; pass --format imagefolder (folders are classes) "
            "or --format folder (every image, unlabelled)"
        )
    return "imagefolder" if sub_dirs else "folder"


def open_dataset(
    path: str | os.PathLike[str], *, format: str | None = None, classes: list[str] | None = None
) -> Dataset:
    """List a dataset.

    Parameters
    ----------
    path
        A dataset directory or a CSV/JSONL manifest (columns ``path``, optional ``label``, ``id``).
    format
        One of ``FORMATS``; detected when None.
    classes
        Class names in model output order; by default the sorted folder names (imagefolder) or
        sorted manifest labels.

    Raises
    ------
    DatasetError
        The path is missing, empty, or malformed.
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"dataset {root} does not exist; pass a dataset directory or a .csv/.jsonl manifest")
    if format is not None and format not in FORMATS:
        raise UsageError(f"unknown dataset format {format!r}; choose from: {', '.join(FORMATS)}")
    fmt = format or detect_format(root)
    if fmt != "manifest" and not root.is_dir():
        raise DatasetError(f"--format {fmt} needs a directory, but {root} is a file")
    # Absolute paths, so images stay readable (report thumbnails, export --copy-to) from any folder.
    dataset = FORMATS[fmt](root.absolute(), classes)
    if not len(dataset):
        raise DatasetError(f"dataset {root} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); check the path")
    return dataset
