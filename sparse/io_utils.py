"""The one atomic file writer of the library.

Everything is written to a temporary sibling of the destination and renamed into place, so a reader
never sees half a file and a failure at any point (an exception inside the ``with`` block included)
removes the temporary and leaves the destination as it was: absent, or its previous version. An
existing destination is refused unless the caller asks to replace it (``force`` / ``overwrite``).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_file", "atomic_dir", "atomic_write_text", "atomic_write_json"]


def check_regular_file(path: str, what: str, *, expected: str = "a file", error: type = ValueError) -> None:
    """Refuse, before opening, what a reader must not open: a missing path (``FileNotFoundError``), a folder
    (``IsADirectoryError``) or a FIFO/socket/device (``error``; opening a FIFO blocks until someone writes).
    Messages start with ``what`` (the argument or key the path came from)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: {path} is a folder, expected {expected}")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise error(f"{what}: {path} is not a regular file")


def _refuse_existing(path: str, force: bool) -> None:
    if os.path.lexists(path) and not force:
        raise FileExistsError(f"{path!r} already exists; not replacing it without force (--force / --overwrite)")


def _temp_prefix(path: str) -> str:
    # hidden and named after the destination, so a leftover from a killed process says what it was
    return "." + os.path.basename(os.path.normpath(path)) + "."


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, force: bool = False) -> Iterator[str]:
    """Yield a temporary file path next to ``path``; when the block ends without error, rename it onto
    ``path``.

    Raises ``FileExistsError`` if ``path`` exists (checked on entry and again before the rename, since the
    work in between can be long) unless ``force``, and ``IsADirectoryError`` if ``path`` is a folder.
    """
    path = os.fspath(path)
    _refuse_existing(path, force)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        # inside the try: an interrupt (SIGINT, or SIGTERM turned into one) right after mkstemp
        # must not leave the temporary behind
        os.close(fd)
        yield tmp
        _refuse_existing(path, force)
        if os.path.isdir(path) and not os.path.islink(path):
            raise IsADirectoryError(f"{path!r} is a folder, expected a file path")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _remove(path: str) -> None:
    """Remove a file, link or folder tree; errors ignored (only used on our own temporaries)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[str]:
    """Yield a temporary folder next to ``path``; when the block ends without error, move it to ``path``.

    With ``force`` an existing ``path`` is moved aside first and removed only once the new folder is in
    place. Without it an existing ``path`` raises ``FileExistsError`` (on entry, and when another process
    created it meanwhile).
    """
    path = os.fspath(path)
    _refuse_existing(path, force)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=parent)
    old = None
    swapped = False
    try:
        yield tmp
        _refuse_existing(path, force)
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".old", dir=parent)
            os.rmdir(old)  # only the unique name is wanted: rename needs a free one
            os.rename(path, old)
        try:
            os.rename(tmp, path)
            swapped = True
        except OSError as e:  # another process created a non-empty ``path`` after the last check
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(f"{path!r} appeared while writing it; not replacing it") from e
            raise
        if old is not None:
            _remove(old)
    except BaseException:
        if not swapped:
            shutil.rmtree(tmp, ignore_errors=True)
            # Failed (or interrupted) between moving the previous version aside and moving the
            # new one in: put the previous version back rather than leave it under a hidden name.
            if old is not None and os.path.lexists(old) and not os.path.lexists(path):
                with contextlib.suppress(OSError):
                    os.rename(old, path)
        elif old is not None:  # the new folder is in place; finish removing the previous one
            _remove(old)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; refuse an existing ``path`` unless ``overwrite``.

    ``overwrite`` defaults to True because the callers (reports, ``--json`` outputs) check their
    ``--force`` / ``--overwrite`` flag before the work that produces the text starts.
    """
    with atomic_file(path, force=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj, *, overwrite: bool = True, indent: int = 2) -> None:
    """``json.dumps(obj, indent=indent)`` plus a newline, written with :func:`atomic_write_text`."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n", overwrite=overwrite)
