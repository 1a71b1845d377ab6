"""The few CUDA runtime calls the TensorRT backend needs, through ctypes on libcudart (as Polygraphy does).

No pycuda, cupy or torch: a Jetson has libcudart from JetPack, an x86 host from the CUDA toolkit or the
`nvidia-cuda-runtime-cu12` wheel. Device pointers and streams are plain ints. Every call checks its
cudaError_t and raises `CudaError` naming the call and CUDA's own message.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from typing import Any

import numpy as np

from runtime.errors import UserError

_H2D, _D2H, _D2D = 1, 2, 3
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor / Minor
_PROP_BYTES = 4096  # larger than any cudaDeviceProp; its first field is char name[256]


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


def _candidates() -> list[str]:
    names = [ctypes.util.find_library("cudart")] if ctypes.util.find_library("cudart") else []
    names += ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    for root in filter(None, roots):
        names += sorted(glob.glob(os.path.join(root, "lib64", "libcudart.so*")))
        names += sorted(glob.glob(os.path.join(root, "targets", "*", "lib", "libcudart.so*")))
    for site in sys.path:  # the nvidia-cuda-runtime-cu1x wheels
        names += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
    return names


def load_cudart() -> ctypes.CDLL:
    """libcudart, or a UserError saying where it was looked for."""
    tried = _candidates()
    for name in tried:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise UserError("the TensorRT backend needs the CUDA runtime (libcudart.so), which was not found "
                    f"(tried {', '.join(dict.fromkeys(tried))}); on Jetson it comes with JetPack, on x86 install "
                    "the CUDA toolkit or `pip install nvidia-cuda-runtime-cu12`, or set CUDA_HOME")


class CudaRuntime:
    """Device memory, copies and streams on one CUDA device."""

    def __init__(self, lib: Any = None):
        self._lib = lib if lib is not None else load_cudart()

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            message = "unknown error"
            try:
                fn = self._lib.cudaGetErrorString
                fn.restype = ctypes.c_char_p
                message = fn(ctypes.c_int(status)).decode()
            except (AttributeError, UnicodeDecodeError):
                pass
            raise CudaError(f"{call} failed with CUDA error {status}: {message}")

    def set_device(self, device: int) -> None:
        self._check(self._lib.cudaSetDevice(ctypes.c_int(device)), f"cudaSetDevice({device})")

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(int(nbytes), 1))),
                    f"cudaMalloc({nbytes})")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self._check(self._lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return int(stream.value or 0)

    def stream_destroy(self, stream: int) -> None:
        self._check(self._lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")

    def stream_synchronize(self, stream: int) -> None:
        self._check(self._lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def _memcpy(self, dst: int, src: int, nbytes: int, kind: int, stream: int, call: str) -> None:
        self._check(self._lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                              ctypes.c_int(kind), ctypes.c_void_p(stream)), call)

    def memcpy_htod(self, dst: int, src: np.ndarray, stream: int) -> None:
        """Copy a C-contiguous host array to device memory (enqueued on `stream`; keep `src` alive until sync)."""
        if not src.flags.c_contiguous:
            raise ValueError("memcpy_htod needs a C-contiguous array")
        self._memcpy(dst, src.ctypes.data, src.nbytes, _H2D, stream, "cudaMemcpyAsync(host -> device)")

    def memcpy_dtoh(self, dst: np.ndarray, src: int, stream: int) -> None:
        """Copy device memory into a C-contiguous host array of the size to read."""
        if not dst.flags.c_contiguous or not dst.flags.writeable:
            raise ValueError("memcpy_dtoh needs a writeable C-contiguous array")
        self._memcpy(dst.ctypes.data, src, dst.nbytes, _D2H, stream, "cudaMemcpyAsync(device -> host)")

    def memcpy_dtod(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._memcpy(dst, src, nbytes, _D2D, stream, "cudaMemcpyAsync(device -> device)")

    def compute_capability(self, device: int) -> tuple[int, int]:
        values = []
        for attr in (_ATTR_CC_MAJOR, _ATTR_CC_MINOR):
            v = ctypes.c_int()
            self._check(self._lib.cudaDeviceGetAttribute(ctypes.byref(v), ctypes.c_int(attr), ctypes.c_int(device)),
                        "cudaDeviceGetAttribute")
            values.append(v.value)
        return values[0], values[1]

    def device_name(self, device: int) -> str:
        buf = ctypes.create_string_buffer(_PROP_BYTES)
        fn = getattr(self._lib, "cudaGetDeviceProperties_v2", None) or self._lib.cudaGetDeviceProperties
        self._check(fn(buf, ctypes.c_int(device)), "cudaGetDeviceProperties")
        return buf.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
