"""Object detection, 2D (images) and 3D (point-cloud frames): boxes, COCO-style matching and
error codes, the per-box error model and image/frame-level aggregation (BBoxStrategy)."""

# Tasks whose runs hold boxes (``boxes``, ``gt_boxes``, ``box_scores``) rather than one output per sample.
DETECTION_TASKS = ("detection", "detection3d")


def unit_of(task: str) -> str:
    """What one sample of a detection run is called: ``image`` (2D) or ``frame`` (3D)."""
    return "frame" if task == "detection3d" else "image"
