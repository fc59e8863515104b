"""Where ``convert`` may write: never onto, into or around an input, nor onto another output.

The writing itself (temporary sibling, rename, clean-up on failure, no clobbering without ``force``)
is :mod:`sparse.io_utils`, the library's one atomic writer; this module keeps the checks that involve
several paths at once, run before any work starts so that a mistake costs nothing:

* an output must not be an input, contain one or lie inside one (SRC, each of its shards, a
  calibration file), compared after resolving links and relative spellings (hard links too);
* two outputs must not be the same file or one inside the other (``--report`` inside a DST folder
  is refused as well: DST holds exactly what the conversion writes, and the report would land
  in the temporary folder, or overwrite a converted file of the same name);
* each output: not existing unless ``force``, its folder existing, a file output not an existing
  folder.
"""
from __future__ import annotations

import os
from collections.abc import Collection, Iterable


def same_or_inside(a: str, b: str) -> bool:
    """True when path ``a`` is ``b`` or lies inside directory ``b`` (after resolving links)."""
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    return ra == rb or ra.startswith(rb.rstrip(os.sep) + os.sep)


def _same_file(a: str, b: str) -> bool:
    # hard links (and bind mounts) have different real paths but one inode
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one does not exist (yet); ValueError: NUL in a path
        return False


def _relation(out: str, inp: str) -> str | None:
    """How ``out`` overlaps ``inp``: ``"is the same file as"``, ``"lies inside"``, ``"contains"`` or None."""
    if os.path.realpath(out) == os.path.realpath(inp) or _same_file(out, inp):
        return "is the same file as"
    if same_or_inside(out, inp):
        return "lies inside"
    if same_or_inside(inp, out):
        return "contains"
    return None


def _refuse_overlap(out_name: str, out: str, other_name: str, other: str, rule: str) -> None:
    how = _relation(out, other)
    if how is not None:
        raise ValueError(f"{out_name}: {out!r} {how} {other_name} {other!r}; {rule}")


def _check_spelling(name: str, path: str) -> None:
    if not isinstance(path, str) or not path or "\0" in path:
        raise ValueError(f"{name}: expected a path, got {path!r}")


def check_output(name: str, path: str, force: bool, *, folder: bool = False) -> None:
    """One output path: refused if it exists (unless ``force``), if its folder is missing or not a
    folder, or (``folder=False``) if it is an existing folder, which no ``force`` replaces by a file."""
    _check_spelling(name, path)
    if os.path.lexists(path) and not force:
        raise FileExistsError(f"{name}: {path!r} already exists (pass force=True / --force to replace it)")
    if not folder and os.path.isdir(path) and not os.path.islink(path):
        raise ValueError(f"{name}: expected a file path, got the folder {path!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        raise FileNotFoundError(f"{name}: parent folder {parent!r} does not exist")
    if not os.path.isdir(parent):
        raise ValueError(f"{name}: parent {parent!r} is not a folder")


def check_paths(inputs: Iterable[tuple[str, str]], outputs: Iterable[tuple[str, str]], *, force: bool = False,
                folders: Collection[str] = ()) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other (see the module).

    Args:
        inputs, outputs: ``(argument name, path)`` pairs; the names appear in the messages, spelled
            as the caller knows them (e.g. ``"report_path (--report)"``).
        force: existing outputs may be replaced (never an input, never another output).
        folders: names of the outputs written as folders.

    Raises:
        ValueError: naming both arguments when two paths overlap, or an output that cannot be one.
        FileExistsError: an existing output without ``force``. FileNotFoundError: a missing parent.
    """
    inputs, outputs = list(inputs), list(outputs)
    for name, path in inputs + outputs:
        _check_spelling(name, path)
    for i, (name, path) in enumerate(outputs):
        for in_name, in_path in inputs:
            _refuse_overlap(name, path, in_name, in_path, "an output must not be, contain or lie inside an input")
        for other_name, other in outputs[:i]:
            _refuse_overlap(name, path, other_name, other,
                            "two outputs must not be the same file or one inside the other")
    for name, path in outputs:
        check_output(name, path, force, folder=name in folders)


def check_destination(src: str, dst: str, force: bool) -> None:
    """Refuse a DST that is SRC (or inside / containing it), that exists without ``force``, or whose
    folder is missing."""
    check_paths([("src", src)], [("dst", dst)], force=force, folders=("dst",))
