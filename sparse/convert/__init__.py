"""Convert unstructured-sparse checkpoints to N:M / transposable N:M (optionally with AdaPrune).

Public: :func:`convert_checkpoint`, :class:`ConvertReport`, :class:`AdaPruneConfig`,
:func:`read_checkpoint` (tensor-by-tensor reader shared with ``sparse inspect``).
"""
from .api import convert_checkpoint, parse_pattern
from .reader import iter_tensors, list_tensors
from .report import ConvertReport, LayerCalibration, TensorReport


def __getattr__(name):
    # AdaPrune pulls in transformers only when used.
    if name == "AdaPruneConfig":
        from .adaprune import AdaPruneConfig

        return AdaPruneConfig
    raise AttributeError(f"module 'sparse.convert' has no attribute {name!r}")


__all__ = ["convert_checkpoint", "parse_pattern", "ConvertReport", "TensorReport", "LayerCalibration",
           "AdaPruneConfig", "iter_tensors", "list_tensors"]
