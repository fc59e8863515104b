"""Run a transformer block by block on a calibration batch (sequential calibration).

:func:`find_blocks` picks the model's stack of blocks (the ``nn.ModuleList`` holding the most
calibration targets, e.g. ``encoder.layer`` of BERT, ``model.layers`` of LLaMA).
:class:`BlockRunner` captures what the model feeds the first block (positional and keyword
arguments, per calibration batch) by stopping the forward there, then runs one block at a time:
the caller prunes a block's layers in place and calls :meth:`BlockRunner.advance`, which runs the
now-pruned block to make the next block's inputs. Only one block's inputs are held at a time.
"""
from __future__ import annotations

import torch


class _Stop(Exception):
    """Raised by the capture hook to end the forward at the first block."""


def find_blocks(model: torch.nn.Module, targets: set[str]) -> tuple[str, torch.nn.ModuleList] | None:
    """``(fqn, ModuleList)`` of the block stack holding the most of ``targets`` (module fqns), or None."""
    best, best_count = None, 0
    for fqn, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) < 1:
            continue
        prefix = f"{fqn}." if fqn else ""
        count = sum(1 for t in targets if t.startswith(prefix))
        if count > best_count:
            best, best_count = (fqn, mod), count
    return best


def _hidden(out):
    """The hidden states of a block's output (a tensor, or a tuple / ModelOutput starting with it)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    raise TypeError(f"block output of type {type(out).__name__}: expected a tensor or a tuple starting with one")


class BlockRunner:
    """Inputs of the current block for every calibration batch, advanced block by block."""

    def __init__(self, model: torch.nn.Module, blocks: torch.nn.ModuleList, batches: list[dict]):
        self.blocks = blocks
        self.masks = [b["attention_mask"] for b in batches]
        self.inputs: list[tuple[tuple, dict]] = []
        handle = blocks[0].register_forward_pre_hook(self._capture, with_kwargs=True)
        try:
            with torch.no_grad():
                for enc in batches:
                    try:
                        model(**enc)
                    except _Stop:
                        pass
        finally:
            handle.remove()
        if len(self.inputs) != len(batches):
            raise RuntimeError("sequential calibration: the model's forward never reached its first block")
        self.index = 0

    def _capture(self, module, args, kwargs):
        self.inputs.append((tuple(args), dict(kwargs)))
        raise _Stop

    def _call(self, block, args, kwargs):
        return block(*args, **kwargs)

    @torch.no_grad()
    def run(self, before_batch=None) -> None:
        """Run the current block on every batch (outputs discarded; forward hooks see the inputs).
        ``before_batch(attention_mask)`` is called before each batch."""
        block = self.blocks[self.index]
        for mask, (args, kwargs) in zip(self.masks, self.inputs):
            if before_batch is not None:
                before_batch(mask)
            self._call(block, args, kwargs)

    @torch.no_grad()
    def advance(self) -> None:
        """Run the current (pruned) block and make its outputs the next block's inputs."""
        block = self.blocks[self.index]
        nxt = []
        for args, kwargs in self.inputs:
            h = _hidden(self._call(block, args, kwargs))
            if args:
                nxt.append(((h,) + args[1:], kwargs))
            else:
                nxt.append(((), {**kwargs, "hidden_states": h}))
        self.inputs = nxt
        self.index += 1
