"""``mldbg extract``: run a model over a dataset into the store."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ml_debugger.cli._console import (
    err,
    fmt,
    interrupt_on_sigterm,
    kv_table,
    out,
    print_json,
    progress_bar,
    user_errors,
)
from ml_debugger.cli._options import DbOption, JsonOption, opt


class DatasetFormat(str, Enum):
    imagefolder = "imagefolder"
    folder = "folder"
    manifest = "manifest"
    coco = "coco"
    yolo = "yolo"
    kitti = "kitti"
    npy = "npy"


class Task(str, Enum):
    classification = "classification"
    detection = "detection"
    detection3d = "detection3d"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def extract_command(
    dataset: Annotated[
        Path,
        typer.Argument(
            help="Dataset directory (class folders, a flat folder, COCO/YOLO images, KITTI/.npy point-cloud "
            "frames) or a .csv/.jsonl manifest.",
            show_default=False,
        ),
    ],
    model: Annotated[
        str,
        opt(
            "--model",
            "-m",
            help="Model: a .pt2 (torch.export), TorchScript file, or package.module:callable.",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None,
        opt("--name", "-n", help="Run name (default: the dataset folder's name).", show_default=False),
    ] = None,
    weights: Annotated[str | None, opt(help="State dict for a package.module:callable model.")] = None,
    layer: Annotated[
        str | None,
        opt(help="Module whose output is the feature (default: input of the last nn.Linear)."),
    ] = None,
    model_name: Annotated[str | None, opt(help="Model name for results (default: the model file's stem).")] = None,
    model_version: Annotated[str, opt(help="Model version for results.")] = "v1",
    checkpoint: Annotated[str | None, opt(help="Which checkpoint (e.g. epoch) of the model this is.")] = None,
    format: Annotated[DatasetFormat | None, opt("--format", help="Dataset format (default: detected).")] = None,
    classes: Annotated[
        Path | None,
        opt(help="Class names in model output order, one per line (for unlabelled data)."),
    ] = None,
    config: Annotated[Path | None, opt(help="YAML config (see configs/default.yaml); flags override it.")] = None,
    image_size: Annotated[
        int | None,
        opt(help="Input side in pixels: resize shorter side, centre-crop (config default: 224).", show_default=False),
    ] = None,
    channels: Annotated[
        int | None,
        opt(help="1 or 3 input channels (default: from the model's first convolution).", show_default=False),
    ] = None,
    mean: Annotated[
        str | None,
        opt(help="Normalisation mean, e.g. 0.5 or 0.485,0.456,0.406 (default: ImageNet).", show_default=False),
    ] = None,
    std: Annotated[
        str | None,
        opt(help="Normalisation std, e.g. 0.5 or 0.229,0.224,0.225 (default: ImageNet).", show_default=False),
    ] = None,
    stability: Annotated[
        int | None,
        opt(help="K perturbed copies per sample for feature stability (0 = off).", show_default=False),
    ] = None,
    seed: Annotated[int | None, opt(help="Seed of the perturbations.", show_default=False)] = None,
    device: Annotated[Device | None, opt(help="auto = CUDA when available.", show_default=False)] = None,
    batch_size: Annotated[
        int | None, opt(help="Images per forward pass (config default: 64).", show_default=False)
    ] = None,
    workers: Annotated[
        int | None, opt(help="Decoding processes (default: min(4, cores - 1)).", show_default=False)
    ] = None,
    overwrite: Annotated[bool, opt(help="Replace an existing run of this name instead of resuming it.")] = False,
    task: Annotated[
        Task, opt(help="classification, detection (2D boxes; see --annotations) or detection3d (LiDAR frames).")
    ] = Task.classification,
    annotations: Annotated[
        Path | None,
        opt(help="Detection: COCO JSON of the images (--format coco), or the YOLO labels folder.", show_default=False),
    ] = None,
    score_thresh: Annotated[
        float | None,
        opt(
            help="Detection: keep boxes whose class probability is at least this (default 0.05; 3D 0.1).",
            show_default=False,
        ),
    ] = None,
    iou_thresh: Annotated[
        float | None, opt(help="Detection: per-class NMS IoU threshold (3D: BEV IoU; default 0.5).", show_default=False)
    ] = None,
    max_detections: Annotated[
        int | None,
        opt(help="Detection: boxes kept per image or frame, best first (default 100; 3D 200).", show_default=False),
    ] = None,
    pc_range: Annotated[
        str | None,
        opt(
            help="3D: keep points inside x_min,y_min,z_min,x_max,y_max,z_max (default: the model's pc_range).",
            show_default=False,
        ),
    ] = None,
    db: DbOption = None,
    json: JsonOption = False,
) -> None:
    """Run a model over a dataset and store outputs, features and stability.

    Labelled data (class folders, or a manifest with labels) is stored with its labels for
    `mldbg evaluate`; an interrupted extraction resumes when the same command runs again.

    Detection (--task detection) stores each image's kept boxes; --task detection3d reads LiDAR
    frames (KITTI velodyne/*.bin or .npy) and stores 3D boxes.

    Example: mldbg extract data/val --model model.pt2 --name val --stability 4

    Example: mldbg extract data/lidar --task detection3d --model pkg.adapter:build --weights w.pt --format kitti
    """
    with user_errors():
        from ml_debugger.core.config import load_config
        from ml_debugger.core.extract import ExtractRequest, extract
        from ml_debugger.core.images import parse_floats
        from ml_debugger.core.stability import StabilityConfig

        cfg = load_config(config)
        ex, st = cfg["extract"], cfg["stability"]

        def pick(flag: Any, value: Any) -> Any:
            return flag if flag is not None else value

        def floats(flag: str | None, value: Any, option: str) -> tuple[float, ...] | None:
            if flag is not None:
                return parse_floats(flag, option)
            if value is None:
                return None
            return parse_floats(",".join(map(str, value)) if isinstance(value, list) else str(value), option)

        from ml_debugger.errors import UsageError

        if task is Task.classification and (annotations or (format and format.value in ("coco", "yolo"))):
            raise UsageError("--annotations and --format coco/yolo are for detection datasets; add --task detection")
        if task is not Task.detection3d and (pc_range or (format and format.value in ("kitti", "npy"))):
            raise UsageError("--pc-range and --format kitti/npy are for point-cloud frames; add --task detection3d")
        if task is not Task.classification:
            from ml_debugger.core.detection.extract import DetectionRequest
            from ml_debugger.core.detection.extract3d import Detection3DRequest

            three_d = task is Task.detection3d
            if three_d and (annotations or (format and format.value not in ("kitti", "npy"))):
                raise UsageError("a detection3d dataset is --format kitti or npy, with its labels inside the folder")
            common: dict[str, Any] = dict(
                dataset=str(dataset),
                name=name or dataset.resolve().name,
                model=model,
                weights=weights,
                model_name=model_name,
                model_version=model_version,
                dataset_format=format.value if format else None,
                classes_file=str(classes) if classes else None,
                score_thresh=pick(score_thresh, 0.1 if three_d else 0.05),
                iou_thresh=pick(iou_thresh, 0.5),
                max_detections=pick(max_detections, 200 if three_d else 100),
                device=device.value if device else ex["device"],
                batch_size=int(batch_size or (8 if three_d else 16)),
                workers=pick(workers, ex["workers"]),
                overwrite=overwrite,
                flush_seconds=float(ex["flush_seconds"]),
            )
            if three_d:
                pcr = parse_floats(pc_range, "--pc-range") if pc_range else None
                _run_detection(Detection3DRequest(**common, pc_range=pcr), db, json)
                return
            three = lambda v: v * 3 if v is not None and len(v) == 1 else v  # noqa: E731  one value: every channel
            det = DetectionRequest(
                **common,
                annotations=str(annotations) if annotations else None,
                image_size=image_size,
                mean=three(floats(mean, ex["mean"], "--mean")) or (0.485, 0.456, 0.406),
                std=three(floats(std, ex["std"], "--std")) or (0.229, 0.224, 0.225),
            )
            _run_detection(det, db, json)
            return

        req = ExtractRequest(
            dataset=str(dataset),
            name=name or (dataset.stem if dataset.is_file() else dataset.resolve().name),
            model=model,
            weights=weights,
            layer=layer,
            model_name=model_name,
            model_version=model_version,
            checkpoint=checkpoint,
            dataset_format=format.value if format else None,
            classes_file=str(classes) if classes else None,
            image_size=int(pick(image_size, ex["image_size"])),
            channels=pick(channels, ex["channels"]),
            mean=floats(mean, ex["mean"], "--mean"),
            std=floats(std, ex["std"], "--std"),
            stability=StabilityConfig(
                k=int(pick(stability, st["k"])),
                noise_std=float(st["noise_std"]),
                max_shift=float(st["max_shift"]),
                mc_dropout=bool(st["mc_dropout"]),
                seed=int(pick(seed, st["seed"])),
            ),
            device=(device.value if device else ex["device"]),
            batch_size=int(pick(batch_size, ex["batch_size"])),
            workers=pick(workers, ex["workers"]),
            overwrite=overwrite,
            flush_seconds=float(ex["flush_seconds"]),
        )
        with progress_bar(f"extract {req.name}") as progress, interrupt_on_sigterm():
            summary = extract(req, db=db, progress=progress)
    if json:
        print_json(summary.to_dict())
        return
    verb = {
        "complete": "resumed and finished" if summary.resumed else "extracted",
        "up-to-date": "already complete",
    }
    out.print(
        f"run [bold]{summary.run}[/bold] {verb.get(summary.status, summary.status)}: "
        f"{summary.n_samples:,} samples ({summary.n_new:,} new), {summary.n_skipped:,} skipped "
        f"in {summary.seconds:.1f} s → {summary.db}"
    )
    rows = [
        ("labelled", fmt(summary.labelled)),
        ("accuracy", f"{summary.accuracy:.2%}" if summary.accuracy is not None else "–"),
        ("feature", f"{summary.feature_layer} (dim {summary.feature_dim})"),
    ]
    out.print(kv_table(rows))
    if summary.n_skipped:
        err.print(f"{summary.n_skipped} unreadable file(s) skipped; see `mldbg show {summary.run}`")


def _run_detection(req: Any, db: str | None, json: bool) -> None:
    from ml_debugger.core.detection.extract import DetectionRequest, extract_detections
    from ml_debugger.core.detection.extract3d import extract_frames

    unit = "images" if isinstance(req, DetectionRequest) else "frames"
    run = extract_detections if isinstance(req, DetectionRequest) else extract_frames
    with progress_bar(f"extract {req.name}", unit=unit) as progress, interrupt_on_sigterm():
        summary = run(req, db=db, progress=progress)
    if json:
        print_json(summary.to_dict())
        return
    for note in summary.notes:
        err.print(f"note: {note}", soft_wrap=True)
    verb = "resumed and finished" if summary.resumed else "extracted"
    if summary.status == "up-to-date":
        verb = "already complete"
    out.print(
        f"run [bold]{summary.run}[/bold] {verb}: {summary.n_samples:,} {unit} ({summary.n_new:,} new), "
        f"{summary.n_boxes:,} boxes kept, {summary.n_gt_boxes:,} ground-truth boxes, {summary.n_skipped:,} skipped "
        f"in {summary.seconds:.1f} s → {summary.db}"
    )
    if summary.n_skipped:
        err.print(f"{summary.n_skipped} unreadable file(s) skipped; see `mldbg show {summary.run}`")
