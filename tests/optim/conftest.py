import pytest
import torch


def make_tiny_bert(seed: int = 0, classifier: bool = True, dropout: float = 0.0):
    """2-layer BERT, hidden 64, FFN 128, 5 labels; dropout 0 so runs are deterministic."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, num_labels=5, max_position_embeddings=64,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(cfg) if classifier else BertModel(cfg)


def batch(seed: int = 0, n: int = 8, seq: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 200, (n, seq), generator=g), torch.randint(0, 5, (n,), generator=g)


def loss_of(model, x, y):
    return torch.nn.functional.cross_entropy(model(input_ids=x).logits, y)


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()
