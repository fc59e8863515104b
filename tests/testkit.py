"""Helpers shared by the tests, imported as ``import testkit`` / ``from testkit import ...``.

Not in a ``conftest.py``: test modules that did ``from conftest import ...`` got whichever conftest
module was collected first (``tests/optim/conftest.py`` shadowed ``tests/conftest.py`` once).
``tests/conftest.py`` puts this folder on ``sys.path``; fixtures stay in the conftest files.
"""
from __future__ import annotations

import pytest
import torch

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def has_ext() -> bool:
    """True when the C++ extension ``sparse._C`` is built and importable."""
    from sparse._backends import ext

    return ext() is not None


requires_ext = pytest.mark.skipif(not has_ext(), reason="sparse._C not built")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


# ---------------------------------------------------------------------------------- tiny BERT models
def make_tiny_bert(seed: int = 0, classifier: bool = True, dropout: float = 0.0):
    """2-layer BERT, hidden 64, FFN 128, 5 labels; dropout 0 so runs are deterministic."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, num_labels=5, max_position_embeddings=64,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(cfg) if classifier else BertModel(cfg)


def batch(seed: int = 0, n: int = 8, seq: int = 16):
    """``(input_ids [n, seq] int64, labels [n] int64)`` for :func:`make_tiny_bert`."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 200, (n, seq), generator=g), torch.randint(0, 5, (n,), generator=g)


def loss_of(model, x, y):
    return torch.nn.functional.cross_entropy(model(input_ids=x).logits, y)


# ------------------------------------------------- mask references (independent of the code under test)
def kept(weight: torch.Tensor, mask: torch.Tensor) -> float:
    """Kept magnitude ``sum |w| * mask`` in float64."""
    return float((weight.double().abs() * mask.double()).sum())


def tie_heavy(rows: int, cols: int, seed: int) -> torch.Tensor:
    """``[rows, cols]`` fp32 with few distinct magnitudes, random signs and some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    vals = torch.randint(0, 3, (rows, cols), generator=g).float()
    signs = torch.randint(0, 2, (rows, cols), generator=g).float() * 2 - 1
    return vals * signs
