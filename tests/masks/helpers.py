"""Reference computations for the mask tests (independent of the code under test)."""
import torch


def kept(weight: torch.Tensor, mask: torch.Tensor) -> float:
    return float((weight.double().abs() * mask.double()).sum())


def tie_heavy(rows: int, cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # few distinct magnitudes, random signs, some exact zeros
    vals = torch.randint(0, 3, (rows, cols), generator=g).float()
    signs = torch.randint(0, 2, (rows, cols), generator=g).float() * 2 - 1
    return vals * signs
