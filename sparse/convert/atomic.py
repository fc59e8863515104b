"""Where ``convert`` may write: never onto, into or around its source.

The writing itself (temporary sibling, rename, clean-up on failure, no clobbering without ``force``)
is :mod:`sparse.io_utils`, the library's one atomic writer; this module keeps only the checks that
involve both SRC and DST.
"""
from __future__ import annotations

import os


def same_or_inside(a: str, b: str) -> bool:
    """True when path ``a`` is ``b`` or lies inside directory ``b`` (after resolving links)."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    return ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep)


def check_destination(src: str, dst: str, force: bool) -> None:
    """Refuse a DST that is SRC (or inside / containing it), or that exists without ``force``."""
    if same_or_inside(dst, src) or same_or_inside(src, dst):
        raise ValueError(f"dst: must differ from src and not contain or lie inside it, got src={src!r} dst={dst!r}")
    if os.path.lexists(dst) and not force:
        raise FileExistsError(f"dst: {dst!r} already exists (pass force=True / --force to replace it)")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"dst: parent folder {parent!r} does not exist")
