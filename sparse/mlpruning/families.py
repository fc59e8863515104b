"""Per-architecture table of module names: where a family keeps its layers, attention and six matrices.

One :class:`Family` row per supported Hugging Face architecture family, looked up by
``config.model_type``. Module names are paths (``"attention.self.query"``) resolved with
``nn.Module.get_submodule`` relative to the model's base model (``model.base_model``, the same for
``BertModel`` and ``BertForSequenceClassification``) or to one encoder layer. To support another
family, add a row to :data:`FAMILIES` with its paths (print a model to read them) and test it like
the others (tests/mlpruning).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch.nn as nn

from .config import MATRICES

__all__ = ["Family", "FAMILIES", "family_of", "family_for_config", "supported_model_types", "encoder_layers",
           "get_module", "set_module", "layer_prefixes"]


@dataclass(frozen=True)
class Family:
    """Module names of one architecture family.

    Attributes:
        name: a short label.
        model_types: the ``config.model_type`` values of the family.
        class_prefix: HF class-name prefix (``Bert`` in ``BertForSequenceClassification``).
        layers: the ``nn.ModuleList`` of encoder layers, relative to ``model.base_model``.
        attention: the module that computes the attention context from Q, K and V, relative to a layer
            (replaced by :class:`~sparse.mlpruning.pack.HeadlessAttention` when all its heads go).
        matrices: role (``query key value attn_out ffn_in ffn_out``) -> Linear path relative to a layer.
        out_in_attention: the attention-output matrix is a child of ``attention`` (DistilBERT), not
            applied after it (BERT's ``attention.output.dense``).
        heads_config, hidden_config, ffn_config: config attributes of the head count, hidden width and
            FFN width.
        heads_attr: the attention module's attribute holding its head count (kept in step on packing).
    """
    name: str
    model_types: tuple[str, ...]
    class_prefix: str
    layers: str
    attention: str
    matrices: Mapping[str, str]
    out_in_attention: bool
    heads_config: str
    hidden_config: str
    ffn_config: str
    heads_attr: str

    def __post_init__(self):
        if tuple(self.matrices) != MATRICES:
            raise ValueError(f"matrices: expected the roles {MATRICES} in this order, got {tuple(self.matrices)}")

    def out_leaf(self) -> str:
        """Name of the attention-output matrix inside ``attention`` (``out_in_attention`` families)."""
        prefix = self.attention + "."
        path = self.matrices["attn_out"]
        if not self.out_in_attention or not path.startswith(prefix) or "." in path[len(prefix):]:
            raise ValueError(f"family {self.name}: attn_out {path!r} is not a direct child of {self.attention!r}")
        return path[len(prefix):]


_BERT_LIKE = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
              "attn_out": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}

FAMILIES: tuple[Family, ...] = (
    Family("bert", ("bert",), "Bert", "encoder.layer", "attention.self", _BERT_LIKE, False,
           "num_attention_heads", "hidden_size", "intermediate_size", "num_attention_heads"),
    Family("roberta", ("roberta",), "Roberta", "encoder.layer", "attention.self", _BERT_LIKE, False,
           "num_attention_heads", "hidden_size", "intermediate_size", "num_attention_heads"),
    Family("distilbert", ("distilbert",), "DistilBert", "transformer.layer", "attention",
           {"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
            "attn_out": "attention.out_lin", "ffn_in": "ffn.lin1", "ffn_out": "ffn.lin2"}, True,
           "n_heads", "dim", "hidden_dim", "n_heads"),
)


def supported_model_types() -> tuple[str, ...]:
    return tuple(t for f in FAMILIES for t in f.model_types)


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a Hugging Face model, by ``model.config.model_type``.

    Raises:
        ValueError: no config, or a model type without a row (the message names the supported ones
            and how to add a row).
    """
    config = getattr(model, "config", None)
    if config is None:
        _unsupported("model", f"{type(model).__name__} without a Hugging Face config")
    return family_for_config(config, "model")


def family_for_config(config, arg: str = "config") -> Family:
    """The :class:`Family` of a Hugging Face config (``config.model_type``); ValueError naming ``arg``."""
    model_type = getattr(config, "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    _unsupported(arg, f"model_type {model_type!r}")


def _unsupported(arg: str, got: str):
    raise ValueError(f"{arg}: MLPruning supports the families {', '.join(supported_model_types())} "
                     f"(Hugging Face config.model_type), got {got}. To add one, add a Family row to FAMILIES in "
                     f"sparse/mlpruning/families.py naming its layer list, attention module and six Linear "
                     f"matrices, and test it like the others in tests/mlpruning")


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def encoder_layers(model: nn.Module, family: Family) -> nn.ModuleList:
    """The model's encoder layers (``family.layers`` under the base model)."""
    try:
        layers = _base(model).get_submodule(family.layers)
    except AttributeError:
        raise ValueError(f"model: a {family.name} model should have its encoder layers at "
                         f"{family.layers!r}, {type(model).__name__} has none") from None
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"model: expected an nn.ModuleList at {family.layers!r}, got {type(layers).__name__}")
    return layers


def layer_prefixes(model: nn.Module, family: Family) -> list[str]:
    """Fully qualified name (in ``model``) of each encoder layer, with a trailing dot."""
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(layer)] + "." for layer in encoder_layers(model, family)]


def get_module(layer: nn.Module, path: str) -> nn.Module | None:
    """The submodule at ``path`` (a name from a :class:`Family` row), or None when absent (a headless
    layer has no Q, K, V)."""
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def set_module(layer: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at ``path`` (a name from a :class:`Family` row) with ``module``."""
    parent_path, _, leaf = path.rpartition(".")
    parent = layer.get_submodule(parent_path) if parent_path else layer
    parent.register_module(leaf, module)
