"""What ``sparse bench train`` trains (the models) and how each mode makes it sparse (the modes).

Models (:data:`MODELS`, name -> builder): each builder returns a :class:`Workload` — an fp32 model,
one fixed seeded batch, its loss, and the fully qualified names of the Linear layers a sparse mode
targets ("every encoder Linear"). Layer-sized models (``mlp``, ``bert-base-layer``, ``gpt2-block``)
take hidden states that require grad, so that the input gradient dX is computed as it is for a layer
inside a stack.

Modes (:func:`parse_mode`, an explicit registry of families that raises on unknown names):

* ``dense``: the model as it is, AdamW.
* ``NofM`` / ``NofM-t`` (``2of4``, ``2of4-t``, ``4of8-t``): masked dense weights kept inside an N:M
  (transposable) mask by :class:`sparse.SparseOptimizer` (one-shot at step 0); there is no CPU 2:4
  kernel, so the step runs dense matmuls on zeros: "masked dense, no speed claim".
* ``blockNN``: every target Linear at NN % block sparsity (32 x 32 blocks, L1 norm, through
  :class:`sparse.pruning.patterns.BlockPattern`) swapped to :class:`sparse.nn.BlockSparseLinear`.
* ``mlprunedNN``: :class:`sparse.mlpruning.MLPruner` one-shot (heads and rows, magnitude scores) to
  NN % of the encoder Linear weights pruned, then packed (pruned heads and rows physically removed);
  whole Hugging Face encoders only (``--model minilm``), unavailable elsewhere with the reason.
  ``mlprunedNN-ffn``: the same with heads and FFN intermediate rows only (``recipes/mlpruning-minilm-bbc-ffn``).
* ``packed:DIR``: a packed MLPruning run folder (``sparse finetune mlpruning-minilm-bbc`` saves one;
  :func:`sparse.mlpruning.load_packed`), i.e. the model the fine-tune really trained, with its learned
  per-layer head counts and widths (and ``BlockSparseLinear`` matrices after the block stage); checked
  against the same model with every block-sparse matrix expanded to a dense ``nn.Linear``
  (``--model minilm`` only: the same family and number of labels).

:func:`reference_masks` gives the masks of the masked-dense computation that every mode is checked
against, built from the original weights by the pattern API, independently of the mode's own build.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse.nn import BlockSparseLinear

BLOCK = 32  # blockNN modes: 32 x 32 blocks (the AMX / AVX512-BF16 tile kernels need multiples of 32)
NUM_LABELS = 5


# ------------------------------------------------------------------------------------------- models

@dataclass
class Workload:
    """One model and one fixed batch.

    ``loss(model, inputs)`` runs the forward and returns a scalar fp32 loss; ``inputs`` is a tuple of
    tensors (those with ``requires_grad`` are layer inputs whose gradient is part of the step).
    """
    name: str
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    loss: Callable[[nn.Module, tuple], torch.Tensor]
    targets: list[str]
    tokens: int
    info: dict = field(default_factory=dict)


class FFN(nn.Module):
    """A 2-layer MLP shaped like a transformer FFN: ``dropout(fc2(gelu(fc1(x))))``."""

    def __init__(self, hidden: int, ffn: int, dropout: float = 0.1):
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


def _mse(model, inputs):
    return F.mse_loss(_first(model(*inputs[:-1])).float(), inputs[-1])


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _hidden_batch(batch: int, seq: int, hidden: int, gen: torch.Generator, device) -> tuple:
    x = torch.randn(batch, seq, hidden, generator=gen).to(device).requires_grad_()
    target = torch.randn(batch, seq, hidden, generator=gen).to(device)
    return x, target


def build_mlp(batch: int, seq: int, device, seed: int = 0, hidden: int = 768, ffn: int = 3072) -> Workload:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FFN(hidden, ffn).to(device)
    return Workload("mlp", model, _hidden_batch(batch, seq, hidden, gen, device), _mse, ["fc1", "fc2"],
                    batch * seq, {"shape": f"{hidden}->{ffn}->{hidden}"})


def build_bert_layer(batch: int, seq: int, device, seed: int = 0, hidden: int = 768, ffn: int = 3072,
                     heads: int = 12) -> Workload:
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=hidden, intermediate_size=ffn, num_attention_heads=heads,
                     attn_implementation="eager")
    model = BertLayer(cfg).to(device)
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return Workload("bert-base-layer", model, _hidden_batch(batch, seq, hidden, gen, device), _mse, targets,
                    batch * seq, {"shape": f"hidden {hidden}, FFN {ffn}, {heads} heads",
                                  "attn_implementation": cfg._attn_implementation})


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """Replace transformers' ``Conv1D`` (weight ``[in, out]``) by the equivalent ``nn.Linear`` in place.

    GPT-2 keeps its projections as ``Conv1D``; as ``nn.Linear`` they take the same ``[out, in]`` mask
    convention (N:M groups along the input) and the block-sparse swap as every other model, in every
    mode including dense, so the modes stay comparable.
    """
    from transformers.pytorch_utils import Conv1D

    for name, mod in list(model.named_modules()):
        if isinstance(mod, Conv1D):
            n_in, n_out = mod.weight.shape
            lin = nn.Linear(n_in, n_out, device=mod.weight.device, dtype=mod.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.t())
                lin.bias.copy_(mod.bias)
            model.set_submodule(name, lin)
    return model


class _CausalBlock(nn.Module):
    """A GPT-2 block called with its causal mask (a lone block gets none from a ``GPT2Model``)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        s = x.shape[1]
        mask = torch.full((s, s), torch.finfo(torch.float32).min, device=x.device).triu(1)[None, None]
        return _first(self.block(x, attention_mask=mask))


def build_gpt2_block(batch: int, seq: int, device, seed: int = 0, hidden: int = 768, heads: int = 12,
                     ffn: int | None = None) -> Workload:
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=hidden, n_head=heads, n_inner=ffn, n_positions=max(seq, 1024),
                     attn_implementation="eager")
    block = conv1d_as_linear(GPT2Block(cfg, layer_idx=0))
    model = _CausalBlock(block).to(device)
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return Workload("gpt2-block", model, _hidden_batch(batch, seq, hidden, gen, device), _mse, targets,
                    batch * seq, {"shape": f"hidden {hidden}, FFN {ffn or 4 * hidden}, {heads} heads, causal",
                                  "attn_implementation": cfg._attn_implementation,
                                  "note": "Conv1D projections as equivalent nn.Linear"})


def _ce(model, inputs):
    ids, attention, labels = inputs
    return F.cross_entropy(model(input_ids=ids, attention_mask=attention).logits.float(), labels)


def build_minilm(batch: int, seq: int, device, seed: int = 0) -> Workload:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from sparse.data import minilm_path

    path = minilm_path()
    torch.manual_seed(seed)  # the fresh classifier head
    # quiet: the expected "classifier newly initialised" report and the weight-loading bar
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=NUM_LABELS).to(device)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    if seq > model.config.max_position_embeddings:
        raise ValueError(f"--seq: MiniLM takes at most {model.config.max_position_embeddings} tokens, got {seq}")
    gen = torch.Generator().manual_seed(seed)
    # ids above the special tokens; a real tokenizer's ids would not change the work
    ids = torch.randint(1000, model.config.vocab_size, (batch, seq), generator=gen).to(device)
    labels = torch.randint(0, NUM_LABELS, (batch,), generator=gen).to(device)
    attention = torch.ones(batch, seq, dtype=torch.long, device=device)
    rx = re.compile(r"encoder\.layer\.\d+\.")
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and rx.search(n)]
    return Workload("minilm", model, (ids, attention, labels), _ce, targets, batch * seq,
                    {"shape": "pretrained MiniLM-L6 (hidden 384, FFN 1536, 12 heads) + 5-class head",
                     "path": path, "attn_implementation": model.config._attn_implementation})


MODELS: dict[str, Callable[..., Workload]] = {
    "minilm": build_minilm,
    "bert-base-layer": build_bert_layer,
    "gpt2-block": build_gpt2_block,
    "mlp": build_mlp,
}


# -------------------------------------------------------------------------------------------- modes

@dataclass(frozen=True)
class Mode:
    """One benchmark mode: ``kind`` in ``dense``, ``nm``, ``block``, ``mlpruned``."""
    name: str
    kind: str
    n: int = 0
    m: int = 0
    transposable: bool = False
    sparsity: float = 0.0
    path: str = ""  # packed: the packed MLPruning folder
    rows: tuple[str, ...] = ()  # mlpruned: the row kinds cut (empty: MLPruning's default, all three)

    def pattern(self):
        """The :mod:`sparse.pruning.patterns` object of this mode (None for dense and mlpruned)."""
        from sparse.pruning.patterns import BlockPattern, NMPattern, TransposableNMPattern

        if self.kind == "nm":
            return TransposableNMPattern(self.n, self.m) if self.transposable else NMPattern(self.n, self.m)
        if self.kind == "block":
            return BlockPattern((BLOCK, BLOCK), self.sparsity)
        return None

    def describe(self) -> str:
        if self.kind == "dense":
            return "dense nn.Linear"
        if self.kind == "nm":
            return f"{self.n}:{self.m}{' transposable' if self.transposable else ''} masked dense"
        if self.kind == "block":
            return f"BlockSparseLinear, {BLOCK}x{BLOCK} blocks {100 * self.sparsity:g}% pruned"
        if self.kind == "packed":
            return f"packed MLPruning run {self.path}"
        what = "heads+FFN rows" if self.rows == ("ffn_in",) else "heads+rows"
        return f"MLPruning {what}, {100 * self.sparsity:g}% of the encoder weights pruned, packed"


_NM = re.compile(r"(?P<n>\d+)of(?P<m>\d+)(?P<t>-t)?")
_PCT = re.compile(r"(?P<family>block|mlpruned)(?P<pct>\d+)")
_MLP_FFN = re.compile(r"mlpruned(?P<pct>\d+)-ffn")
MODE_FORMS = ("dense", "NofM (masked dense N:M, e.g. 2of4)", "NofM-t (transposable, e.g. 2of4-t, 4of8-t)",
              "blockNN (NN% of 32x32 blocks pruned, BlockSparseLinear; e.g. block50, block90)",
              "mlprunedNN (MLPruning heads+rows, NN% of encoder weights pruned, packed; e.g. mlpruned50)",
              "mlprunedNN-ffn (the same with heads and FFN rows only, as mlpruning-minilm-bbc-ffn; e.g. mlpruned50-ffn)",
              "packed:DIR (a packed MLPruning run folder, e.g. packed:sparse-runs/mlpruning-minilm-bbc-seed0)")


def parse_mode(name: str) -> Mode:
    """The :class:`Mode` of a ``--modes`` entry; ``ValueError`` listing the valid forms otherwise."""
    text = name.strip()
    if text == "dense":
        return Mode("dense", "dense")
    if text.startswith("packed:"):
        from sparse.mlpruning.io import is_packed_folder

        path = text[len("packed:"):]
        if not is_packed_folder(path):
            raise ValueError(f"--modes: {name!r}: expected a packed MLPruning folder (config.json with an "
                             f"'mlpruning' record, as `sparse finetune mlpruning-minilm-bbc` saves), got "
                             f"{'a missing path' if not os.path.exists(path) else 'a folder without one'}")
        return Mode(text, "packed", path=path)
    match = _NM.fullmatch(text)
    if match:
        n, m = int(match["n"]), int(match["m"])
        if 1 <= n < m <= 32:
            return Mode(text, "nm", n=n, m=m, transposable=bool(match["t"]))
    match = _PCT.fullmatch(text)
    if match and 0 < int(match["pct"]) < 100:
        return Mode(text, match["family"], sparsity=int(match["pct"]) / 100)
    match = _MLP_FFN.fullmatch(text)
    if match and 0 < int(match["pct"]) < 100:
        return Mode(text, "mlpruned", sparsity=int(match["pct"]) / 100, rows=("ffn_in",))
    raise ValueError(f"--modes: unknown mode {name!r}; valid modes: {'; '.join(MODE_FORMS)}")


def unavailable(mode: Mode, work: Workload, device: torch.device) -> str | None:
    """Why ``mode`` cannot run on ``work`` here, or None."""
    if mode.kind == "packed":
        if work.name != "minilm":
            return "a packed MLPruning run is a whole MiniLM classifier: use --model minilm"
        with open(os.path.join(mode.path, "config.json"), encoding="utf-8") as f:
            import json

            labels = len(json.load(f).get("id2label") or {}) or None
        if labels not in (None, NUM_LABELS):
            return f"the packed model classifies {labels} labels; the benchmark's batch has {NUM_LABELS}"
        return None
    if mode.kind == "mlpruned":
        try:
            mlp = importlib.import_module("sparse.mlpruning")
        except Exception as exc:  # missing, or half-installed: either way there is nothing to run
            return f"sparse.mlpruning is not importable ({type(exc).__name__}: {exc})"
        if not hasattr(mlp, "MLPruner"):
            return "sparse.mlpruning has no MLPruner (MLPruning has not landed)"
        try:
            mlp.family_of(work.model)
        except ValueError as exc:
            return f"MLPruner prunes whole Hugging Face encoders (--model minilm): {exc}"
        return None
    pattern = mode.pattern()
    if pattern is not None:
        for fqn in work.targets:
            why = pattern.fits(tuple(work.model.get_submodule(fqn).weight.shape))
            if why is not None:
                return f"{fqn} does not fit {pattern.describe()}: {why}"
    return None


@dataclass
class Prepared:
    """A mode applied to a copy of the workload's model: ready to train and to check."""
    mode: Mode
    model: nn.Module
    optimizer: Any  # torch.optim.Optimizer or sparse.SparseOptimizer (step / zero_grad)
    backend: str
    note: str = ""
    block_masks: dict[str, torch.Tensor] = field(default_factory=dict)  # fqn -> [out/B, in/B] bool
    # The masked-dense computation to check against when the masks are the mode's own (MLPruning's
    # learned heads/rows), else None: the checker masks the original weights by the pattern itself.
    reference: nn.Module | None = None
    reference_masks: dict[str, torch.Tensor] = field(default_factory=dict)  # with ``reference``: fqn -> mask
    # "all": every gradient of the dense model has its counterpart; "shared": only the parameters that
    # kept their name and shape (a packed model lost rows; its embeddings' gradients still pass
    # through every packed layer)
    compare: str = "all"


def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    from sparse.optim import adamw

    # the optimizer sparse finetune runs (fused where it can be); lr small enough that a few steps never
    # change a benchmark's numerics much
    return adamw(model.parameters(), lr=1e-5, weight_decay=0.01)


def build_dense(mode: Mode, work: Workload, device) -> Prepared:
    model = copy.deepcopy(work.model)
    return Prepared(mode, model, _adamw(model), "torch (dense)")


def build_nm(mode: Mode, work: Workload, device) -> Prepared:
    from sparse import SparseOptimizer

    model = copy.deepcopy(work.model)
    recipe = {"name": f"bench-train-{mode.name}", "pruning": [{
        "name": mode.name,
        "targets": {"types": ["Linear"], "include": ["^" + re.escape(f) + "$" for f in work.targets]},
        "pattern": {"type": "nm", "n": mode.n, "m": mode.m, "transposable": mode.transposable},
        "method": {"type": "magnitude"},
        "schedule": {"type": "oneshot", "at_step": 0}}]}
    opt = SparseOptimizer(_adamw(model), model, recipe)  # one-shot at step 0: masks applied here
    why = ("no CPU 2:4 kernel" if torch.device(device).type == "cpu"
           else "sparse bench train does not run SparseLinear24 yet")
    return Prepared(mode, model, opt, "torch (masked dense)", f"masked dense, no speed claim ({why})")


def build_block(mode: Mode, work: Workload, device) -> Prepared:
    model = copy.deepcopy(work.model)
    pattern = mode.pattern()
    block_masks = {}
    for fqn in work.targets:
        lin = model.get_submodule(fqn)
        full = pattern.mask(lin.weight)
        bm = full.reshape(full.shape[0] // BLOCK, BLOCK, full.shape[1] // BLOCK, BLOCK).any(dim=3).any(dim=1)
        block_masks[fqn] = bm
        model.set_submodule(fqn, BlockSparseLinear.from_dense(lin, bm))
    # the backend is known once a forward has run (sparse.ops.last_backend); the caller fills it in
    return Prepared(mode, model, _adamw(model), "", block_masks=block_masks)


def build_mlpruned(mode: Mode, work: Workload, device) -> Prepared:
    """MLPruning one-shot to ``1 - sparsity`` of the encoder Linear weights (heads and rows, or heads and
    FFN rows for ``-ffn``; magnitude scores), packed: a physically smaller dense model. The pruner's masked model is the reference."""
    from sparse.mlpruning import MLPruner

    masked = copy.deepcopy(work.model)
    keep = 1.0 - mode.sparsity
    cfg = {"levels": ["heads", "rows"], "target": keep, **({"rows": list(mode.rows)} if mode.rows else {})}
    pruner = MLPruner(masked, cfg)
    kept = pruner.one_shot(keep)
    packed = pruner.pack()
    return Prepared(mode, packed, _adamw(packed), "torch (packed: heads and rows removed)",
                    f"{100 * kept:.1f}% of the encoder weights remain", reference=masked, compare="shared")


def build_packed(mode: Mode, work: Workload, device) -> Prepared:
    """A packed MLPruning run folder as trained; the reference is the same model with its
    block-sparse matrices expanded to dense ``nn.Linear`` (the masked-dense computation)."""
    from sparse.mlpruning import load_packed

    model = load_packed(mode.path, dtype=torch.float32).to(device)
    ref = copy.deepcopy(model)
    blocks = [n for n, m in ref.named_modules() if isinstance(m, BlockSparseLinear)]
    masks = {}
    for fqn in blocks:
        mod = ref.get_submodule(fqn)
        b = mod.out_features // mod.block_mask.shape[0]
        # pruned blocks' gradients do not exist on the kernel: compare inside the mask only
        masks[f"{fqn}.weight"] = mod.block_mask.repeat_interleave(b, 0).repeat_interleave(b, 1)
        ref.set_submodule(fqn, mod.to_dense())
    record = getattr(model.config, "mlpruning", None) or {}
    kept = record.get("remaining_fraction")
    note = (f"{100 * kept:.1f}% of the encoder weights remain" if kept is not None else "") + (
        f"; {len(blocks)} BlockSparseLinear" if blocks else "")
    backend = "csrc/torch (packed, BlockSparseLinear)" if blocks else "torch (packed: heads and rows removed)"
    return Prepared(mode, model, _adamw(model), backend, note, reference=ref.train(), reference_masks=masks)


BUILDERS: dict[str, Callable[[Mode, Workload, Any], Prepared]] = {
    "dense": build_dense,
    "nm": build_nm,
    "block": build_block,
    "mlpruned": build_mlpruned,
    "packed": build_packed,
}


def build(mode: Mode, work: Workload, device) -> Prepared:
    """Apply ``mode`` to a copy of ``work.model`` (through :data:`BUILDERS`, looked up at call time),
    in train mode (``from_pretrained`` hands models over in eval mode: no dropout)."""
    prep = BUILDERS[mode.kind](mode, work, device)
    prep.model.train()
    return prep


def reference_masks(mode: Mode, work: Workload) -> dict[str, torch.Tensor]:
    """fqn of ``<linear>.weight`` -> bool mask of the masked-dense computation, from the original weights."""
    pattern = mode.pattern()
    if pattern is None:
        return {}
    return {f"{fqn}.weight": pattern.mask(work.model.get_submodule(fqn).weight) for fqn in work.targets}


def fast_dropout_hook() -> tuple[Callable | None, str]:
    """``sparse.nn.use_fast_dropout`` if it exists, with a line saying which dropout runs."""
    nn_mod = importlib.import_module("sparse.nn")
    fn = getattr(nn_mod, "use_fast_dropout", None)
    if fn is None and importlib.util.find_spec("sparse.nn.dropout") is not None:
        fn = getattr(importlib.import_module("sparse.nn.dropout"), "use_fast_dropout", None)
    if fn is None:
        return None, "fast dropout unavailable (sparse.nn.use_fast_dropout does not exist yet): torch dropout"
    return fn, "fast dropout (sparse.nn.use_fast_dropout)"


def remove_dropout(model: nn.Module) -> int:
    """Every ``nn.Dropout`` of ``model`` (``sparse.nn.Dropout`` too) set to p = 0, which returns its input
    unchanged without drawing random numbers; attention dropout of Hugging Face models reads its
    module's ``p``, so it goes too. Returns how many modules had p > 0."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Dropout) and m.p > 0:
            m.p, n = 0.0, n + 1
    return n


def bsr_kernel_family(dtype: torch.dtype, device: torch.device) -> str:
    """Which block-sparse kernel family the blockNN modes use here.

    Mirrors the C++ choice (``csrc/cpu/bsr_isa_select.cpp``: bf16 with blocks of 32k -> AMX, else
    AVX512-BF16, narrowed by ``SPARSE_BSR_ISA``; everything else -> oneDNN brgemm); the extension does
    not export the choice itself.
    """
    if device.type == "cuda":
        return "triton"
    from sparse.ops._bsr_cpu import native_kernels

    kernels = native_kernels()
    if not kernels:
        return "torch gather fallback (sparse._C not built)"
    if dtype == torch.bfloat16:
        want = os.environ.get("SPARSE_BSR_ISA", "")
        for isa in ("amx", "avx512bf16"):
            if isa in kernels and want in ("", isa):
                return isa
    return "brgemm"


def state_bytes(prepared: Prepared) -> int:
    """Bytes of parameters, gradients, optimizer state, masks and buffers of a prepared mode."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for p in prepared.model.parameters():
        add(p)
        add(p.grad)
    for b in prepared.model.buffers():
        add(b)
    opt = prepared.optimizer
    for st in getattr(opt, "state", {}).values():
        for v in st.values():
            add(v)
    for mk in getattr(opt, "masks", {}).values():
        add(mk)
    return total


def mib(n: float) -> float:
    return n / 2 ** 20

