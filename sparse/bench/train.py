"""``sparse bench train``: whole training steps (forward, backward, optimizer+mask) per sparsity mode.

One model (``--model``: the pretrained MiniLM-L6 with a 5-class head, one BERT-base layer, one GPT-2
small block, or a 2-layer MLP of BERT-base FFN shape) and one fixed batch; every mode of ``--modes``
gets its own copy of the model (see :mod:`sparse.bench.train_modes` for the models and modes).

For each mode, first a correctness check: loss and gradients (of every parameter and of the layer
input) of the mode's model against the masked-dense computation — the original dense model with the
mode's mask applied to its weights (for ``mlprunedNN``: the pruner's masked model, compared on the
gradients that kept their shape after packing) — on the same inputs with dropout off. Tolerances
(:data:`TOLERANCES`): fp32 loss within 1e-4 relative and every gradient within 1e-3 relative L2
error; bf16 autocast (rounding to bf16 after every matmul) loss within 2e-2 and gradients within
5e-2. A mode that fails is reported ``correct: false`` and never timed; a mode that cannot run here is
reported unavailable with the reason.

Then the modes that passed run ``--warmup`` + ``--steps`` training steps interleaved round-robin
(dense first in each round, so machine noise hits all modes alike, all on the same dropout path),
each step timed in three spans: forward (with the loss), backward, optimizer step (with the masking,
for N:M modes). Reported: median / min / max ms per span and per step, tokens/s, the step's speedup
over dense measured in this same run (ratio of the medians, and the median of the per-round
ratios), peak memory of one more step (CPU: the process's RSS
high-water mark, reset through ``/proc/self/clear_refs``; CUDA: ``max_memory_allocated``), and the
breakdown of one profiled step by kind of work (:data:`KINDS`, ops mapped by :data:`OP_KINDS`).

Dropout: every model runs ``sparse.nn.use_fast_dropout`` (``--fast-dropout``, the default), PyTorch's dropout
(``--no-fast-dropout``) or none at all (``--no-dropout``: every dropout at p = 0, the bound on what any
dropout kernel can save). ``--dropout-paths fast,torch,none`` times every mode on each listed path in the
same interleaved rounds (records ``<mode>/<path>``, each against dense on its own path) and gives each record
its step's speedup over the same mode with PyTorch's dropout (``speedup_vs_torch_dropout`` and ``_paired``):
the fast dropout's gain and its bound, measured side by side rather than in separate runs.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import importlib.util
import logging
import math
import os
import platform
import re
import resource
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass

import torch

from sparse.bench import harness
from sparse.bench.harness import cpu_model
from sparse.bench import train_modes as tm

DESCRIPTION = "training-step time per sparsity mode vs dense, with a breakdown by kind of work"

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_MODES = "dense,2of4,2of4-t,block50,block90,mlpruned50"


@dataclass(frozen=True)
class Tolerance:
    """Correctness check limits: ``|loss - ref| <= loss_rtol * |ref|`` and, per gradient tensor,
    ``||g - ref|| <= grad_rtol * max(||ref||, floor * s * sqrt(numel))``, where ``s`` is the median
    per-element RMS of all reference gradients. The floor keeps gradients that are ~0 in exact
    arithmetic (an attention key bias: softmax ignores a per-query constant) from being judged by
    their rounding noise; a wrong kernel still shows against the typical gradient size."""
    loss_rtol: float
    grad_rtol: float
    floor: float = 0.1


# fp32: the block-sparse kernels sum in another order than dense GEMM (measured <= 4e-6 relative).
# bf16 autocast: each matmul's output is rounded to bf16 (2^-8 relative), in other places by the
# block-sparse kernels than by oneDNN, and that compounds through the layers (measured <= 4e-3 on
# MiniLM and the BERT-base layer at block50/block90).
TOLERANCES = {"fp32": Tolerance(1e-4, 1e-3), "bf16": Tolerance(2e-2, 5e-2)}

# ------------------------------------------------------------------------------------------ breakdown
KINDS = ("linear", "attention", "dropout", "elementwise", "copy", "optimizer", "other")

# Explicit table: profiler event name -> kind of work. An event's kind: "optimizer" if any enclosing
# range is the optimizer; else its own name's kind when that is "copy" or "dropout" (autocast's weight
# casts run inside aten::linear but are copies); else the kind of its outermost mapped enclosing event
# (so aten::dropout's mul counts as dropout and a Linear's bias-gradient sum as linear, for dense and
# block-sparse alike); else its own name's; else "other".
_BW = "autograd::engine::evaluate_function: "
OP_KINDS: dict[str, str] = {
    # Linear matmuls, dense and block-sparse, forward and backward
    **dict.fromkeys(("aten::linear", "aten::addmm", "aten::mm", "aten::addmv", "aten::mv", "aten::_addmm_activation",
                     "sparse::bs_linear", "sparse::bs_dds", "sparse::bs_dsd", "sparse::bs_sdd",
                     "sparse::bs_sdd_rowsum", _BW + "AddmmBackward0", _BW + "MmBackward0",
                     _BW + "LinearBackward0",
                     # the autograd Functions of sparse.ops' eager block-sparse path and SparseLinear24
                     "_EagerLinear", _BW + "_EagerLinearBackward", "_Linear24", _BW + "_Linear24Backward"),
                    "linear"),
    # attention: score and context matmuls, softmax, fused SDPA kernels
    **dict.fromkeys(("aten::bmm", "aten::baddbmm", "aten::softmax", "aten::_softmax", "aten::_safe_softmax",
                     "aten::_softmax_backward_data", "aten::scaled_dot_product_attention",
                     "aten::_scaled_dot_product_flash_attention_for_cpu",
                     "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
                     "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_flash_attention_backward",
                     "aten::_scaled_dot_product_efficient_attention",
                     "aten::_scaled_dot_product_efficient_attention_backward",
                     "aten::_scaled_dot_product_cudnn_attention", "aten::_scaled_dot_product_cudnn_attention_backward",
                     _BW + "BmmBackward0", _BW + "SoftmaxBackward0"), "attention"),
    # dropout and its random numbers
    **dict.fromkeys(("aten::dropout", "aten::native_dropout", "aten::native_dropout_backward", "aten::feature_dropout",
                     "aten::bernoulli_", "aten::bernoulli", "aten::rand", "aten::rand_like", "aten::uniform_",
                     _BW + "NativeDropoutBackward0"), "dropout"),
    # other element-wise work (activations, norms, residual adds, the loss)
    **dict.fromkeys(("aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_", "aten::div",
                     "aten::div_", "aten::neg", "aten::pow", "aten::sqrt", "aten::rsqrt", "aten::exp", "aten::tanh",
                     "aten::tanh_backward", "aten::gelu", "aten::gelu_backward", "aten::relu",
                     "aten::threshold_backward",
                     "aten::layer_norm", "aten::native_layer_norm", "aten::native_layer_norm_backward",
                     "aten::masked_fill", "aten::masked_fill_", "aten::where", "aten::fill_", "aten::zero_",
                     "aten::sum", "aten::mean", "aten::mse_loss", "aten::mse_loss_backward", "aten::log_softmax",
                     "aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss",
                     "aten::nll_loss_forward", "aten::nll_loss_backward", "aten::cross_entropy_loss",
                     "aten::embedding", "aten::embedding_backward", "aten::embedding_dense_backward",
                     "aten::tril", "aten::triu", "aten::full", "aten::ones_like", "aten::zeros_like"),
                    "elementwise"),
    # dtype casts and layout copies
    **dict.fromkeys(("aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous",
                     "aten::type_as", _BW + "ToCopyBackward0", _BW + "CloneBackward0"), "copy"),
    # the optimizer (torch's own ranges and this benchmark's around the whole step incl. masking)
    **dict.fromkeys(("bench.optimizer",), "optimizer"),
}
_PREFIX_KINDS = (("Optimizer.", "optimizer"), ("GeneratedBackwardFor_sparse_bs_", "linear"),
                 (_BW + "GeneratedBackwardFor_sparse_bs_", "linear"))
# a fast dropout op of sparse.ops has its own name; anything called *dropout* / *bernoulli* is dropout
_SUBSTRING_KINDS = (("dropout", "dropout"), ("bernoulli", "dropout"), ("philox", "dropout"))


def op_kind(name: str) -> str | None:
    """Kind of one profiler event name by :data:`OP_KINDS` and the prefix/substring rules, else None."""
    kind = OP_KINDS.get(name)
    if kind is not None:
        return kind
    for prefix, k in _PREFIX_KINDS:
        if name.startswith(prefix):
            return k
    low = name.lower()
    for sub, k in _SUBSTRING_KINDS:
        if sub in low:
            return k
    return None


def classify(chain: list[str]) -> str:
    """Kind of the event ``chain[0]`` whose enclosing events are ``chain[1:]`` (innermost first)."""
    kinds = [op_kind(n) for n in chain]
    if "optimizer" in kinds:
        return "optimizer"
    if kinds[0] in ("copy", "dropout"):
        return kinds[0]
    for k in reversed(kinds):
        if k is not None:
            return k
    return "other"


def breakdown(events, cuda: bool) -> tuple[dict, dict, list]:
    """``(fractions, ms, top unmapped ops)`` of a profiled step: self time per kind of work."""
    ms = dict.fromkeys(KINDS, 0.0)
    unmapped: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.device_type != torch.autograd.DeviceType.CPU:
            continue  # GPU kernels: already in their launching op's self_device_time_total
        t = (ev.self_device_time_total if cuda else ev.self_cpu_time_total) / 1e3
        if t <= 0:
            continue
        chain, p = [], ev
        while p is not None:
            chain.append(p.name)
            p = p.cpu_parent
        kind = classify(chain)
        ms[kind] += t
        if kind == "other":
            unmapped[ev.name] += t
    total = sum(ms.values())
    fractions = {k: (v / total if total > 0 else 0.0) for k, v in ms.items()}
    top = sorted(unmapped.items(), key=lambda kv: -kv[1])[:8]
    return fractions, ms, [{"op": n, "ms": v} for n, v in top]


# --------------------------------------------------------------------------------------- arguments
def add_arguments(parser) -> None:
    parser.add_argument("--model", choices=tuple(tm.MODELS), default="bert-base-layer",
                        help="minilm: pretrained MiniLM-L6 + 5-class head; bert-base-layer: one BertLayer (768, "
                             "FFN 3072, 12 heads), random init; gpt2-block: one GPT-2 small block; mlp: 2-layer "
                             "MLP 768->3072->768 (default bert-base-layer)")
    parser.add_argument("--modes", default=DEFAULT_MODES,
                        help=f"comma list of modes, dense always included as the baseline; forms: "
                             f"{'; '.join(tm.MODE_FORMS).replace('%', '%%')} (default {DEFAULT_MODES})")  # argparse %-formats help
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch (default 16)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16",
                        help="bf16: autocast with fp32 master weights; fp32: plain (default bf16)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each mode (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each mode first (default 2)")
    parser.add_argument("--fast-dropout", action=argparse.BooleanOptionalAction, default=True,
                        help="use sparse.nn.use_fast_dropout on every mode's model (default on; reported "
                             "unavailable while it does not exist)")
    parser.add_argument("--no-dropout", action="store_true",
                        help="every dropout of every mode's model at p = 0 (no random numbers drawn): the step "
                             "without dropout, the bound on what any dropout kernel can save; instead of "
                             "--fast-dropout")
    parser.add_argument("--dropout-paths", metavar="LIST", default=None,
                        help="comma list of dropout paths to time every mode on, interleaved in the same rounds: "
                             "fast (sparse.nn.use_fast_dropout), torch (PyTorch's dropout), none (every dropout at "
                             "p = 0, the bound). Each record then names its path and, where the list has torch, "
                             "its step's speedup over the same mode with PyTorch's dropout (ratio of medians and "
                             "paired per round); instead of --fast-dropout / --no-dropout")
    parser.add_argument("--plot", metavar="PATH", default=None,
                        help="write a PNG bar chart of step time and speedup per mode (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time an inference forward (eval mode, no grad) of every mode in the same "
                             "rounds (default: on)")
    harness.add_common_arguments(parser, devices=("cpu", "cuda"))


def parse_modes(text: str) -> list[tm.Mode]:
    """``--modes`` as :class:`Mode` objects, dense first (added when missing), duplicates dropped."""
    modes = [tm.parse_mode(n) for n in harness.csv_arg(text, str, "--modes")]
    out, seen = [tm.parse_mode("dense")], {"dense"}
    for m in modes:
        if m.name not in seen:
            seen.add(m.name)
            out.append(m)
    return out


DROPOUT_PATHS = ("fast", "torch", "none")


def dropout_paths(args) -> list[str]:
    """The dropout paths to time: ``--dropout-paths`` (validated, duplicates dropped), else the one path that
    ``--fast-dropout`` / ``--no-fast-dropout`` / ``--no-dropout`` say."""
    if args.dropout_paths is None:
        return ["none" if args.no_dropout else "fast" if args.fast_dropout else "torch"]
    if args.no_dropout:
        raise ValueError("--dropout-paths: give the paths there (e.g. fast,torch,none) instead of --no-dropout")
    out = []
    for name in harness.csv_arg(args.dropout_paths, str, "--dropout-paths"):
        if name not in DROPOUT_PATHS:
            raise ValueError(f"--dropout-paths: expected a comma list of {', '.join(DROPOUT_PATHS)}; got {name!r}")
        if name not in out:
            out.append(name)
    return out


def _check_plot_target(path: str, force: bool) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        # a ValueError, so that the CLI says it in one line before any work
        raise ValueError("--plot: needs matplotlib, which is not installed (pip install matplotlib)")
    if os.path.exists(path) and not force:
        raise FileExistsError(f"--plot: {path} exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--plot: folder {folder} of {path} does not exist")


# ---------------------------------------------------------------------------------------- one step
def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def _zero_grads(prep: tm.Prepared, work: tm.Workload) -> None:
    prep.optimizer.zero_grad(set_to_none=True)
    for t in work.inputs:
        t.grad = None


def train_step(prep: tm.Prepared, work: tm.Workload, device: torch.device, dtype: str) -> tuple[float, float, float]:
    """One training step; returns (forward, backward, optimizer) ms."""
    rf = torch.autograd.profiler.record_function
    _zero_grads(prep, work)
    with harness.stopwatch(device) as fwd, rf("bench.forward"), _autocast(device, dtype):
        loss = work.loss(prep.model, work.inputs)
    with harness.stopwatch(device) as bwd, rf("bench.backward"):
        loss.backward()
    with harness.stopwatch(device) as opt, rf("bench.optimizer"):
        prep.optimizer.step()
    return fwd.wall_ms, bwd.wall_ms, opt.wall_ms


def infer_step(prep: tm.Prepared, work: tm.Workload, device: torch.device, dtype: str) -> float:
    """One inference forward (eval mode: no dropout; no autograd graph); returns ms."""
    model = prep.model
    model.eval()
    try:
        with torch.no_grad(), harness.stopwatch(device) as fwd, _autocast(device, dtype):
            work.loss(model, work.inputs)
    finally:
        model.train()
    return fwd.wall_ms


# --------------------------------------------------------------------------------------- the check
def _dense_grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    """Gradients by dense parameter name; a BlockSparseLinear's as its dense ``weight`` (zeros in
    pruned blocks), so that every mode compares with the dense model's names and shapes."""
    from sparse.nn import BlockSparseLinear

    out = {}
    for fqn, mod in model.named_modules():
        pre = f"{fqn}." if fqn else ""
        if isinstance(mod, BlockSparseLinear):
            g = mod.weight_data.grad
            out[pre + "weight"] = None if g is None else mod.layout().to_dense(g)
            if mod.bias is not None:
                out[pre + "bias"] = mod.bias.grad
            continue
        for name, p in mod.named_parameters(recurse=False):
            out[pre + name] = p.grad
    return out


def _loss_and_grads(model, work: tm.Workload, device, dtype: str):
    was_training = model.training
    model.eval()  # dropout off: the check compares deterministic computations
    try:
        inputs = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in work.inputs)
        for p in model.parameters():
            p.grad = None
        with _autocast(device, dtype):
            loss = work.loss(model, inputs)
        loss.backward()
        grads = _dense_grads(model)
        for i, t in enumerate(inputs):
            if t.requires_grad:
                grads[f"<input {i}>"] = t.grad
        return float(loss.detach()), grads
    finally:
        model.train(was_training)


def check_mode(prep: tm.Prepared, work: tm.Workload, masks: dict[str, torch.Tensor], device, dtype: str) -> dict:
    """Loss and gradients of the mode's model vs the masked-dense computation (see :data:`TOLERANCES`).

    Gradients of masked weights are compared inside the mask only: outside it the optimizer step
    discards them (masked dense) or they do not exist (block-sparse).
    """
    tol = TOLERANCES[dtype]
    if prep.reference is not None:
        ref, masks = prep.reference, dict(prep.reference_masks)
    else:
        ref = copy.deepcopy(work.model)
        with torch.no_grad():
            for fqn, mk in masks.items():
                ref.get_parameter(fqn).mul_(mk)
    ref_loss, ref_grads = _loss_and_grads(ref, work, device, dtype)
    loss, grads = _loss_and_grads(prep.model, work, device, dtype)
    del ref
    prep.reference = None  # checked once; its memory is not the mode's
    result = {"loss": loss, "loss_ref": ref_loss, "loss_rel_err": abs(loss - ref_loss) / max(abs(ref_loss), 1e-12),
              "max_grad_rel_err": 0.0, "worst_grad": None, "tolerance": asdict(tol), "problems": []}
    if prep.compare == "shared":
        shared = {n for n in set(grads) & set(ref_grads) if grads[n] is None or ref_grads[n] is None
                  or grads[n].shape == ref_grads[n].shape}
        grads = {n: grads[n] for n in shared}
        ref_grads = {n: ref_grads[n] for n in shared}
        if not any(g is not None for g in grads.values()):
            result["problems"].append("no gradient shared with the masked-dense model to compare")
    elif set(grads) != set(ref_grads):
        result["problems"].append(f"parameters differ from the dense model's: "
                                  f"{sorted(set(grads) ^ set(ref_grads))[:6]}")
    result["compared_grads"] = sum(g is not None for g in grads.values())
    rms = [float(r.float().norm()) / math.sqrt(r.numel()) for r in ref_grads.values()
           if r is not None and r.numel()]
    typical = statistics.median(rms) if rms else 0.0
    for name in sorted(set(grads) & set(ref_grads)):
        g, r = grads[name], ref_grads[name]
        if (g is None) != (r is None):
            result["problems"].append(f"{name}: gradient {'missing' if g is None else 'unexpected'}")
            continue
        if g is None:
            continue
        if g.shape != r.shape:
            result["problems"].append(f"{name}: gradient shape {tuple(g.shape)} vs {tuple(r.shape)}")
            continue
        g, r = g.float(), r.float()
        if name in masks:
            g, r = g * masks[name], r * masks[name]
        floor = max(tol.floor * typical * math.sqrt(r.numel()), 1e-30)
        err = float((g - r).norm()) / max(float(r.norm()), floor)
        if not err <= result["max_grad_rel_err"]:  # also takes NaN
            result["max_grad_rel_err"], result["worst_grad"] = err, name
    if not result["loss_rel_err"] <= tol.loss_rtol:
        result["problems"].append(f"loss {loss:.6g} vs masked dense {ref_loss:.6g} "
                                  f"(relative error {result['loss_rel_err']:.2e} > {tol.loss_rtol:g})")
    if not result["max_grad_rel_err"] <= tol.grad_rtol:
        result["problems"].append(f"gradient {result['worst_grad']}: relative error "
                                  f"{result['max_grad_rel_err']:.2e} > {tol.grad_rtol:g}")
    result["correct"] = not result["problems"]
    return result


# ------------------------------------------------------------------------------------------ memory
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s*kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _trim_heap() -> None:
    # freed memory that glibc keeps would otherwise sit in the RSS a step starts from
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_memory(step, device: torch.device) -> dict:
    """Peak memory of one call of ``step``: ``peak_mem_mb`` (process-wide: every mode's model is
    resident, modes being interleaved), ``step_mem_mb`` (the rise above the start: activations,
    gradients, workspaces) and how the peak was measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_mem_mb": tm.mib(peak), "step_mem_mb": tm.mib(peak - base),
                "peak_mem_source": "torch.cuda.max_memory_allocated"}
    _trim_heap()
    base = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        reset = _status_kb("VmHWM") is not None and base is not None
    except OSError:
        reset = False
    step()
    if reset:
        peak_kb = _status_kb("VmHWM")
        return {"peak_mem_mb": peak_kb / 1024, "step_mem_mb": (peak_kb - base) / 1024,
                "peak_mem_source": "RSS high-water of the step (VmHWM after clear_refs)"}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mem_mb": peak_kb / 1024, "step_mem_mb": None,
            "peak_mem_source": "RSS high-water of the process lifetime (ru_maxrss; clear_refs unavailable)"}


# ----------------------------------------------------------------------------------------- machine
def machine_info(device: torch.device, dtype: str) -> dict:
    import sparse
    from sparse.ops._bsr_cpu import native_kernels

    info = {"cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "bsr_kernels": native_kernels(),
            "kernel_family": tm.bsr_kernel_family(DTYPES[dtype], device),
            "backends": {k: str(v) for k, v in sparse.backends().items()}}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------------------------------- run
class _Progress:
    """tqdm when installed, else one plain line per step on stderr."""

    def __init__(self, total: int, desc: str):
        self.bar, self.desc, self.total, self.done = None, desc, total, 0
        if importlib.util.find_spec("tqdm") is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False)

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if note:
                self.bar.set_postfix_str(note)
        else:
            print(f"{self.desc}: {self.done}/{self.total} steps {note}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _record(mode: tm.Mode) -> dict:
    return {"mode": mode.name, "description": mode.describe(), "kind": mode.kind, "available": True,
            "unavailable": None, "correct": None, "check": None, "backend": None, "kernel_family": None,
            "note": "", "forward_ms": None, "backward_ms": None, "optimizer_ms": None, "step_ms": None,
            "infer_ms": None, "infer_speedup_vs_dense": None, "timings": None, "tokens_per_s": None,
            "speedup_vs_dense": None, "speedup_vs_dense_paired": None, "dropout_path": None,
            "speedup_vs_torch_dropout": None, "speedup_vs_torch_dropout_paired": None,
            "peak_mem_mb": None,
            "step_mem_mb": None, "state_mem_mb": None, "peak_mem_source": None, "breakdown": None,
            "breakdown_ms": None, "breakdown_other_ops": None}


def run(args) -> int:
    modes = parse_modes(args.modes)
    for name in ("batch", "seq", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup: expected an integer >= 0, got {args.warmup}")
    if args.plot:
        _check_plot_target(args.plot, args.force)
    device = harness.setup(args)
    torch.manual_seed(args.seed)
    work = tm.MODELS[args.model](args.batch, args.seq, device, seed=args.seed)
    paths = dropout_paths(args)
    fast_fn, fast_line = tm.fast_dropout_hook() if "fast" in paths else (None, "")
    flags = args.dropout_paths is None  # one path, said by the older flags
    path_lines = {"fast": fast_line,
                  "torch": "torch dropout" + (" (--no-fast-dropout)" if flags else ""),
                  "none": f"no dropout ({'--no-dropout: ' if flags else ''}every dropout at p = 0, the bound for "
                          f"any dropout kernel)"}
    dropout_line = "; ".join(path_lines[p] for p in paths)
    if len(paths) > 1:
        dropout_line = f"dropout paths {','.join(paths)}, interleaved: {dropout_line}"
    machine = machine_info(device, args.dtype)
    print(f"sparse bench train: {args.model} ({work.info.get('shape', '')}), batch {args.batch} x seq {args.seq} "
          f"= {work.tokens} tokens, {args.dtype}{' autocast' if args.dtype == 'bf16' else ''}, {args.device}, "
          f"{machine['threads']} threads; {dropout_line}")
    print(f"machine: {machine['cpu_model']} ({machine['cpu_capability']}); block-sparse kernels: "
          f"{machine['kernel_family']}" + (f"; GPU {machine['gpu']}" if "gpu" in machine else ""))

    from sparse.ops import last_backend

    def key(mode: tm.Mode, path: str) -> str:  # one path: the mode's name, as before --dropout-paths
        return mode.name if len(paths) == 1 else f"{mode.name}/{path}"

    records, prepared = [], {}
    checking = _Progress(len(modes) * len(paths), "build + check")  # masks, packing and the check take a while too
    for mode in modes:
        for path in paths:
            name = key(mode, path)
            checking.update(1, name)
            rec = _record(mode)
            rec.update(mode=name, dropout_path=path)
            records.append(rec)
            why = tm.unavailable(mode, work, device)
            if why is None and path == "fast" and fast_fn is None and len(paths) > 1:
                why = fast_line
            if why is not None:
                rec.update(available=False, unavailable=why, note=f"unavailable: {why}")
                log.info("mode %s unavailable: %s", name, why)
                continue
            prep = tm.build(mode, work, device)
            if path == "fast" and fast_fn is not None:
                fast_fn(prep.model, enabled=True)
            if path == "none":
                tm.remove_dropout(prep.model)
            check = check_mode(prep, work, tm.reference_masks(mode, work), device, args.dtype)
            if mode.kind == "block":
                prep.backend = last_backend("block_sparse.linear") or "unknown"
                rec["kernel_family"] = machine["kernel_family"] if prep.backend == "csrc-cpu" else prep.backend
            rec.update(correct=check["correct"], check=check, backend=prep.backend, note=prep.note)
            if not check["correct"]:
                rec["note"] = "WRONG, not timed: " + "; ".join(check["problems"])
                log.warning("mode %s failed the correctness check: %s", name, "; ".join(check["problems"]))
                continue
            prepared[name] = prep
    checking.close()

    live = list(prepared)
    times = {n: ([], [], []) for n in live}
    infer = {n: [] for n in live}
    progress = _Progress((args.warmup + args.steps) * len(live), f"bench train {args.model}")
    try:
        for r in range(args.warmup + args.steps):
            for name in live:  # round-robin: every mode (and dropout path) sees the same machine state
                t = train_step(prepared[name], work, device, args.dtype)
                i = infer_step(prepared[name], work, device, args.dtype) if args.inference else None
                if r >= args.warmup:
                    for lst, v in zip(times[name], t):
                        lst.append(v)
                    if i is not None:
                        infer[name].append(i)
                progress.update(1, f"{name} {sum(t):.0f} ms")
    finally:
        progress.close()

    for rec in records:
        name = rec["mode"]
        if name not in prepared:
            continue
        prep = prepared[name]
        f, b, o = times[name]
        spans = {"forward": harness.summarize(f), "backward": harness.summarize(b),
                 "optimizer": harness.summarize(o),
                 "step": harness.summarize([x + y + z for x, y, z in zip(f, b, o)])}
        if infer[name]:
            spans["inference"] = harness.summarize(infer[name])
        rec["timings"] = {k: {"median_ms": v.median_ms, "min_ms": v.min_ms, "max_ms": v.max_ms,
                              "times_ms": list(v.times_ms)} for k, v in spans.items()}
        rec.update(forward_ms=spans["forward"].median_ms, backward_ms=spans["backward"].median_ms,
                   optimizer_ms=spans["optimizer"].median_ms, step_ms=spans["step"].median_ms,
                   tokens_per_s=work.tokens / (spans["step"].median_ms / 1e3),
                   infer_ms=spans["inference"].median_ms if "inference" in spans else None)
        rec.update(measure_memory(lambda: train_step(prep, work, device, args.dtype), device))
        rec["state_mem_mb"] = tm.mib(tm.state_bytes(prep))
        rec["breakdown"], rec["breakdown_ms"], rec["breakdown_other_ops"] = _profile(prep, work, device, args.dtype)

    by_key = {r["mode"]: r for r in records}
    for mode in modes:
        for path in paths:
            rec = by_key[key(mode, path)]
            _speedup(rec, by_key[key(modes[0], path)], "dense")  # dense on the same dropout path
            if "torch" in paths:
                _speedup(rec, by_key[key(mode, "torch")], "torch_dropout")  # the same mode on PyTorch's dropout
            dense = by_key[key(modes[0], path)]
            if rec["infer_ms"] is not None and dense["infer_ms"] is not None:
                rec["infer_speedup_vs_dense"] = dense["infer_ms"] / rec["infer_ms"]

    _print_tables(records)
    payload = {"benchmark": "train", "config": harness.config(args), "machine": machine,
               "model": {"name": work.name, **{k: v for k, v in work.info.items()}, "tokens": work.tokens,
                         "targets": work.targets},
               "dropout": dropout_line, "fast_dropout": fast_fn is not None, "no_dropout": paths == ["none"],
               "dropout_paths": paths,
               "tolerances": {k: asdict(v) for k, v in TOLERANCES.items()},
               "breakdown_kinds": list(KINDS), "records": records}
    if args.json:
        harness.write_json(args.json, payload, force=args.force)
    if args.plot:
        write_plot(args.plot, records, f"{args.model}, {work.tokens} tokens, {args.dtype}, {machine['cpu_model']}",
                   force=args.force)
    return 0


def _speedup(rec: dict, base: dict, what: str) -> None:
    """``speedup_vs_<what>`` of ``rec`` over ``base`` (step, ratio of the medians) and ``..._paired`` (the median
    of the per-round ratios: both ran in the same round, so a slow phase of a shared machine hits both)."""
    if rec["step_ms"] is None or base["step_ms"] is None:
        return
    rec[f"speedup_vs_{what}"] = base["step_ms"] / rec["step_ms"]
    pairs = zip(base["timings"]["step"]["times_ms"], rec["timings"]["step"]["times_ms"])
    rec[f"speedup_vs_{what}_paired"] = statistics.median(d / m for d, m in pairs)


def _profile(prep, work, device, dtype):
    from torch.profiler import ProfilerActivity, profile

    # Kineto writes a line to stderr at every profiler start and stop (and a GPU-count error on CPU-only
    # machines), which would break the progress output; a level the user set wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        train_step(prep, work, device, dtype)
        if cuda:
            torch.cuda.synchronize(device)
    return breakdown(prof.events(), cuda)


def _print_tables(records: list[dict]) -> None:
    C = harness.Column
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    cols = [C("mode", "mode", align="<"), C("correct", "correct", lambda v: "yes" if v else "NO", missing="-"),
            C("forward_ms", "fwd ms", ".1f", missing="-"), C("backward_ms", "bwd ms", ".1f", missing="-"),
            C("optimizer_ms", "opt ms", ".1f", missing="-"), C("step_ms", "step ms", ".1f", missing="-"),
            C("range", "min-max", missing="-"), C("tokens_per_s", "tok/s", ".0f", missing="-"),
            C("speedup_vs_dense", "vs dense", lambda v: f"{v:.2f}x", missing="-"),
            C("speedup_vs_dense_paired", "paired", lambda v: f"{v:.2f}x", missing="-"),
            C("speedup_vs_torch_dropout_paired", "vs torch dropout", lambda v: f"{v:.2f}x", missing="-"),
            C("infer_ms", "infer ms", ".1f", missing="-"),
            C("infer_speedup_vs_dense", "infer vs dense", lambda v: f"{v:.2f}x", missing="-"),
            C("peak_mem_mb", "peak MB", ".0f", missing="-"), C("step_mem_mb", "step MB", ".0f", missing="-"),
            C("backend", "backend", align="<", missing="-"), C("note", "note", align="<")]
    rows = []
    for r in records:
        row = dict(r)
        if r["timings"]:
            s = r["timings"]["step"]
            row["range"] = f"{s['min_ms']:.0f}-{s['max_ms']:.0f}"
        if r["kernel_family"]:
            row["backend"] = f"{r['backend']} ({r['kernel_family']})"
        rows.append(row)
    print(harness.format_table(rows, cols))
    timed = [r for r in records if r["breakdown"]]
    if timed:
        bcols = [C("mode", "step breakdown", align="<")] + [C(k, k, pct) for k in KINDS]
        print()
        print(harness.format_table([{"mode": r["mode"], **r["breakdown"]} for r in timed], bcols))


def write_plot(path: str, records: list[dict], title: str, *, force: bool = False) -> None:
    """PNG: stacked forward/backward/optimizer ms per timed mode, and the step speedup over dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparse.io_utils import atomic_file

    timed = [r for r in records if r["step_ms"] is not None]
    names = [r["mode"] for r in timed]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) + 4), 4.5))
    bottom = [0.0] * len(timed)
    for key, label in (("forward_ms", "forward"), ("backward_ms", "backward"), ("optimizer_ms", "optimizer")):
        vals = [r[key] for r in timed]
        ax1.bar(names, vals, bottom=bottom, label=label)
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax1.set_ylabel("ms per training step (median)")
    ax1.legend()
    masked = [r["kind"] == "nm" for r in timed]  # masked dense: measured, but no speed claim
    ax2.bar(names, [r["speedup_vs_dense"] for r in timed], color=["lightgrey" if m else "tab:green" for m in masked])
    for i, m in enumerate(masked):
        if m:
            ax2.text(i, 0.05, "masked dense,\nno speed claim", ha="center", va="bottom", fontsize=7, rotation=90)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_ylabel("step speedup vs dense (same run)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path, force=force) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
