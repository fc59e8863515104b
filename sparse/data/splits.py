"""Texts with labels, and the train / validation / test splits of :func:`sparse.data.load_texts`.

Labels come in as strings or integers; :func:`encode_labels` numbers them (integers, and strings that are
all integers, by value; other strings in sorted order) from the *training* source, so that the names
(``label_names[i]`` is class ``i``) go into the saved model's config.

Splits are stratified (each class in proportion) and seeded with ``data.split_seed``; sizes are a fraction
in (0, 1) or a count >= 1, as scikit-learn's ``train_test_split`` takes them (a fraction ``f`` of ``n``
carves ``ceil(f * n)``). A split that would leave no example is refused; a class too small to stratify
(fewer than 2 examples, or fewer examples carved than classes) falls back to a plain seeded split and says
so in the split's notes.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

log = logging.getLogger(__name__)


@dataclass
class TextSplit:
    """Texts and integer labels of each split (labels index ``label_names``).

    ``*_pairs``: the second text of each example for sentence-pair tasks (``data.text_pair``), else None.
    ``val_*``: the validation split (empty where a loader has none, e.g. :func:`load_bbc_news` alone).
    """
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str]
    val_texts: list[str] = field(default_factory=list)
    val_labels: list[int] = field(default_factory=list)
    train_pairs: list[str] | None = None
    val_pairs: list[str] | None = None
    test_pairs: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 (20 hex digits) of every split's texts, pairs and labels and of the label names: the
        identity of the data a run trains and is measured on (a data file edited in place changes it)."""
        h = hashlib.sha256()
        for part in (self.label_names, self.train_texts, self.train_labels, self.train_pairs, self.val_texts,
                     self.val_labels, self.val_pairs, self.test_texts, self.test_labels, self.test_pairs):
            h.update(b"\x1e")
            for x in part or ():
                h.update(str(x).encode("utf-8", "surrogatepass"))
                h.update(b"\x1f")
        return h.hexdigest()[:20]

    def cut(self, limit_train: int | None = None, limit_val: int | None = None,
            limit_test: int | None = None) -> "TextSplit":
        """A copy with only the first N examples of each split (smoke tests; None: all)."""
        def first(xs, n):
            return None if xs is None else list(xs[:n])
        return TextSplit(first(self.train_texts, limit_train), first(self.train_labels, limit_train),
                         first(self.test_texts, limit_test), first(self.test_labels, limit_test),
                         list(self.label_names), first(self.val_texts, limit_val), first(self.val_labels, limit_val),
                         first(self.train_pairs, limit_train), first(self.val_pairs, limit_val),
                         first(self.test_pairs, limit_test), list(self.notes))


@dataclass
class Table:
    """Examples read from one source, before labels are numbered: ``labels`` as given (str or int),
    ``where[i]`` names example ``i``'s place for messages (``"train.csv line 7"``)."""
    source: str
    texts: list[str]
    labels: list
    pairs: list[str] | None = None
    where: list[str] = field(default_factory=list)
    label_names: list[str] | None = None   # a Hugging Face ClassLabel's names: labels are their indices

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: Sequence[int]) -> "Table":
        return Table(self.source, [self.texts[i] for i in idx], [self.labels[i] for i in idx],
                     None if self.pairs is None else [self.pairs[i] for i in idx],
                     [self.where[i] for i in idx] if self.where else [], self.label_names)


def label_texts(table: Table) -> list[str]:
    """Each example's label as text: a ClassLabel index becomes its name, anything else ``str(v)``."""
    if table.label_names is not None:
        return [str(table.label_names[int(v)]) for v in table.labels]
    return [str(v) for v in table.labels]


def encode_labels(train: Table, label_key: str = "data.label") -> list[str]:
    """The label names of ``train`` in class order; ``ValueError`` if it holds fewer than 2 classes.

    A ClassLabel's names (Hugging Face) are kept as they are, in their order; otherwise integers (and
    strings that all spell integers) are ordered by value, other strings alphabetically."""
    present = set(label_texts(train))
    if len(present) < 2:
        only = ", ".join(repr(x) for x in sorted(present)) or "none"
        raise ValueError(f"{train.source}: column {label_key}: one class only ({only}) in {len(train)} training "
                         f"examples; a classifier needs at least 2 classes")
    if train.label_names is not None:
        return [str(n) for n in train.label_names]
    names = sorted(present)
    if all(_is_int_text(s) for s in names):
        names.sort(key=int)
    return names


def _is_int_text(s: str) -> bool:
    t = s[1:] if s[:1] in "+-" else s
    return t.isdigit() and t.isascii()


def label_ids(table: Table, names: list[str], train_source: str, label_key: str = "data.label") -> list[int]:
    """``table``'s labels as indices into ``names``; ``ValueError`` naming the first example (file and
    line) whose label the training split does not have."""
    index = {n: i for i, n in enumerate(names)}
    texts = label_texts(table)
    for i, key in enumerate(texts):
        if key not in index:
            unknown = sorted(set(texts) - set(index))
            place = table.where[i] if table.where else f"{table.source} example {i}"
            raise ValueError(f"{place}: column {label_key}: label {key!r} is not in the training split "
                             f"({train_source}: {', '.join(map(repr, names))}); labels of {table.source} not in "
                             f"training: {', '.join(map(repr, unknown[:10]))}")
    return [index[k] for k in texts]


def _count(size: float | int, n: int) -> int:
    """How many of ``n`` examples a split size carves (a fraction: ``ceil(size * n)``, as scikit-learn)."""
    return math.ceil(size * n) if isinstance(size, float) else int(size)


def carve(labels: Sequence, size: float | int, seed: int, key: str, what: str, source: str,
          notes: list[str] | None = None) -> tuple[list[int], list[int]]:
    """``(kept, carved)`` index lists: ``size`` (fraction or count) of the examples carved off, stratified
    by ``labels`` and seeded; ``ValueError`` naming ``key`` when either side would be empty.

    Args:
        labels: one hashable label per example; size: a fraction in (0, 1) or a count >= 1;
        key: the recipe key named in errors (``data.val_size``); what: the carved split's name;
        source: where the examples come from (named in errors); notes: gets a line when the split
        could not be stratified.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    k = _count(size, n)
    if k < 1 or n - k < 1:
        left = "no " + what + " example" if k < 1 else "no example to train on"
        raise ValueError(f"{key}: {size!r} of the {n} examples of {source} leaves {left} (it carves {k} of {n} "
                         f"for {what}); give a fraction in (0, 1) or a count in [1, {max(n - 1, 1)}]")
    idx = list(range(n))
    keys = [str(v) for v in labels]
    counts: dict[str, int] = {}
    for c in keys:
        counts[c] = counts.get(c, 0) + 1
    stratify = keys if min(counts.values()) >= 2 and min(k, n - k) >= len(counts) else None
    if stratify is None:
        msg = (f"{key}: {what} split of {source} not stratified: a class has fewer than 2 examples or the split "
               f"({k} of {n}) has fewer examples than the {len(counts)} classes")
        log.warning(msg)
        if notes is not None:
            notes.append(msg)
    kept, carved = train_test_split(idx, test_size=k, random_state=seed, stratify=stratify)
    return list(kept), list(carved)


def subsample(labels: Sequence, size: float | int, seed: int, key: str, source: str,
              notes: list[str] | None = None) -> list[int]:
    """Indices of a stratified, seeded ``size`` (fraction or count) of the examples; all when ``size``
    covers them all."""
    n = len(labels)
    if _count(size, n) >= n:
        return list(range(n))
    _, taken = carve(labels, size, seed, key, "training", source, notes)
    return taken  # in the split's shuffled order: the first N are not one class
