"""Fixtures of the MLPruning tests: tiny random models of every supported family."""
import pytest
import torch

FAMILIES = ("bert", "distilbert", "roberta")
VOCAB = 120


def _tiny(family: str, seed: int = 0, heads: int = 4, hidden: int = 64, ffn: int = 128, layers: int = 2):
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

    torch.manual_seed(seed)
    if family == "bert":
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=ffn, num_labels=3, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
        return BertForSequenceClassification(cfg).eval()
    if family == "distilbert":
        cfg = DistilBertConfig(vocab_size=VOCAB, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=ffn,
                               num_labels=3, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                               seq_classif_dropout=0.0)
        return DistilBertForSequenceClassification(cfg).eval()
    cfg = RobertaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, num_labels=3, max_position_embeddings=80, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=1)
    return RobertaForSequenceClassification(cfg).eval()


@pytest.fixture
def tiny():
    """``tiny(family, seed=0, **sizes)``: a 2-layer classifier, hidden 64, 4 heads, FFN 128, eval mode,
    no dropout, with its scores randomised by the test as needed."""
    return _tiny


@pytest.fixture
def inputs():
    """``inputs(seed=0, n=4, seq=12)``: ``{input_ids, attention_mask}`` with some padding."""
    def make(seed: int = 0, n: int = 4, seq: int = 12):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, VOCAB, (n, seq), generator=g)
        mask = torch.ones(n, seq, dtype=torch.long)
        mask[0, seq - 3:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return make


def randomise_scores(pruner, seed: int = 0) -> None:
    """Random importance scores, so masks differ from the magnitude order (and are not all-or-nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for u in pruner.units.values():
            u.scores.copy_(torch.rand(u.scores.shape, generator=g))


@pytest.fixture
def randomise():
    return randomise_scores
