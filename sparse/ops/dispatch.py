"""Backend dispatch: every op has an ordered list of implementations; the first usable one runs.

Backend names (the same in :func:`sparse.backends`): ``csrc-cuda`` (the CUDA kernels of ``sparse._C``),
``csrc-cpu`` (its C++/OpenMP kernels), ``triton`` (:mod:`triton_kernels`), ``torch`` (pure torch).
Force one with the environment variable ``SPARSE_BACKEND`` or the context manager
:func:`use_backend`; a forced backend that cannot run the op raises instead of silently falling back.
The backend that ran is logged at DEBUG and kept in :func:`last_backend`.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

BACKENDS = ("csrc-cuda", "csrc-cpu", "triton", "torch")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("sparse_backend", default=None)
_last: dict[str, str] = {}


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: expected one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def forced_backend() -> str | None:
    """The backend forced by :func:`use_backend` or ``SPARSE_BACKEND``, else ``None``."""
    name = _forced.get()
    if name is not None:
        return name
    env = os.environ.get("SPARSE_BACKEND", "").strip().lower()
    return _check_name(env, "SPARSE_BACKEND") if env else None


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force backend ``name`` (or ``None`` for automatic choice) inside the ``with`` block."""
    if name is not None:
        _check_name(name, "use_backend(name)")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def last_backend(op: str) -> str | None:
    """Name of the backend that ran ``op`` most recently in this process."""
    return _last.get(op)


class BackendUnavailable(RuntimeError):
    """The forced backend cannot run this call (the message says why); nothing was computed."""


@dataclass
class _Impl:
    backend: str
    fn: Callable
    usable: Callable[..., str | None]  # returns None if usable, else a reason


@dataclass
class Op:
    """One dispatchable op: implementations in priority order."""

    name: str
    impls: list[_Impl] = field(default_factory=list)

    def register(self, backend: str, usable: Callable[..., str | None] | None = None):
        """Decorator adding an implementation. ``usable(*args, **kwargs)`` returns None or a reason."""
        _check_name(backend, f"{self.name}.register(backend)")

        def deco(fn):
            self.impls.append(_Impl(backend, fn, usable or (lambda *a, **k: None)))
            return fn

        return deco

    def choose(self, *args, **kwargs) -> _Impl:
        forced = forced_backend()
        reasons = []
        for impl in self.impls:
            if forced is not None and impl.backend != forced:
                continue
            why = impl.usable(*args, **kwargs)
            if why is None:
                return impl
            reasons.append(f"{impl.backend}: {why}")
        if forced is not None:
            have = ", ".join(i.backend for i in self.impls)
            raise BackendUnavailable(f"{self.name}: forced backend {forced!r} cannot run this call "
                               f"({'; '.join(reasons) or 'no implementation'}); implementations: {have}")
        raise RuntimeError(f"{self.name}: no usable backend ({'; '.join(reasons)})")

    def __call__(self, *args, **kwargs):
        impl = self.choose(*args, **kwargs)
        _last[self.name] = impl.backend
        log.debug("%s: running on backend %s", self.name, impl.backend)
        return impl.fn(*args, **kwargs)
