"""etl: turn image folders into DIGITS/Caffe-compatible LMDB datasets on every core."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

__version__ = "0.3.0"

# Loaded on first use, so that `import etl` stays cheap (no OpenCV, no LMDB) until a conversion runs.
_LAZY = {"convert": "etl.api", "NothingConverted": "etl.api", "UsageError": "etl.settings",
         "PipelineError": "etl.pipeline", "Interrupted": "etl.pipeline"}
__all__ = ["Interrupted", "NothingConverted", "PipelineError", "UsageError", "__version__", "convert", "verify"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'etl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The etl package, whose `verify` stays the API function although a module etl/verify.py exists:
    importing a submodule sets it on its package, which here must not replace the function."""

    @property
    def verify(self) -> Callable[..., Any]:
        from etl.api import verify

        return verify

    @verify.setter
    def verify(self, module: types.ModuleType) -> None:
        pass  # the module is still sys.modules["etl.verify"], and `from etl.verify import ...` finds it there


sys.modules[__name__].__class__ = _Package
