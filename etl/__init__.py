"""etl: turn image folders into DIGITS/Caffe-compatible LMDB datasets on every core."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.8.0"

# Loaded on first use, so that `import etl` stays cheap (no OpenCV, no LMDB) until a conversion runs.
_LAZY = {"convert": "etl.api", "verify": "etl.api", "NothingConverted": "etl.api", "UsageError": "etl.errors",
         "PipelineError": "etl.errors", "Interrupted": "etl.errors"}
__all__ = ["Interrupted", "NothingConverted", "PipelineError", "UsageError", "__version__", "convert", "verify"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'etl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

