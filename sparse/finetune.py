"""Fine-tune a recipe's model on its dataset while pruning with :class:`sparse.SparseOptimizer`.

:func:`finetune` reads as its steps, each a function of its own:

1. :func:`check_args`, :func:`check_out_dir`, :func:`apply_overrides` (``epochs``, ``seed``, ``bf16: auto``);
2. :func:`load_data`: the recipe's train / validation / test splits (:func:`sparse.data.load_splits`: a
   packaged dataset or the user's CSV / JSON Lines / ``datasets`` files), tokenised once (max_length,
   padded; sentence pairs with ``data.text_pair``); :func:`plan_run`: steps and cache key;
3. :func:`build_model`; :func:`build_optimizer`: AdamW, ``train.head_lr`` for the layers that the
   layer policy calls heads (:func:`sparse.policy.is_head`), linear warm-up/decay, wrapped in
   :class:`~sparse.SparseOptimizer`;
4. :func:`train`: :func:`train_epoch` then :func:`score_split` on the *validation* split, epoch after
   epoch; bf16 autocast where it is faster (``train.bf16: auto``, :func:`resolve_bf16`), gradient
   clipping. The epoch with the best validation macro-F1 (:func:`eligible_epoch`: once every pruning
   entry's mask is final; the last epoch of an MLPruning run) is kept: its model and optimizer state are
   held in memory and restored after the last epoch (the model of that epoch itself, not a re-run); then
   the test split is evaluated once;
5. :func:`cache_accuracy`, :func:`save_run` (model and masks as safetensors, ``result.json``,
   written atomically), :func:`save_teacher`.

``train.fast_dropout`` (default on) runs the model's dropout on :func:`sparse.nn.dropout.use_fast_dropout`.
Entries with ``kernel: block-sparse`` move to ``BlockSparseLinear`` once their mask is final (inside
:class:`~sparse.SparseOptimizer`); the result then reports seconds per step before and after the swap, and
the run folder still holds the dense-shaped model (blocks expanded; ``keep_sparse_modules`` adds the
block-sparse form, :func:`sparse.pruning.kernel_swap.load_block_sparse`).

A recipe with an ``mlpruning`` block (:class:`sparse.mlpruning.MLPruner`) instead of pruning entries
adds :func:`build_pruner` after :func:`build_model`: the pruner's scores and thresholds get their own
AdamW groups, its regulariser is added to the loss (and the hidden-state MSE when it distils), and the
run saves the *packed* model (:func:`sparse.mlpruning.io.write_packed`), reporting its accuracy too. A
packed folder as ``model.source`` (or as ``distill.teacher``) is loaded with
:func:`sparse.mlpruning.load_packed`: the second, block stage starts from the first stage's run.

Results report validation and test accuracy and macro-F1 (:func:`metrics`); ``accuracy`` is the test
accuracy of the chosen epoch's model, ``epoch_accuracy`` the validation accuracy after each epoch.

Dense runs are cached (accuracy keyed by everything that defines the run except the pruning entries)
so a sparse run with the same model, data, training settings, seed and steps can report
dense-vs-sparse accuracy; the dense model itself is cached too (``teachers/<key>``) as the teacher of
such runs whose recipe says ``distill: {teacher: dense}``. The teacher is the caller's to resolve
(:func:`resolve_teacher`, which fine-tunes the dense run first when it is not cached) and to pass as
``finetune(recipe, teacher=...)``. Cache folder: ``$SPARSE_CACHE_DIR`` or ``~/.cache/sparse/finetune``.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .io_utils import atomic_dir, atomic_file, atomic_write_json, atomic_write_text
from .optim import SparseOptimizer, adamw
from .pruning.kernel_swap import block_sparse_modules
from .policy import is_head
from .recipe import MAX_SEED, Recipe, load_recipe

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """Outcome of one :func:`finetune` run (accuracies and macro-F1 are fractions in [0, 1]).

    ``accuracy`` / ``macro_f1``: the test split, evaluated once with the model of the chosen epoch
    ``best_epoch`` (1-based); ``val_accuracy`` / ``val_macro_f1``: that epoch's validation scores;
    ``epoch_accuracy`` / ``epoch_val_macro_f1``: validation after each epoch."""
    recipe: str
    seed: int
    steps: int
    epochs_run: float
    accuracy: float
    epoch_accuracy: list[float]
    dense_accuracy: float | None
    seconds: float
    seconds_per_step: float
    n_train: int
    n_test: int
    layers: list[dict] = field(default_factory=list)
    out_dir: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)   # what ``finetune(after=...)`` returned
    # kernel: entries: the step after which every such layer runs on its kernel, and the mean training
    # seconds per step before and after it (each phase without its first step: one-off costs)
    kernel_step: int | None = None
    seconds_per_step_before_swap: float | None = None
    seconds_per_step_after_swap: float | None = None
    # three splits (issue 16): validation chooses the epoch, the test split is evaluated once at the end
    macro_f1: float | None = None
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    epoch_val_macro_f1: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    n_val: int = 0
    dense_macro_f1: float | None = None
    label_names: list[str] = field(default_factory=list)
    device: str = "cpu"   # where it trained (resolve_device)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Split:
    """One tokenised split: ``[N, L]`` int64 ids and attention mask, ``[N]`` int64 labels; sentence pairs
    also ``[N, L]`` int64 ``token_type_ids`` (None for single texts: the model's default, all zeros)."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, idx, device: torch.device | str | None = None) -> dict:
        """The model inputs of rows ``idx``, without the trailing columns that are padding in every row:
        with right padding (BERT's) every real token keeps its position and its outputs, and a batch of
        short texts costs what its longest text costs, not ``max_length`` (tweets: median 33 of 64).
        ``device``: where the model is (the split itself stays in host memory)."""
        mask = self.attention_mask[idx]
        used = mask.any(0).nonzero()
        width = int(used[-1]) + 1 if len(used) else mask.shape[-1]
        out = {"input_ids": self.input_ids[idx][:, :width], "attention_mask": mask[:, :width]}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids[idx][:, :width]
        if device is not None:
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        return out


@dataclass
class RunData:
    """What :func:`load_data` prepares: the tokenised splits, the label names, the model folder and
    its tokenizer (saved with the run so that the run folder is a model folder). ``val``: the validation
    split that chooses the epoch (None: the test split plays that part, as before issue 16);
    ``fingerprint``: :meth:`sparse.data.TextSplit.fingerprint` of a user's files (None for packaged data)."""
    train: Split
    test: Split
    label_names: list[str]
    model_path: str
    tokenizer: Any
    val: Split | None = None
    fingerprint: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunPlan:
    """How long a run is, and its cache key (:func:`run_key`)."""
    steps_per_epoch: int
    total: int
    key: str


@dataclass
class TrainLog:
    epoch_accuracy: list[float]  # validation accuracy after each epoch
    seconds: float          # training and per-epoch evaluation
    train_seconds: float    # training only
    step_seconds: list[float] = field(default_factory=list)  # each optimizer step's wall time
    epoch_macro_f1: list[float] = field(default_factory=list)  # validation macro-F1 after each epoch
    best_epoch: int | None = None    # 1-based epoch whose model the run keeps (restored after the last)
    notes: list[str] = field(default_factory=list)


def cache_dir() -> str:
    return os.environ.get("SPARSE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sparse", "finetune")


def run_key(recipe: Recipe, seed: int, steps: int, n_train: int, n_test: int,
            data_fingerprint: str | None = None) -> str:
    """Identity of a run without its pruning entries (so dense and sparse runs pair up): the model, every
    data setting (dataset or files and columns, split sizes and seed), the training settings, seed, steps
    and split sizes; ``data_fingerprint``: the content of a user's data files (so that a file edited in
    place is a new run), left out when None. ``train.bf16`` counts as what it resolves to here
    (:func:`resolve_bf16`), so ``auto`` and its value name the same run."""
    train = {**dataclasses.asdict(recipe.train), "seed": seed, "bf16": resolve_bf16(recipe.train.bf16)}
    d = {"model": dataclasses.asdict(recipe.model), "data": dataclasses.asdict(recipe.data),
         "train": train, "steps": steps,
         "n_train": n_train, "n_test": n_test}
    if data_fingerprint is not None:
        d["data_fingerprint"] = data_fingerprint
    blob = json.dumps(d, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def teacher_dir(key: str) -> str:
    """Cache folder of the dense model of run ``key`` (an HF folder), the ``distill: {teacher: dense}``
    teacher of every sparse run with the same model, data, training settings, seed and steps."""
    return os.path.join(cache_dir(), "teachers", key)


def baseline_recipe(recipe: Recipe) -> Recipe:
    """The dense run ``recipe`` compares to and, with ``distill: {teacher: dense}``, distils from: its
    model, data and training settings, with ``distill.teacher_train`` applied (a sparse recipe may train
    at another lr than its dense baseline). Its :func:`plan_run` key finds the cached accuracy and model."""
    if recipe.distill is not None and recipe.distill.teacher_train:
        return recipe.replace(train=recipe.distill.teacher_recipe_train(recipe.train))
    return recipe


def is_dense(recipe: Recipe) -> bool:
    """A plain dense fine-tune: the run whose accuracy and model are cached for the others."""
    return not recipe.pruning and recipe.distill is None and recipe.mlpruning is None


# --- the steps of finetune(), in order ---------------------------------------------------------------

def check_overrides(*, max_steps: int | None = None, epochs: int | None = None, seed: int | None = None,
                    limit_train: int | None = None, limit_test: int | None = None) -> None:
    """Refuse overrides that are not integers in range (seeds: what torch, numpy and scikit-learn take)."""
    for name, v, lo, hi in (("max_steps", max_steps, 1, None), ("epochs", epochs, 1, None),
                            ("seed", seed, 0, MAX_SEED), ("limit_train", limit_train, 1, None),
                            ("limit_test", limit_test, 1, None)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi)):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ValueError(f"{name}: expected an integer {rng}, got {v!r}")


def check_args(recipe: Recipe, teacher: torch.nn.Module | None, **overrides) -> None:
    """:func:`check_overrides`, and a teacher given exactly when ``recipe`` distils."""
    check_overrides(**overrides)
    if recipe.distill is not None and teacher is None:
        raise ValueError(f"teacher: recipe {recipe.name!r} distils (distill.teacher: {recipe.distill.teacher}); "
                         f"pass teacher=resolve_teacher(recipe, ...)")
    if recipe.distill is None and teacher is not None:
        raise ValueError(f"teacher: recipe {recipe.name!r} has no distill block (its alpha and temperature say "
                         f"how to use a teacher); add one or pass no teacher")


def nearest_existing(path: str) -> str:
    """``path`` or its closest ancestor that exists (the folder a new path would be created in)."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def check_out_dir(out_dir: str | None, overwrite: bool, name: str = "out_dir") -> None:
    """Refuse, before any work, an ``out_dir`` the run could not be saved to: a file, a path under a file
    or in a folder that is not writable, or a folder that already holds a run (unless ``overwrite``).
    ``name``: the argument named in messages (``--out`` for the CLI)."""
    if out_dir is None:
        return
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"{name}: {out_dir} is a file, expected a folder")
    if os.path.exists(os.path.join(out_dir, "model.safetensors")) and not overwrite:
        raise FileExistsError(f"{name}: {out_dir} already holds a run (model.safetensors); pass overwrite=True "
                              f"(--overwrite) or choose another folder")
    base = nearest_existing(out_dir)
    if not os.path.isdir(base):
        raise NotADirectoryError(f"{name}: cannot create {out_dir}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: cannot write to {out_dir}: folder {base} is not writable")


def apply_overrides(recipe: Recipe, epochs: int | None, seed: int | None,
                    device: torch.device | str = "cpu") -> Recipe:
    """``recipe`` with ``train.epochs`` / ``train.seed`` replaced where given and ``train.bf16: auto``
    resolved for ``device`` (:func:`resolve_bf16`), so that the run, its cache key and its saved recipe
    say what ran."""
    tc = recipe.train
    return recipe.replace(train=dataclasses.replace(tc, epochs=epochs or tc.epochs,
                                                    seed=tc.seed if seed is None else seed,
                                                    bf16=resolve_bf16(tc.bf16, torch.device(device).type)))


DEVICES = "cpu, cuda, cuda:N or auto"


def resolve_device(device: "torch.device | str | None" = None) -> torch.device:
    """Where :func:`finetune` trains: ``None`` or ``"cpu"`` -> the CPU (the default); ``"auto"`` -> the
    current CUDA device when there is one, else the CPU; ``"cuda"`` / ``"cuda:N"`` -> that GPU, which must
    exist. Raises ``ValueError`` naming ``device`` for anything else."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device: expected {DEVICES}, got {device!r}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device: expected {DEVICES}, got {device!r} (sparse finetune trains on CPUs and "
                         f"CUDA GPUs)")
    if not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asks for a CUDA GPU, but torch sees none here "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use cpu or auto")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {device!r}, but torch sees {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (the CPU for a model with neither)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (torch's own probe, asked once: ``resolve_bf16`` runs every step;
    False where this torch lacks it)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def resolve_bf16(setting: "bool | str", device: str = "cpu") -> bool:
    """``train.bf16`` as a bool: ``true``/``false`` as given; ``auto`` -> bf16 autocast on a CUDA device
    that supports bf16, or on a CPU with AMX (oneDNN's bf16 matmuls run on its tiles, about 2x fp32);
    fp32 on other CPUs, where bf16 autocast is slower than fp32 (a MiniLM tweets step at 1 thread on an
    AVX512-BF16 Xeon without AMX: 1.03 s bf16, 0.60 s fp32)."""
    if setting != "auto":
        return bool(setting)
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_amx()


def model_path(recipe: Recipe) -> str:
    """The folder ``recipe.model.source`` names."""
    if recipe.model.source == "minilm":
        from .data import minilm_path
        return minilm_path()
    if not os.path.isdir(recipe.model.source):
        raise FileNotFoundError(f"model.source: model folder not found: {recipe.model.source}")
    return recipe.model.source


def load_texts(recipe: Recipe, limit_train: int | None = None, limit_test: int | None = None):
    """The recipe's train / validation / test texts (a :class:`sparse.data.TextSplit`,
    :func:`sparse.data.load_splits`), cut to the first N examples: ``limit_test`` caps the validation
    split too (smoke tests evaluate it every epoch)."""
    from .data import load_splits

    return load_splits(recipe.data).cut(limit_train, limit_test, limit_test)


def data_fingerprint(recipe: Recipe, texts) -> str | None:
    """The content fingerprint that goes into the cache key for a user's files (``data.format``), None
    for the packaged datasets (fixed by their package version and the data settings)."""
    return texts.fingerprint() if recipe.data.format is not None else None


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    transformers.logging.set_verbosity_error()  # "newly initialized head" warnings are expected here


def check_max_length(recipe: Recipe, path: str) -> None:
    """``model.max_length`` must fit the model's position embeddings (else the first forward fails with an
    index error deep inside the model)."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    if isinstance(limit, int) and recipe.model.max_length > limit:
        raise ValueError(f"model.max_length: expected at most the model's max_position_embeddings ({limit}) "
                         f"for {path}, got {recipe.model.max_length}")


def load_data(recipe: Recipe, limit_train: int | None = None, limit_test: int | None = None) -> RunData:
    """Load and tokenise the recipe's dataset once, with its model's tokenizer."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    path = model_path(recipe)
    check_max_length(recipe, path)
    texts = load_texts(recipe, limit_train, limit_test)
    for note in texts.notes:
        log.info("data: %s", note)
    tok = AutoTokenizer.from_pretrained(path)
    return RunData(tokenize(tok, texts.train_texts, texts.train_labels, recipe.model.max_length, texts.train_pairs),
                   tokenize(tok, texts.test_texts, texts.test_labels, recipe.model.max_length, texts.test_pairs),
                   list(texts.label_names), path, tok,
                   val=tokenize(tok, texts.val_texts, texts.val_labels, recipe.model.max_length, texts.val_pairs),
                   fingerprint=data_fingerprint(recipe, texts), notes=list(texts.notes))


def tokenize(tok, texts: list[str], labels: list[int], max_length: int, pairs: list[str] | None = None) -> Split:
    """A tokenised :class:`Split` padded to ``max_length``; ``pairs``: the second texts of sentence pairs
    (truncated longest-first with the first)."""
    if not texts:
        empty = torch.zeros(0, max_length, dtype=torch.long)
        return Split(empty, empty.clone(), torch.zeros(0, dtype=torch.long))
    enc = tok(texts, pairs, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    types = enc.get("token_type_ids") if pairs is not None else None
    return Split(enc["input_ids"], enc["attention_mask"], torch.tensor(labels, dtype=torch.long), types)


def plan_run(recipe: Recipe, n_train: int, n_test: int, max_steps: int | None = None,
             data_fingerprint: str | None = None) -> RunPlan:
    """Steps per epoch, total steps (``train.epochs`` of them, at most ``max_steps``) and the cache key."""
    tc = recipe.train
    steps_per_epoch = math.ceil(n_train / tc.batch_size)
    total = tc.epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    return RunPlan(steps_per_epoch, total, run_key(recipe, tc.seed, total, n_train, n_test, data_fingerprint))


def check_teacher_labels(teacher: torch.nn.Module | None, num_labels: int) -> None:
    """A teacher must classify the dataset's labels."""
    if teacher is None:
        return
    n = teacher.config.num_labels
    if n != num_labels:
        raise ValueError(f"distill.teacher: {teacher.name_or_path} classifies {n} labels, the dataset has "
                         f"{num_labels}")


def build_model(recipe: Recipe, data: RunData) -> torch.nn.Module:
    """The pretrained model with a fresh classification head for the dataset's labels, in train mode."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(recipe.train.seed)  # the fresh head's initialisation and dropout depend on it
    from .mlpruning.io import is_packed_folder, load_packed

    if is_packed_folder(data.model_path):  # a packed MLPruning run: its trained classifier comes with it
        model = load_packed(data.model_path, dtype=torch.float32)
        if model.config.num_labels != len(data.label_names):
            raise ValueError(f"model.source: the packed model {data.model_path} classifies {model.config.num_labels} "
                             f"labels, the dataset has {len(data.label_names)}")
        return model.train()
    model = AutoModelForSequenceClassification.from_pretrained(data.model_path, num_labels=len(data.label_names))
    model.config.id2label = dict(enumerate(data.label_names))
    model.config.label2id = {name: i for i, name in enumerate(data.label_names)}
    return model.train()


def use_dropout(model: torch.nn.Module, recipe: Recipe) -> None:
    """``train.fast_dropout``: the fast dropout kernel for the model's dropout (same distribution, other bits);
    off: PyTorch's dropout, bit-exact with plain PyTorch runs."""
    if recipe.train.fast_dropout:
        from .nn.dropout import use_fast_dropout

        use_fast_dropout(model)


def param_groups(model: torch.nn.Module, lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: ``head_lr`` for the layers of the layer policy's heads (:func:`sparse.policy.is_head`:
    freshly initialised, they need a larger step), ``lr`` for the rest; no decay on biases and norms."""
    groups: dict[tuple[bool, bool], list] = {(h, d): [] for h in (False, True) for d in (False, True)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[(is_head(name), p.dim() >= 2)].append(p)
    return [{"params": ps, "lr": head_lr if head else lr, "weight_decay": weight_decay if decay else 0.0}
            for (head, decay), ps in groups.items() if ps]


def build_pruner(model: torch.nn.Module, recipe: Recipe):
    """The :class:`sparse.mlpruning.MLPruner` of a recipe with an ``mlpruning`` block (masks attached to
    ``model``), else None."""
    if recipe.mlpruning is None:
        return None
    from .mlpruning import MLPruner

    return MLPruner(model, recipe.mlpruning)


def build_optimizer(model: torch.nn.Module, recipe: Recipe, total: int, pruner=None):
    """``(SparseOptimizer over AdamW, LR scheduler)``: linear warm-up over ``train.warmup_ratio`` of
    ``total`` steps, then linear decay to 0. A ``pruner``'s scores and thresholds are groups of their own
    (``mlpruning.score_lr`` / ``threshold_lr``, no weight decay)."""
    tc = recipe.train
    groups = param_groups(model, tc.lr, tc.head_lr, tc.weight_decay)
    groups = groups + (pruner.param_groups() if pruner is not None else [])
    inner = adamw(groups)
    warm = int(tc.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        inner, lambda s: (s + 1) / max(warm, 1) if s < warm else max(0.0, (total - s) / max(total - warm, 1)))
    return SparseOptimizer(inner, model, recipe), sched


def run_notes(recipe: Recipe, total: int, teacher: torch.nn.Module | None) -> list[str]:
    """What the result should say about this run: pruning entries that never start (also logged as
    warnings), and the teacher distilled from."""
    notes = []
    for e in recipe.pruning:
        first = e.schedule.at_step if e.schedule.kind == "oneshot" else e.schedule.start_step
        if first > total:
            notes.append(f"pruning entry {e.name!r} starts at step {first} but the run stops at step {total}: "
                         f"its layers stay dense")
        elif e.kernel != "none" and e.final_step >= total:
            notes.append(f"pruning entry {e.name!r} moves to the {e.kernel} kernel after step {e.final_step} but the "
                         f"run stops at step {total}: its layers stay masked dense")
    for n in notes:
        log.warning(n)
    if teacher is not None:
        log.info("distilling from %s", teacher.name_or_path)
        notes.append(f"distilled from {teacher.name_or_path} (alpha {recipe.distill.alpha}, temperature "
                     f"{recipe.distill.temperature})")
    return notes


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float,
                 temperature: float) -> torch.Tensor:
    """``(1 - alpha) * CE + alpha * T^2 * KL(teacher || student)`` at temperature ``T`` (fp32 scalar).

    Args:
        student_logits, teacher_logits: ``[B, C]`` float; labels: ``[B]`` int64.
    """
    s, t = student_logits.float(), teacher_logits.float()
    ce = F.cross_entropy(s, labels)
    kd = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean") * temperature ** 2
    return (1.0 - alpha) * ce + alpha * kd


class TeacherLogits:
    """The frozen teacher's logits per training example, computed on an example's first batch and reused in
    later epochs (``[N, C]`` fp32 on the host, exactly the values :func:`distill_loss` reads).

    The teacher is in eval mode and draws no random numbers, so its logits for an example do not change
    between epochs; reusing them leaves the run's random stream as it was and drops the teacher's forward
    from every step after the first epoch (with fixed-length padding the run is the same up to float
    rounding; with batches cut to their longest sequence the reused logits were computed with another
    batch's padding). Hidden-state distillation needs the teacher's activations each step and does not
    use this.
    """

    def __init__(self, n: int):
        self.logits: torch.Tensor | None = None
        self.known = torch.zeros(n, dtype=torch.bool)

    def get(self, idx: torch.Tensor) -> torch.Tensor | None:
        """``[B, C]`` fp32 logits of examples ``idx`` (``[B]`` int64), or None unless all are known."""
        if self.logits is None or not bool(self.known[idx].all()):
            return None
        return self.logits[idx]

    def put(self, idx: torch.Tensor, logits: torch.Tensor) -> None:
        logits = logits.detach().float().cpu()
        if self.logits is None:
            self.logits = torch.zeros(len(self.known), logits.shape[-1])
        self.logits[idx] = logits
        self.known[idx] = True


def training_loss(model: torch.nn.Module, inputs: dict, labels: torch.Tensor, recipe: Recipe,
                  teacher: torch.nn.Module | None, pruner=None, teacher_logits: TeacherLogits | None = None,
                  idx: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on one batch, or :func:`distill_loss` against ``teacher``'s logits; with an MLPruning
    ``pruner`` plus its regulariser, and the hidden-state MSE when ``mlpruning.distill`` asks for it.
    ``teacher_logits`` with the batch's example indices ``idx``: the teacher runs only for examples it has
    not seen (:class:`TeacherLogits`)."""
    hidden = teacher is not None and pruner is not None and recipe.mlpruning.distill is not None
    dev = inputs["input_ids"].device.type
    memo = teacher_logits if teacher is not None and not hidden and idx is not None else None
    t_logits = memo.get(idx) if memo is not None else None
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=resolve_bf16(recipe.train.bf16, dev)):
        out = model(**inputs, output_hidden_states=True) if hidden else model(**inputs)
        if teacher is not None and t_logits is None:
            with torch.no_grad():
                t_out = teacher(**inputs, output_hidden_states=True) if hidden else teacher(**inputs)
            t_logits = t_out.logits
            if memo is not None:
                memo.put(idx, t_logits)
    if teacher is None:
        loss = F.cross_entropy(out.logits.float(), labels)
    else:
        loss = distill_loss(out.logits, t_logits.to(out.logits.device), labels, recipe.distill.alpha,
                            recipe.distill.temperature)
    if hidden:
        from .mlpruning.distill import hidden_mse_loss

        loss = loss + recipe.mlpruning.distill.hidden_mse * hidden_mse_loss(out.hidden_states, t_out.hidden_states)
    if pruner is not None:
        loss = loss + pruner.regularization_loss()
    return loss


def train_epoch(model: torch.nn.Module, opt: SparseOptimizer, sched, train: Split, perm: torch.Tensor,
                recipe: Recipe, teacher: torch.nn.Module | None, step: int, total: int, bar, pruner=None,
                step_seconds: list[float] | None = None, teacher_logits: TeacherLogits | None = None) -> int:
    """One pass over ``train`` in the order ``perm``, stopping at step ``total``; returns the step reached.
    ``step_seconds``: each step's wall time is appended to it; ``teacher_logits``: see :func:`training_loss`."""
    bs = recipe.train.batch_size
    device = model_device(model)
    for i in range(0, len(perm), bs):
        ts = time.perf_counter()
        idx = perm[i:i + bs]
        loss = training_loss(model, train.inputs(idx, device), train.labels[idx].to(device, non_blocking=True),
                             recipe, teacher, pruner, teacher_logits, idx)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        step += 1
        if step_seconds is not None:
            step_seconds.append(time.perf_counter() - ts)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step >= total:
            break
    return step


@torch.no_grad()
def evaluate(model, input_ids, attention_mask, labels, batch_size: int, bf16: bool) -> float:
    """Accuracy (fraction) of ``model`` on pre-tokenised ``[N, L]`` int64 tensors and ``[N]`` labels."""
    model.eval()
    correct = 0
    device = model_device(model)
    for i in range(0, len(labels), batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=input_ids[i:i + batch_size].to(device),
                           attention_mask=attention_mask[i:i + batch_size].to(device)).logits
        correct += int((logits.argmax(-1).cpu() == labels[i:i + batch_size]).sum())
    model.train()
    return correct / max(len(labels), 1)


def evaluate_split(model: torch.nn.Module, split: Split, recipe: Recipe) -> float:
    """:func:`evaluate` on a tokenised split with the recipe's evaluation batch size and precision."""
    return score_split(model, split, recipe)["accuracy"]


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, batch_size: int, bf16: bool) -> torch.Tensor:
    """``[N]`` int64 predicted classes of ``model`` (eval mode while predicting) on a tokenised split,
    on the CPU whatever ``model``'s device (the batches go to it)."""
    was_training = model.training
    model.eval()
    out = []
    device = model_device(model)
    for i in range(0, len(split), batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**split.inputs(slice(i, i + batch_size), device)).logits
        out.append(logits.argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def metrics(predicted: torch.Tensor, labels: torch.Tensor) -> dict:
    """``{"accuracy", "macro_f1"}`` of ``[N]`` int64 predictions against ``[N]`` int64 labels (fractions).

    Macro-F1: the unweighted mean over the classes present in the labels or the predictions of each
    class's F1 = 2 TP / (2 TP + FP + FN), as scikit-learn's ``f1_score(average="macro")`` (a class never
    predicted correctly scores 0). Both 0.0 for an empty split."""
    if len(labels) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    classes = torch.unique(torch.cat([predicted, labels]))
    f1 = []
    for c in classes:
        tp = int(((predicted == c) & (labels == c)).sum())
        fp = int(((predicted == c) & (labels != c)).sum())
        fn = int(((predicted != c) & (labels == c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": int((predicted == labels).sum()) / len(labels), "macro_f1": sum(f1) / len(f1)}


def score_split(model: torch.nn.Module, split: Split, recipe: Recipe) -> dict:
    """:func:`metrics` of ``model`` on a tokenised split, with the recipe's evaluation batch size and
    precision."""
    bf16 = resolve_bf16(recipe.train.bf16, model_device(model).type)
    return metrics(predict(model, split, recipe.train.eval_batch_size, bf16), split.labels)


def final_mask_step(recipe: Recipe) -> int:
    """The optimizer step after which no pruning entry's mask or layer form changes any more (schedules
    done, kernels swapped); masks that ``refresh_every`` keeps recomputing count as final from then on."""
    return max((e.final_step for e in recipe.pruning), default=0)


def eligible_epoch(recipe: Recipe, step: int, total: int) -> bool:
    """Whether the model after an epoch that ended at ``step`` may be the run's chosen model: the last
    epoch always; others once every pruning entry's mask is final (:func:`final_mask_step`: an earlier
    epoch would be less sparse than the recipe asks), never for an MLPruning run (its thresholds reach
    the target only at the end)."""
    if step >= total:
        return True
    return recipe.mlpruning is None and step >= final_mask_step(recipe)


def train(model: torch.nn.Module, opt: SparseOptimizer, sched, data: RunData, recipe: Recipe, total: int,
          teacher: torch.nn.Module | None = None, progress: bool = True, pruner=None) -> TrainLog:
    """Epochs of :func:`train_epoch` (a fresh ``train.seed``-seeded order each) until ``total`` steps,
    each followed by :func:`score_split` on the validation split (``data.val``; the test split when there
    is none). The model and optimizer state of the eligible epoch (:func:`eligible_epoch`) with the best
    validation macro-F1 (the earliest on ties) are copied in memory and restored after the last epoch,
    so ``model`` and ``opt`` end as that epoch left them (masks, SR-STE weights and all)."""
    from tqdm.auto import tqdm

    held_out = data.val if data.val is not None and len(data.val) else data.test
    what = "validation" if held_out is data.val else "test"
    gen = torch.Generator().manual_seed(recipe.train.seed)
    epoch_acc: list[float] = []
    epoch_f1: list[float] = []
    best: tuple[float, int, dict, dict] | None = None  # (macro-F1, epoch, model state, optimizer state)
    step = 0
    t0 = time.perf_counter()
    train_time = 0.0
    step_seconds: list[float] = []
    bar = tqdm(total=total, desc=f"finetune {recipe.name}", unit="step", disable=not progress)
    memo = TeacherLogits(len(data.train)) if teacher is not None else None
    while step < total:
        perm = torch.randperm(len(data.train), generator=gen)
        ts = time.perf_counter()
        step = train_epoch(model, opt, sched, data.train, perm, recipe, teacher, step, total, bar, pruner,
                           step_seconds, memo)
        train_time += time.perf_counter() - ts
        scores = score_split(model, held_out, recipe)
        epoch_acc.append(scores["accuracy"])
        epoch_f1.append(scores["macro_f1"])
        chosen = ""
        if eligible_epoch(recipe, step, total) and (best is None or scores["macro_f1"] > best[0]):
            last = step >= total  # the final state needs no copy: it is what the model holds at the end
            best = (scores["macro_f1"], len(epoch_acc), {} if last else copy.deepcopy(model.state_dict()),
                    {} if last else copy.deepcopy(opt.state_dict()))
            chosen = "  (best so far)"
        bar.write(f"epoch {len(epoch_acc)}: step {step}/{total}  {what} accuracy {100 * epoch_acc[-1]:.2f}%  "
                  f"macro-F1 {100 * epoch_f1[-1]:.2f}%" + chosen
                  + (f"  remaining {100 * pruner.remaining_fraction(hard=True):.1f}%" if pruner is not None else ""))
    bar.close()
    notes = []
    best_epoch = best[1] if best is not None else None
    if best is not None and best[2]:
        if set(best[2]) == set(model.state_dict()):
            model.load_state_dict(best[2])
            opt.load_state_dict(best[3])
            log.info("keeping the model of epoch %d (best %s macro-F1 %.4f)", best[1], what, best[0])
        else:  # cannot happen for eligible epochs (layer forms are final); kept as a guard
            best_epoch = len(epoch_acc)
            notes.append(f"epoch selection: epoch {best[1]} had the best {what} macro-F1 but the model's layers "
                         f"changed form since; the last epoch's model is kept")
    return TrainLog(epoch_acc, time.perf_counter() - t0, train_time, step_seconds, epoch_f1, best_epoch, notes)


def swap_timing(step_seconds: list[float], kernel_step: int | None) -> tuple[float | None, float | None]:
    """Mean seconds per step before and after the kernel swap (steps ``1..kernel_step`` and the rest), each
    without its phase's first step (first calls, the swap itself) when the phase has more; None if empty."""
    if kernel_step is None:
        return None, None

    def mean(xs: list[float]) -> float | None:
        xs = xs[1:] if len(xs) > 1 else xs
        return sum(xs) / len(xs) if xs else None

    return mean(step_seconds[:kernel_step]), mean(step_seconds[kernel_step:])


def cache_accuracy(recipe: Recipe, plan: RunPlan, accuracy: float, scores: dict | None = None) -> float | None:
    """The dense-accuracy cache: a dense run records its test ``accuracy`` (and ``scores``: its other
    figures, e.g. ``macro_f1``, ``val_macro_f1``) and returns None; any other run returns the accuracy a
    dense run with the same key recorded, or None (:func:`cached_dense` gives the whole record)."""
    cache_file = os.path.join(cache_dir(), f"{plan.key}.json")
    if is_dense(recipe):
        os.makedirs(cache_dir(), exist_ok=True)
        atomic_write_json(cache_file, {**(scores or {}), "accuracy": accuracy, "recipe": recipe.name,
                                       "seed": recipe.train.seed, "steps": plan.total})
        return None
    record = cached_dense(plan)
    return None if record is None else float(record["accuracy"])


def cached_dense(plan: RunPlan) -> dict | None:
    """The record a dense run with ``plan``'s key left in the cache (``accuracy``, and since issue 16
    ``macro_f1``, ``val_accuracy``, ``val_macro_f1``), or None."""
    cache_file = os.path.join(cache_dir(), f"{plan.key}.json")
    if not os.path.isfile(cache_file):
        return None
    with open(cache_file, encoding="utf-8") as f:
        return json.load(f)


def save_run(out_dir: str, model: torch.nn.Module, opt: SparseOptimizer, result: FinetuneResult,
             recipe: Recipe, tokenizer=None, packed: torch.nn.Module | None = None,
             keep_sparse_modules: bool = False) -> None:
    """Write ``model.safetensors``, ``masks.safetensors`` (bool, keyed by weight fqn) and ``result.json``;
    for a Hugging Face model also ``config.json`` and the tokenizer, so that ``out_dir`` is a model folder
    that ``from_pretrained`` and ``sparse convert`` load. Files there are replaced: whether ``out_dir``
    may hold an earlier run is the caller's check (:func:`check_out_dir`). With ``packed`` (an MLPruning
    run) that model is saved instead of ``model``: ``out_dir`` is then a packed folder
    (:func:`sparse.mlpruning.load_packed`). Layers on a block-sparse kernel are saved expanded to dense
    weights; ``keep_sparse_modules`` also writes them as they are (``sparse_modules.safetensors`` and
    ``.json``, :func:`sparse.pruning.kernel_swap.save_block_sparse`)."""
    try:
        _save_run(out_dir, model, opt, result, recipe, tokenizer, packed, keep_sparse_modules)
    except OSError as exc:  # a full or read-only disk: say which run could not be saved
        reason = exc.strerror or str(exc)
        msg = f"cannot write the run to {out_dir}: {reason}"
        raise (OSError(exc.errno, msg, exc.filename) if exc.errno is not None else OSError(msg)) from exc


def _save_run(out_dir: str, model: torch.nn.Module, opt: SparseOptimizer, result: FinetuneResult, recipe: Recipe,
              tokenizer, packed: torch.nn.Module | None = None, keep_sparse_modules: bool = False) -> None:
    from safetensors.torch import save_file

    from .pruning.kernel_swap import SPARSE_MODULES_FILE, SPARSE_MODULES_JSON, dense_state_dict, save_block_sparse

    os.makedirs(out_dir, exist_ok=True)
    if packed is not None:
        from .mlpruning.io import write_packed

        write_packed(packed, out_dir, tokenizer=tokenizer)
    else:
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_json_string"):
            atomic_write_text(os.path.join(out_dir, "config.json"), config.to_json_string())
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        # clone: tied/shared storages cannot be saved by safetensors as views
        state = {k: v.detach().cpu().contiguous().clone() for k, v in dense_state_dict(model).items()}
        with atomic_file(os.path.join(out_dir, "model.safetensors"), force=True) as tmp:
            save_file(state, tmp, metadata={"recipe": recipe.name, "format": "pt"})
        if keep_sparse_modules and block_sparse_modules(model):
            save_block_sparse(model, out_dir)
        else:  # an overwritten run's sparse modules would not match this model
            for name in (SPARSE_MODULES_JSON, SPARSE_MODULES_FILE):
                if os.path.isfile(os.path.join(out_dir, name)):
                    os.remove(os.path.join(out_dir, name))
    masks = {k: v.cpu().contiguous() for k, v in opt.masks.items()}
    with atomic_file(os.path.join(out_dir, "masks.safetensors"), force=True) as tmp:
        save_file(masks, tmp, metadata={"recipe": recipe.name, "fingerprint": recipe.pruning_fingerprint()})
    atomic_write_json(os.path.join(out_dir, "result.json"), {**result.to_dict(), "recipe_config": recipe.to_dict()})


def save_teacher(key: str, model: torch.nn.Module, opt: SparseOptimizer, result: FinetuneResult, recipe: Recipe,
                 tokenizer=None) -> None:
    """Cache a dense run as the teacher of run ``key`` (:func:`teacher_dir`), unless one is there already."""
    final = teacher_dir(key)
    if os.path.isdir(final):
        return
    os.makedirs(os.path.dirname(final), exist_ok=True)
    try:
        with atomic_dir(final) as tmp:
            save_run(tmp, model, opt, result, recipe, tokenizer=tokenizer)
    except FileExistsError:  # a concurrent run with the same key got there first: the same model, keep theirs
        log.info("dense teacher %s was cached meanwhile by another run; keeping that one", final)


def finetune(recipe: Any, *, teacher: torch.nn.Module | None = None, max_steps: int | None = None,
             epochs: int | None = None, seed: int | None = None, out_dir: str | None = None, overwrite: bool = False,
             limit_train: int | None = None, limit_test: int | None = None, progress: bool = True,
             use_cache: bool = True,
             after: Callable[[torch.nn.Module, Callable[[torch.nn.Module], float]], dict] | None = None,
             keep_sparse_modules: bool = False, device: torch.device | str | None = None) -> FinetuneResult:
    """Fine-tune ``recipe``'s model on its dataset, pruning as the recipe says.

    Args:
        recipe: a ``Recipe``, YAML path or mapping.
        teacher: the frozen teacher when the recipe has a ``distill`` block (required then, refused
            otherwise): ``resolve_teacher(recipe, **same_arguments)``.
        max_steps: stop after this many optimizer steps (the LR schedule spans them).
        epochs, seed: override ``recipe.train``.
        out_dir: where to save ``model.safetensors``, ``masks.safetensors``, ``result.json``
            (nothing saved if ``None``); an existing run there is refused unless ``overwrite``.
        limit_train, limit_test: use only the first N examples (smoke tests).
        use_cache: read and write the dense-run cache (:func:`cache_dir`).
        keep_sparse_modules: also save the layers that run on a block-sparse kernel as such
            (``sparse_modules.safetensors`` / ``.json`` next to the dense-shaped model).
        device: where to train (:func:`resolve_device`: ``cpu``, the default, ``cuda``, ``cuda:N`` or
            ``auto``); the model, the teacher and each batch go there, ``train.bf16: auto`` is resolved for
            it, and the saved run and ``result.device`` say which it was. The splits stay in host memory.
        after: called as ``after(model, test_accuracy)`` once training ends (with the chosen epoch's
            model), where ``test_accuracy(m)`` evaluates any model ``m`` on the run's test split; its dict
            is kept in ``result.extra`` (e.g. accuracy of the fine-tuned model pruned one-shot afterwards).

    The validation split chooses the epoch (:func:`train`); the test split is evaluated once, at the end.
    """
    recipe = load_recipe(recipe)
    check_args(recipe, teacher, max_steps=max_steps, epochs=epochs, seed=seed, limit_train=limit_train,
               limit_test=limit_test)
    check_out_dir(out_dir, overwrite)
    dev = resolve_device(device)
    recipe = apply_overrides(recipe, epochs, seed, dev)
    data = load_data(recipe, limit_train, limit_test)
    check_teacher_labels(teacher, len(data.label_names))
    plan = plan_run(recipe, len(data.train), len(data.test), max_steps, data.fingerprint)
    log.info("training on %s (bf16 autocast: %s)", dev, recipe.train.bf16)
    model = build_model(recipe, data).to(dev)  # before the pruner and optimizer: their state follows it
    if teacher is not None:
        teacher = teacher.to(dev)
    use_dropout(model, recipe)
    pruner = build_pruner(model, recipe)
    opt, sched = build_optimizer(model, recipe, plan.total, pruner)
    notes = run_notes(recipe, plan.total, teacher)
    trained = train(model, opt, sched, data, recipe, plan.total, teacher, progress, pruner)
    test = score_split(model, data.test, recipe)  # the test split's one evaluation
    best = trained.best_epoch - 1
    scores = {"macro_f1": test["macro_f1"], "val_accuracy": trained.epoch_accuracy[best],
              "val_macro_f1": trained.epoch_macro_f1[best]}
    base = plan_run(baseline_recipe(recipe), len(data.train), len(data.test), max_steps, data.fingerprint)
    dense_accuracy = cache_accuracy(recipe, base, test["accuracy"], scores) if use_cache else None
    dense_record = cached_dense(base) if use_cache and dense_accuracy is not None else None
    result = FinetuneResult(recipe=recipe.name, seed=recipe.train.seed, steps=plan.total,
                            epochs_run=plan.total / plan.steps_per_epoch, accuracy=test["accuracy"],
                            epoch_accuracy=trained.epoch_accuracy, dense_accuracy=dense_accuracy,
                            seconds=trained.seconds, seconds_per_step=trained.train_seconds / max(plan.total, 1),
                            n_train=len(data.train), n_test=len(data.test), layers=opt.report(), out_dir=out_dir,
                            notes=notes + trained.notes + data.notes, epoch_val_macro_f1=trained.epoch_macro_f1,
                            best_epoch=trained.best_epoch, n_val=len(data.val) if data.val is not None else 0,
                            dense_macro_f1=(dense_record or {}).get("macro_f1"),
                            label_names=list(data.label_names), device=str(dev), **scores)
    if opt.kernel_step is not None and opt.kernel_step < plan.total:
        result.kernel_step = opt.kernel_step
        result.seconds_per_step_before_swap, result.seconds_per_step_after_swap = swap_timing(
            trained.step_seconds, opt.kernel_step)
    if keep_sparse_modules and not block_sparse_modules(model):
        result.notes.append("keep_sparse_modules: no layer runs on a block-sparse kernel; only the dense model "
                            "is saved")
    if after is not None:
        result.extra = dict(after(model, lambda m: evaluate_split(m, data.test, recipe)))
    packed = pack_run(pruner, result, data, recipe) if pruner is not None else None
    if out_dir is not None:
        save_run(out_dir, model, opt, result, recipe, tokenizer=data.tokenizer, packed=packed,
                 keep_sparse_modules=keep_sparse_modules)
    if use_cache and is_dense(recipe):
        save_teacher(plan.key, model, opt, result, recipe, tokenizer=data.tokenizer)
    return result


def pack_run(pruner, result: FinetuneResult, data: RunData, recipe: Recipe) -> torch.nn.Module:
    """The packed model of an MLPruning run; its per-layer report and test accuracy go into
    ``result.extra["mlpruning"]``, a summary into ``result.notes`` (``result.layers`` stays the
    SparseOptimizer report). The packed model is evaluated in fp32 without autocast:
    ``BlockSparseLinear`` takes its own dtype only."""
    report = pruner.report()
    packed = pruner.pack()
    record = packed.config.mlpruning
    packed_accuracy = metrics(predict(packed, data.test, recipe.train.eval_batch_size, bf16=False),
                              data.test.labels)["accuracy"]
    result.notes.append(f"mlpruning: the packed model keeps {100 * record['remaining_fraction']:.1f}% of the dense "
                        f"encoder's Linear weights (target {100 * report['target']:.0f}%); packed test accuracy "
                        f"{100 * packed_accuracy:.2f}% (fp32)")
    result.notes.extend(report["notes"])
    result.extra["mlpruning"] = {"remaining_fraction": report["remaining_fraction"], "target": report["target"],
                                 "encoder_weights": record["encoder_weights"],
                                 "dense_encoder_weights": record["dense_encoder_weights"],
                                 "packed_accuracy": packed_accuracy, "regularizer": dict(pruner.regularizer.last),
                                 "layers": report["layers"]}
    log.info("packed: %.1f%% of the dense encoder weights, test accuracy %.2f%%",
             100 * record["remaining_fraction"], 100 * packed_accuracy)
    return packed


# --- the distillation teacher, resolved by the caller ----------------------------------------------

def load_teacher(folder: str) -> torch.nn.Module:
    """A fine-tuned classifier folder as a frozen fp32 teacher in eval mode."""
    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"distill.teacher: {folder} is not a model folder (no config.json); expected "
                                f"'dense' or a fine-tuned classifier folder such as a `sparse finetune` run")
    from .mlpruning.io import is_packed_folder, load_packed

    if is_packed_folder(folder):  # an MLPruning run (the block stage distils from the head/row stage)
        return load_packed(folder, dtype=torch.float32).eval().requires_grad_(False)
    teacher = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    return teacher.eval().requires_grad_(False)


def resolve_teacher(recipe: Any, *, max_steps: int | None = None, epochs: int | None = None, seed: int | None = None,
                    limit_train: int | None = None, limit_test: int | None = None, progress: bool = True,
                    use_cache: bool = True, device: torch.device | str | None = None) -> torch.nn.Module | None:
    """The teacher that :func:`finetune` needs for ``recipe`` run with these arguments (the same ones, so
    that the dense teacher has the same settings, seed and steps), or None when it does not distil.

    ``distill.teacher`` is a model folder, or ``dense``: the cached dense run of the same settings
    (:func:`teacher_dir`; ``distill.teacher_train`` changes its lr or other optimizer settings from the
    student's); when there is none it is fine-tuned now, and cached (with ``use_cache``) or
    trained in a temporary folder that is removed once loaded. Resolve it before the student's run:
    training a teacher moves torch's global RNG. ``device``: the student's (:func:`resolve_device`), where
    a missing dense teacher trains; the teacher is returned on the CPU and :func:`finetune` moves it.
    """
    recipe = load_recipe(recipe)
    check_overrides(max_steps=max_steps, epochs=epochs, seed=seed, limit_train=limit_train, limit_test=limit_test)
    if recipe.distill is None:
        return None
    dev = resolve_device(device)
    recipe = apply_overrides(recipe, epochs, seed, dev)
    if recipe.distill.teacher != "dense":
        return load_teacher(recipe.distill.teacher)
    recipe = baseline_recipe(recipe)  # distill.teacher_train: the dense run's own settings and cache key
    texts = load_texts(recipe, limit_train, limit_test)
    key = plan_run(recipe, len(texts.train_labels), len(texts.test_labels), max_steps,
                   data_fingerprint(recipe, texts)).key
    folder = teacher_dir(key)
    if use_cache and os.path.isfile(os.path.join(folder, "model.safetensors")):
        return load_teacher(folder)
    log.warning("distill: no cached dense teacher for this run (%s); fine-tuning it first", key)
    dense = recipe.replace(name=f"{recipe.name[:120]}-teacher", pruning=(), distill=None,  # names: <= 128
                           mlpruning=None)
    kw = dict(max_steps=max_steps, limit_train=limit_train, limit_test=limit_test, progress=progress, device=dev)
    if use_cache:
        finetune(dense, **kw)  # a cached dense run saves itself as the teacher (save_teacher)
        return load_teacher(folder)
    with tempfile.TemporaryDirectory(prefix="sparse-teacher-") as tmp:
        finetune(dense, out_dir=os.path.join(tmp, "run"), use_cache=False, **kw)
        return load_teacher(os.path.join(tmp, "run"))
