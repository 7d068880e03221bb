"""Object detection (2D): boxes, COCO-style matching and error codes; later the per-box error
model and image-level aggregation (BBoxStrategy)."""
