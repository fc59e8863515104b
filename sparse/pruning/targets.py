"""Select the modules a pruning entry targets: module filters ``(module, fqn) -> bool``.

Regexes are applied with ``re.search`` so ``encoder\\.layer`` matches ``encoder.layer.0...`` in a
``BertModel`` and ``bert.encoder.layer.0...`` in a ``BertForSequenceClassification`` alike.
"""
from __future__ import annotations

import difflib
import re
from typing import Callable

import torch.nn as nn

from ..recipe import RecipeError, Targets

# Explicit registry: recipe type names -> module classes (never getattr(nn, user_string)).
MODULE_CLASSES: dict[str, type] = {"Linear": nn.Linear, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d}

ModuleFilter = Callable[[nn.Module, str], bool]


def module_filter(targets: Targets) -> ModuleFilter:
    """The ``(module, fqn) -> bool`` filter of ``targets`` (types, includes, excludes)."""
    classes = tuple(MODULE_CLASSES[t] for t in targets.types)
    inc = [re.compile(r) for r in targets.include]
    exc = [re.compile(r) for r in targets.exclude]

    def keep(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, classes):
            return False
        if inc and not any(r.search(fqn) for r in inc):
            return False
        return not any(r.search(fqn) for r in exc)

    return keep


def select_modules(model: nn.Module, targets: Targets, where: str = "targets") -> list[tuple[str, nn.Module]]:
    """``[(fqn, module)]`` matched by ``targets`` in ``model`` (in ``named_modules`` order).

    Raises:
        RecipeError: an ``include`` regex matches no module of the target types (the message lists
            the nearest candidate names), or nothing at all is selected.
    """
    classes = tuple(MODULE_CLASSES[t] for t in targets.types)
    typed = [(fqn, m) for fqn, m in model.named_modules() if fqn and isinstance(m, classes)]
    for r in targets.include:
        rx = re.compile(r)
        if not any(rx.search(fqn) for fqn, _ in typed):
            names = [fqn for fqn, _ in typed]
            near = difflib.get_close_matches(r, names, n=5, cutoff=0.0) or names[:5]
            raise RecipeError(f"{where}.include: regex {r!r} matches no {'/'.join(targets.types)} module; "
                              f"near candidates: {', '.join(near) if near else '(model has none)'}")
    keep = module_filter(targets)
    chosen = [(fqn, m) for fqn, m in typed if keep(m, fqn)]
    if not chosen:
        names = [fqn for fqn, _ in typed][:5]
        raise RecipeError(f"{where}: selects no module (types {list(targets.types)}, include "
                          f"{list(targets.include)}, exclude {list(targets.exclude)}); candidates: "
                          f"{', '.join(names) if names else '(none of those types)'}")
    return chosen
