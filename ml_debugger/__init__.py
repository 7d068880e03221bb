"""mldbg: curate the datasets behind vision models.

Runs your PyTorch model over a dataset directory into one DuckDB file (outputs, features,
feature stability) so later steps can estimate where the model is wrong.
"""

from __future__ import annotations

from ml_debugger.errors import MldbgError

__version__ = "0.1.0"

__all__ = ["ClassificationDataFilter", "ClassificationTracer", "Evaluator", "FilterConfig", "MldbgError", "__version__"]


def __getattr__(name: str) -> object:
    # The real-time API imports torch; load it on first use so `mldbg --help` stays instant.
    if name in ("ClassificationDataFilter", "ClassificationTracer", "Evaluator", "FilterConfig",
                "ObjectDetectionDataFilter", "ObjectDetection3DDataFilter", "BBoxStrategy"):  # fmt: skip
        from ml_debugger import data_filter

        return getattr(data_filter, name)
    raise AttributeError(f"module 'ml_debugger' has no attribute {name!r}")
