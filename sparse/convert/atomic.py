"""Atomic outputs: everything is written to a temporary sibling of DST and renamed into place.

A failure at any point removes the temporary and leaves DST as it was (absent, or the previous
version when overwriting with ``force``); SRC is never a possible target.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


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


@contextlib.contextmanager
def atomic_file(dst: str, force: bool):
    """Yield a temp path next to ``dst``; on success rename it onto ``dst``."""
    parent = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dst) + ".", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        yield tmp
        if os.path.lexists(dst) and not force:
            raise FileExistsError(f"dst: {dst!r} appeared while converting; not replacing it without force")
        if os.path.isdir(dst) and not os.path.islink(dst):
            raise FileExistsError(f"dst: {dst!r} is a folder, expected a file path")
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(dst: str, force: bool):
    """Yield a temp folder next to ``dst``; on success swap it in (the old ``dst`` is removed last)."""
    parent = os.path.dirname(os.path.abspath(dst))
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(os.path.normpath(dst)) + ".", suffix=".tmp", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.lexists(dst):
            if not force:
                raise FileExistsError(f"dst: {dst!r} appeared while converting; not replacing it without force")
            old = tempfile.mkdtemp(prefix="." + os.path.basename(os.path.normpath(dst)) + ".", suffix=".old",
                                   dir=parent)
            os.rmdir(old)
            os.rename(dst, old)
        os.rename(tmp, dst)
        if old is not None:
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old)
            else:
                os.remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str, text: str, force: bool = True) -> None:
    """Write a small text file (e.g. a JSON report) atomically."""
    with atomic_file(path, force) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
