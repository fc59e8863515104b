"""Read a user's examples: CSV and JSON Lines files, and Hugging Face datasets saved with ``save_to_disk``.

Every reader returns :class:`~sparse.data.splits.Table` objects and refuses bad input with a
``ValueError`` that names the file, the line (or row) and the column: a missing column, a value that is
not text, an empty file, bytes that are not in the file's encoding (``data.encoding``), invalid JSON.
"""
from __future__ import annotations

import csv
import json
import os

from ..io_utils import check_regular_file
from .splits import Table

# data.* keys, as named in messages
TEXT_KEYS = {"text": "data.text", "label": "data.label", "text_pair": "data.text_pair"}
VAL_SPLITS = ("validation", "val", "valid", "dev")


def _short(v, limit: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _read_text(path: str, encoding: str, key: str) -> str:
    """The whole file decoded; errors name the file and the line of the first undecodable byte."""
    check_regular_file(path, key)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path} line {line}: not {encoding} text (byte 0x{raw[exc.start]:02x} at offset "
                         f"{exc.start}); set data.encoding to the file's encoding (e.g. latin-1)") from None
    except LookupError:
        raise ValueError(f"data.encoding: unknown encoding {encoding!r}") from None
    return text[1:] if text.startswith("\ufeff") else text


def _columns(text: str, label: str, text_pair: str | None) -> dict[str, str]:
    cols = {"text": text, "label": label}
    if text_pair is not None:
        cols["text_pair"] = text_pair
    return cols


def _check_text(v, place: str, role: str, column: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{place}: column {column!r} ({TEXT_KEYS[role]}): expected a string, got "
                         f"{type(v).__name__} {_short(v)}")
    if not v.strip():
        raise ValueError(f"{place}: column {column!r} ({TEXT_KEYS[role]}) is empty; expected text")
    return v


def _check_label(v, place: str, column: str):
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ValueError(f"{place}: column {column!r} (data.label): expected a string or an integer, got "
                         f"{type(v).__name__} {_short(v)}")
    if isinstance(v, str) and not v.strip():
        raise ValueError(f"{place}: column {column!r} (data.label) is empty; expected a label")
    return v.strip() if isinstance(v, str) else v


def _table(path: str, rows: list[tuple[str, dict]], text_pair: str | None) -> Table:
    """Rows ``(place, {role: value})``, already checked, as a Table."""
    return Table(path, [r["text"] for _, r in rows], [r["label"] for _, r in rows],
                 [r["text_pair"] for _, r in rows] if text_pair is not None else None, [p for p, _ in rows])


def read_csv(path: str, text: str = "text", label: str = "label", text_pair: str | None = None,
             encoding: str = "utf-8", key: str = "data.path") -> Table:
    """A CSV file with a header line naming its columns (quoted fields may span lines)."""
    content = _read_text(path, encoding, key)
    if not content.strip():
        raise ValueError(f"{path}: empty file; expected a header line naming the columns "
                         f"{', '.join(_columns(text, label, text_pair).values())}, then one example per line")
    cols = _columns(text, label, text_pair)
    reader = csv.reader(content.splitlines(keepends=True))
    try:
        header = next(reader)
        where = {}
        for role, column in cols.items():
            if column not in header:
                raise ValueError(f"{path} line 1: column {column!r} ({TEXT_KEYS[role]}) not found; the header has "
                                 f"columns {', '.join(map(_short, header))}")
            where[role] = header.index(column)
        rows = []
        start = reader.line_num + 1
        for row in reader:
            place = f"{path} line {start}"
            start = reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            values = {}
            for role, i in where.items():
                if i >= len(row):
                    raise ValueError(f"{place}: column {cols[role]!r} ({TEXT_KEYS[role]}) missing: the row has "
                                     f"{len(row)} fields, the header {len(header)}")
                values[role] = (_check_label(row[i], place, cols[role]) if role == "label"
                                else _check_text(row[i], place, role, cols[role]))
            rows.append((place, values))
    except csv.Error as exc:
        raise ValueError(f"{path} line {reader.line_num}: not valid CSV: {exc}") from None
    if not rows:
        raise ValueError(f"{path}: no examples (a header line only)")
    return _table(path, rows, text_pair)


def read_jsonl(path: str, text: str = "text", label: str = "label", text_pair: str | None = None,
               encoding: str = "utf-8", key: str = "data.path") -> Table:
    """A JSON Lines file: one JSON object per line (blank lines skipped); labels strings or integers."""
    content = _read_text(path, encoding, key)
    cols = _columns(text, label, text_pair)
    rows = []
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        place = f"{path} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{place}: not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{place}: expected a JSON object with keys {', '.join(cols.values())}, got "
                             f"{type(obj).__name__}")
        values = {}
        for role, column in cols.items():
            if column not in obj:
                raise ValueError(f"{place}: column {column!r} ({TEXT_KEYS[role]}) not found; the object has keys "
                                 f"{', '.join(map(_short, list(obj)[:20]))}")
            values[role] = (_check_label(obj[column], place, column) if role == "label"
                            else _check_text(obj[column], place, role, column))
        rows.append((place, values))
    if not rows:
        raise ValueError(f"{path}: empty file; expected one JSON object per line with keys "
                         f"{', '.join(cols.values())}")
    return _table(path, rows, text_pair)


def read_file(fmt: str, path: str, text: str = "text", label: str = "label", text_pair: str | None = None,
              encoding: str = "utf-8", key: str = "data.path") -> Table:
    """:func:`read_csv` or :func:`read_jsonl` by ``fmt``."""
    reader = {"csv": read_csv, "jsonl": read_jsonl}[fmt]
    return reader(path, text, label, text_pair, encoding, key)


def read_hf(path: str, text: str = "text", label: str = "label",
            text_pair: str | None = None) -> dict[str, Table]:
    """The splits of a dataset written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` with ``train``
    and optionally ``validation`` (or ``val``, ``valid``, ``dev``) and ``test``, or one ``Dataset``, read
    as ``train``), keyed ``train`` / ``validation`` / ``test``. Needs the optional ``datasets`` package
    (``pip install -e '.[datasets]'``); nothing is downloaded. A ``ClassLabel`` label column keeps its
    names."""
    try:
        import datasets
    except ModuleNotFoundError:
        raise ModuleNotFoundError("data.format hf: the datasets package is not installed; install the extra: "
                                  "pip install -e '.[datasets]' (or give the data as format csv or jsonl)") from None
    if not os.path.isdir(path):
        raise (FileNotFoundError if not os.path.exists(path) else ValueError)(
            f"data.path: expected a folder written by datasets' save_to_disk, got {path} "
            f"({'missing' if not os.path.exists(path) else 'not a folder'}); CSV or JSON Lines files: format csv "
            f"or jsonl")
    try:
        ds = datasets.load_from_disk(path)
    except FileNotFoundError as exc:
        raise ValueError(f"data.path: {path} is not a dataset saved with save_to_disk: {exc}") from None
    splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
    if "train" not in splits:
        raise ValueError(f"data.path: {path} has splits {', '.join(splits)}; expected train (and optionally "
                         f"validation, test)")
    out = {"train": _hf_table(splits["train"], f"{path}[train]", text, label, text_pair)}
    val = next((s for s in VAL_SPLITS if s in splits), None)
    if val is not None:
        out["validation"] = _hf_table(splits[val], f"{path}[{val}]", text, label, text_pair)
    if "test" in splits:
        out["test"] = _hf_table(splits["test"], f"{path}[test]", text, label, text_pair)
    return out


def _hf_table(ds, source: str, text: str, label: str, text_pair: str | None) -> Table:
    cols = _columns(text, label, text_pair)
    for role, column in cols.items():
        if column not in ds.column_names:
            raise ValueError(f"{source}: column {column!r} ({TEXT_KEYS[role]}) not found; columns: "
                             f"{', '.join(map(_short, ds.column_names))}")
    if len(ds) == 0:
        raise ValueError(f"{source}: empty split (no examples)")
    feature = ds.features[label]
    names = list(feature.names) if hasattr(feature, "names") and hasattr(feature, "str2int") else None
    values = {role: list(ds[column]) for role, column in cols.items()}  # datasets 5 gives Column objects
    places = [f"{source} row {i}" for i in range(len(ds))]
    for role, column in cols.items():
        check = _check_label if role == "label" else (lambda v, p, c, r=role: _check_text(v, p, r, c))
        values[role] = [check(v, p, column) for v, p in zip(values[role], places)]
    if names is not None:
        for v, p in zip(values["label"], places):
            if not isinstance(v, int) or not 0 <= v < len(names):
                raise ValueError(f"{p}: column {label!r} (data.label): {v!r} is not one of the ClassLabel's "
                                 f"{len(names)} classes (an unlabelled split?)")
    return Table(source, values["text"], values["label"], values.get("text_pair"), places, names)
