"""Small file-writing helpers: write to a temporary file in the same folder, then rename."""
from __future__ import annotations

import os
import tempfile


def atomic_write_text(path: str, text: str, *, overwrite: bool = True) -> None:
    """Write ``text`` to ``path`` atomically; refuse an existing ``path`` unless ``overwrite``."""
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists (pass overwrite/--force to replace it)")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj, *, overwrite: bool = True, indent: int = 2) -> None:
    """``json.dumps(obj)`` written with :func:`atomic_write_text`."""
    import json

    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n", overwrite=overwrite)
