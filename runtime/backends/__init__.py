"""Backends that run a bundle's graphs behind one interface (runtime.backends.base.Backend).

`open_backend(bundle, "onnxruntime", ...)` builds one by name; each backend module is imported only when
asked for, so a machine without TensorRT still runs ONNX Runtime and the other way round.
"""
from __future__ import annotations

import importlib
from typing import Any

from runtime.backends.base import Backend, KVCache
from runtime.bundle import Bundle
from runtime.errors import UserError

BACKENDS = {"onnxruntime": ("runtime.backends.ort", "OrtBackend", "OrtOptions"),
            "tensorrt": ("runtime.backends.trt", "TrtBackend", "TrtOptions")}


def open_backend(bundle: Bundle, name: str = "onnxruntime", **options: Any) -> Backend:
    """The backend `name` on `bundle`, with its options (the fields of its options class: runtime.backends.ort.
    OrtOptions, runtime.backends.trt.TrtOptions)."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    module_name, cls_name, options_name = BACKENDS[name]
    module = importlib.import_module(module_name)
    try:
        opts = getattr(module, options_name)(**options)
    except TypeError as e:
        raise UserError(f"bad options for the {name} backend: {e}") from e
    return getattr(module, cls_name)(bundle, opts)


__all__ = ["BACKENDS", "Backend", "KVCache", "open_backend"]
