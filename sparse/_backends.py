"""Discovery of the optional compute backends.

Each probe runs once, lazily, and records *why* a backend is missing so that users (and the
dispatcher's log line) can tell which code path ran.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str

    def __str__(self) -> str:
        state = "available" if self.available else "unavailable"
        return f"{self.name}: {state} ({self.reason})"


@functools.lru_cache(maxsize=None)
def _ext():
    """The compiled extension module ``sparse._C`` or ``None``; the reason is in :func:`backends`."""
    try:
        return importlib.import_module("sparse._C")
    except Exception as exc:  # ImportError, or an undefined symbol from a mismatched build
        _ext_error[0] = f"{type(exc).__name__}: {exc}"
        return None


_ext_error = ["not probed"]


def ext():
    """Return ``sparse._C`` if it imported, else ``None`` (never raises)."""
    return _ext()


def _probe_cpu() -> BackendInfo:
    mod = _ext()
    if mod is None:
        return BackendInfo("csrc-cpu", False, f"sparse._C not importable ({_ext_error[0]}); "
                                              "build with `pip install --no-build-isolation -e .`")
    threads = mod.num_threads() if hasattr(mod, "num_threads") else "?"
    native = []
    if hasattr(mod, "bsr_brgemm_supported"):
        for dt in ("bfloat16", "float32", "float16"):
            if mod.bsr_brgemm_supported(dt, 16):
                native.append(dt)
            elif mod.bsr_brgemm_supported(dt, 32):
                native.append(f"{dt} (blocks of 32k)")
    kernels = ", ".join(mod.bsr_cpu_kernels()) if hasattr(mod, "bsr_cpu_kernels") else "brgemm"
    dropout = f"; dropout kernel: {mod.dropout_isa()}" if hasattr(mod, "dropout_isa") else ""
    return BackendInfo("csrc-cpu", True, f"sparse._C, OpenMP threads={threads}, native block-sparse dtypes: "
                                         f"{', '.join(native) or 'none'} (kernels: {kernels}){dropout}")


def _probe_cuda() -> BackendInfo:
    import torch

    mod = _ext()
    if mod is None:
        return BackendInfo("csrc-cuda", False, "sparse._C not built")
    if not getattr(mod, "with_cuda", lambda: False)():
        return BackendInfo("csrc-cuda", False, "sparse._C built without CUDA (nvcc or CUDA torch missing at "
                                               "build time, or SPARSE_BUILD_CUDA=0)")
    if not torch.cuda.is_available():
        return BackendInfo("csrc-cuda", False, "built with CUDA, but no CUDA device is visible")
    return BackendInfo("csrc-cuda", True, f"device {torch.cuda.get_device_name()}")


def _probe_triton() -> BackendInfo:
    import torch

    try:
        import triton  # noqa: F401
    except Exception as exc:
        return BackendInfo("triton", False, f"triton not importable ({exc})")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return BackendInfo("triton", True, f"triton {triton.__version__}, TRITON_INTERPRET=1 (CPU interpreter)")
    if not torch.cuda.is_available():
        return BackendInfo("triton", False, f"triton {triton.__version__} present, but no CUDA device "
                                            "(set TRITON_INTERPRET=1 to run kernels in the interpreter)")
    return BackendInfo("triton", True, f"triton {triton.__version__}")


def _probe_torch() -> BackendInfo:
    import torch

    return BackendInfo("torch", True, f"pure torch {torch.__version__} fallback, always available")


def backends() -> dict[str, BackendInfo]:
    """Available compute backends, each with the reason it is or is not usable.

    Returns a dict name -> :class:`BackendInfo` for ``csrc-cpu``, ``csrc-cuda``, ``triton``, ``torch``:
    the names :func:`sparse.ops.use_backend` and ``SPARSE_BACKEND`` take.
    """
    return {info.name: info for info in (_probe_cpu(), _probe_cuda(), _probe_triton(), _probe_torch())}
