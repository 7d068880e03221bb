"""The supported Python API for real-time filtering (the import path users know).

>>> from ml_debugger.data_filter import ClassificationDataFilter, FilterConfig  # doctest: +SKIP
"""

from __future__ import annotations

from ml_debugger.core.detection.strategy import BBoxStrategy
from ml_debugger.filters.classification import ClassificationDataFilter
from ml_debugger.filters.config import FilterConfig
from ml_debugger.filters.detection import ObjectDetection3DDataFilter, ObjectDetectionDataFilter
from ml_debugger.filters.tracer import ClassificationTracer, Evaluator

__all__ = [
    "BBoxStrategy",
    "ClassificationDataFilter",
    "ClassificationTracer",
    "Evaluator",
    "FilterConfig",
    "ObjectDetection3DDataFilter",
    "ObjectDetectionDataFilter",
]
