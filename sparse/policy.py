"""The layer policy: which layers are left dense by default, decided once for the whole library.

Used by recipes (module selection), ``convert`` (tensor selection by name) and ``finetune`` (the
parameters trained at ``train.head_lr``). Heads and poolers are tiny and feed the task output
directly: pruning them costs accuracy and buys no speed. Embeddings and norms are not matmul
weights, so there is nothing for an N:M or block kernel to gain there either.
"""
from __future__ import annotations

import re

__all__ = ["HEAD_NAMES", "HEAD_REGEX", "NON_MATMUL_REGEXES", "DENSE_TENSOR_REGEXES", "is_head",
           "is_dense_by_default"]

# Module-name components that mark a task head (or what only feeds one) across HF architectures:
# BERT ``classifier``/``pooler``/``cls`` (MLM head), GPT/LLaMA ``lm_head``, ``score`` (sequence
# classification of decoder models), ``qa_outputs``, generic ``head(s)``, fairseq ``output_projection``.
HEAD_NAMES: tuple[str, ...] = ("classifier", "pooler", "cls", "lm_head", "score", "qa_outputs", "head",
                               "heads", "output_projection")
HEAD_REGEX: str = r"(^|\.)(" + "|".join(HEAD_NAMES) + r")(\.|$)"

# Tensor names (checkpoints have no module types) of embeddings and norms.
NON_MATMUL_REGEXES: tuple[str, ...] = (r"embed", r"(^|\.)(wte|wpe|shared|emb)(\.|$)", r"norm", r"(^|\.)ln_?\w*\.")

# Everything ``convert`` leaves dense by default, by tensor name.
DENSE_TENSOR_REGEXES: tuple[str, ...] = NON_MATMUL_REGEXES + (HEAD_REGEX,)

_HEAD = re.compile(HEAD_REGEX)
_DENSE = [re.compile(r) for r in DENSE_TENSOR_REGEXES]


def is_head(fqn: str) -> bool:
    """True when the module or parameter name ``fqn`` belongs to a task head or pooler."""
    return _HEAD.search(fqn) is not None


def is_dense_by_default(name: str) -> bool:
    """True when the tensor ``name`` (a state-dict key) is left dense unless explicitly included."""
    return any(r.search(name) for r in _DENSE)
