"""N:M and transposable N:M weight masks (contract: DESIGN.md section 3).

All functions take a 2-D weight ``[out_features, in_features]`` and return a ``torch.bool`` mask
of the same shape on the same device.
"""
from .diversity import mask_diversity
from .nm import nm_mask
from .transposable import METHODS, transposable_mask
from .validate import complete_tiles, is_nm, is_transposable

__all__ = ["nm_mask", "transposable_mask", "is_nm", "is_transposable", "mask_diversity",
           "complete_tiles", "METHODS"]
