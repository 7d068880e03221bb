"""The procedural LiDAR frames: seeded, ray-cast (nearest surface), labelled only where seen."""

from __future__ import annotations

import numpy as np

from ml_debugger.core.detection.lidar_scenes import _RAYS, MAX_RANGE, MIN_POINTS, PC_RANGE, _hit_box, make_frame


def test_frames_are_seeded_and_hold_real_objects() -> None:
    a, b = make_frame(3), make_frame(3)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(make_frame(4).points, a.points)
    frames = [make_frame(i) for i in range(40)]
    labels = np.concatenate([f.labels for f in frames])
    assert set(labels.tolist()) == {0, 1, 2} and len(labels) > 100
    for f in frames:
        r = np.linalg.norm(f.points[:, :3], axis=1)
        assert (r < MAX_RANGE + 1).all() and (f.points[:, 0] > -1).all()  # the front half-circle only
        assert (f.boxes[:, 3:6] > 0).all()
        assert ((f.boxes[:, 0] >= PC_RANGE[0]) & (f.boxes[:, 0] < PC_RANGE[3])).all()


def test_every_labelled_object_is_seen_and_hides_what_is_behind() -> None:
    for seed in range(10):
        f = make_frame(seed)
        for box in f.boxes.astype(np.float64):
            c, s = np.cos(box[6]), np.sin(box[6])
            rel = f.points[:, :2] - box[:2]
            local = np.column_stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]])
            inside = (np.abs(local) <= box[3:5] / 2 + 0.1).all(1)
            inside &= np.abs(f.points[:, 2] - box[2]) <= box[5] / 2 + 0.1
            assert inside.sum() >= MIN_POINTS  # labelled only where the sensor saw it
    # A box straight ahead hides the rays behind it: the slab test returns its distance.
    box = np.array([10.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.3])
    ahead = np.abs(np.arctan2(_RAYS[:, 1], _RAYS[:, 0])) < 0.01
    level = np.abs(_RAYS[:, 2]) < 0.05
    t = _hit_box(np.zeros(3), _RAYS[ahead & level], box)
    assert np.isfinite(t).all() and (t > 8.5).all() and (t < 10.0).all()
