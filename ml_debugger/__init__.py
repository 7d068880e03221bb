"""mldbg: curate the datasets behind vision models.

Runs your PyTorch model over a dataset directory into one DuckDB file (outputs, features,
feature stability) so later steps can estimate where the model is wrong.
"""

from __future__ import annotations

from ml_debugger.errors import MldbgError

__version__ = "0.1.0"

__all__ = ["MldbgError", "__version__"]
