"""Fine-tune a recipe's model on its dataset while pruning with :class:`sparse.SparseOptimizer`.

The loop: tokenise once (max_length, padded), AdamW with a higher learning rate for the fresh
classifier head, linear warm-up/decay, bf16 autocast on CPU (about 2x faster than fp32 here),
gradient clipping, evaluation on the test split after every epoch, then the model (safetensors),
masks (safetensors, bool) and a ``result.json`` are written atomically to the output folder.

Dense runs are cached (accuracy keyed by everything that defines the run except the pruning entries)
so a sparse run with the same model, data, training settings, seed and steps can report
dense-vs-sparse accuracy; the dense model itself is cached too (``teachers/<key>``) as the teacher of
such runs whose recipe says ``distill: {teacher: dense}``. Cache folder: ``$SPARSE_CACHE_DIR`` or
``~/.cache/sparse/finetune``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .optim import SparseOptimizer
from .recipe import Recipe, load_recipe

log = logging.getLogger(__name__)

HEAD_PATTERNS = ("classifier", "pooler", "score")  # parameters trained at train.head_lr


@dataclass
class FinetuneResult:
    """Outcome of one :func:`finetune` run (accuracies are fractions in [0, 1])."""
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cache_dir() -> str:
    return os.environ.get("SPARSE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sparse", "finetune")


def run_key(recipe: Recipe, seed: int, steps: int, n_train: int, n_test: int) -> str:
    """Identity of a run without its pruning entries (so dense and sparse runs pair up)."""
    blob = json.dumps({"model": dataclasses.asdict(recipe.model), "data": dataclasses.asdict(recipe.data),
                       "train": {**dataclasses.asdict(recipe.train), "seed": seed}, "steps": steps,
                       "n_train": n_train, "n_test": n_test}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _model_path(recipe: Recipe) -> str:
    if recipe.model.source == "minilm":
        from .data import minilm_path
        return minilm_path()
    if not os.path.isdir(recipe.model.source):
        raise FileNotFoundError(f"model.source: model folder not found: {recipe.model.source}")
    return recipe.model.source


def _load_data(recipe: Recipe):
    from .data import load_bbc_news  # the only registered dataset (recipe.DATASETS)
    return load_bbc_news(test_size=recipe.data.test_size, seed=recipe.data.split_seed)


def _param_groups(model: torch.nn.Module, lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    groups: dict[tuple[bool, bool], list] = {(h, d): [] for h in (False, True) for d in (False, True)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = any(h in name.split(".") for h in HEAD_PATTERNS)
        decay = p.dim() >= 2  # no decay on biases and norm weights
        groups[(head, decay)].append(p)
    return [{"params": ps, "lr": head_lr if head else lr, "weight_decay": weight_decay if decay else 0.0}
            for (head, decay), ps in groups.items() if ps]


def _atomic_write(path: str, write) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: str, obj: Any) -> None:
    def w(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
    _atomic_write(path, w)


def teacher_dir(key: str) -> str:
    """Cache folder of the dense model of run ``key`` (an HF folder), the ``distill: {teacher: dense}``
    teacher of every sparse run with the same model, data, training settings, seed and steps."""
    return os.path.join(cache_dir(), "teachers", key)


def _save_teacher(key: str, model, opt: SparseOptimizer, result: "FinetuneResult", recipe: Recipe, tok) -> None:
    final = teacher_dir(key)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=".tmp-")
    try:
        save_run(tmp, model, opt, result, recipe, tokenizer=tok)
        if os.path.isdir(final):  # a concurrent run got there first: same run, keep theirs
            return
        os.replace(tmp, final)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _load_teacher(recipe: Recipe, key: str, num_labels: int, train_kwargs: dict):
    """The frozen teacher of ``recipe.distill``: a model folder, or the (cached, else trained now) dense run."""
    from transformers import AutoModelForSequenceClassification

    dc = recipe.distill
    tmp = None
    if dc.teacher == "dense":
        folder = teacher_dir(key)
        if not (train_kwargs["use_cache"] and os.path.isfile(os.path.join(folder, "model.safetensors"))):
            log.warning("distill: no cached dense teacher for this run (%s); fine-tuning it first", key)
            dense = recipe.replace(name=f"{recipe.name}-teacher", pruning=(), distill=None)
            if train_kwargs["use_cache"]:
                finetune(dense, **train_kwargs)  # a cached dense run saves itself as the teacher
            else:
                tmp = tempfile.mkdtemp(prefix="sparse-teacher-")
                folder = os.path.join(tmp, "run")
                finetune(dense, out_dir=folder, **train_kwargs)
    else:
        folder = dc.teacher
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"distill.teacher: {folder} is not a model folder (no config.json); expected "
                                    f"'dense' or a fine-tuned classifier folder such as a `sparse finetune` run")
    try:
        teacher = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if teacher.config.num_labels != num_labels:
        raise ValueError(f"distill.teacher: {folder} classifies {teacher.config.num_labels} labels, the dataset has "
                         f"{num_labels}")
    teacher.eval().requires_grad_(False)
    return teacher, folder


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


@torch.no_grad()
def evaluate(model, input_ids, attention_mask, labels, batch_size: int, bf16: bool) -> float:
    """Accuracy (fraction) of ``model`` on pre-tokenised ``[N, L]`` int64 tensors and ``[N]`` labels."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=input_ids[i:i + batch_size],
                           attention_mask=attention_mask[i:i + batch_size]).logits
        correct += int((logits.argmax(-1) == labels[i:i + batch_size]).sum())
    model.train()
    return correct / max(len(labels), 1)


def finetune(recipe: Any, *, max_steps: int | None = None, epochs: int | None = None, seed: int | None = None,
             out_dir: str | None = None, overwrite: bool = False, limit_train: int | None = None,
             limit_test: int | None = None, progress: bool = True, use_cache: bool = True,
             after: Callable[[torch.nn.Module, Callable[[torch.nn.Module], float]], dict] | None = None
             ) -> FinetuneResult:
    """Fine-tune ``recipe``'s model on its dataset, pruning as the recipe says.

    Args:
        recipe: a ``Recipe``, YAML path or mapping.
        max_steps: stop after this many optimizer steps (the LR schedule spans them).
        epochs, seed: override ``recipe.train``.
        out_dir: where to save ``model.safetensors``, ``masks.safetensors``, ``result.json``
            (nothing saved if ``None``); an existing run there is refused unless ``overwrite``.
        limit_train, limit_test: use only the first N examples (smoke tests).
        after: called as ``after(model, test_accuracy)`` once training ends, where
            ``test_accuracy(m)`` evaluates any model ``m`` on the run's test split; its dict is kept in
            ``result.extra`` (e.g. accuracy of the fine-tuned model pruned one-shot afterwards).
    """
    recipe = load_recipe(recipe)
    for name, v, lo in (("max_steps", max_steps, 1), ("epochs", epochs, 1), ("seed", seed, 0),
                        ("limit_train", limit_train, 1), ("limit_test", limit_test, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    if out_dir is not None and os.path.exists(os.path.join(out_dir, "model.safetensors")) and not overwrite:
        raise FileExistsError(f"out_dir: {out_dir} already holds a run (model.safetensors); pass overwrite=True "
                              f"(--overwrite) or choose another folder")
    tc = recipe.train
    if epochs is not None or seed is not None:
        tc = dataclasses.replace(tc, epochs=epochs or tc.epochs, seed=tc.seed if seed is None else seed)
        recipe = recipe.replace(train=tc)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    transformers.logging.set_verbosity_error()  # "newly initialized head" warnings are expected here

    data = _load_data(recipe)
    tr_x, tr_y = data.train_texts[:limit_train], data.train_labels[:limit_train]
    te_x, te_y = data.test_texts[:limit_test], data.test_labels[:limit_test]
    path = _model_path(recipe)
    tok = AutoTokenizer.from_pretrained(path)
    enc_tr = tok(tr_x, truncation=True, max_length=recipe.model.max_length, padding="max_length", return_tensors="pt")
    enc_te = tok(te_x, truncation=True, max_length=recipe.model.max_length, padding="max_length", return_tensors="pt")
    y_tr = torch.tensor(tr_y, dtype=torch.long)
    y_te = torch.tensor(te_y, dtype=torch.long)

    steps_per_epoch = math.ceil(len(y_tr) / tc.batch_size)
    total = tc.epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, max_steps)
    key = run_key(recipe, tc.seed, total, len(y_tr), len(y_te))
    notes = []
    teacher = None
    if recipe.distill is not None:  # first: training a missing teacher must not disturb this run's RNG
        teacher, where = _load_teacher(recipe, key, len(data.label_names), dict(
            max_steps=max_steps, limit_train=limit_train, limit_test=limit_test, progress=progress,
            use_cache=use_cache))
        log.info("distilling from %s", where)

    torch.manual_seed(tc.seed)  # the fresh head's initialisation and dropout depend on it
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(data.label_names))
    model.train()
    inner = torch.optim.AdamW(_param_groups(model, tc.lr, tc.head_lr, tc.weight_decay))
    warm = int(tc.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        inner, lambda s: (s + 1) / max(warm, 1) if s < warm else max(0.0, (total - s) / max(total - warm, 1)))
    opt = SparseOptimizer(inner, model, recipe)
    for e in recipe.pruning:
        first = e.schedule.at_step if e.schedule.kind == "oneshot" else e.schedule.start_step
        if first > total:
            notes.append(f"pruning entry {e.name!r} starts at step {first} but the run stops at step {total}: "
                         f"its layers stay dense")
    for n in notes:
        log.warning(n)
    if teacher is not None:
        notes.append(f"distilled from {where} (alpha {recipe.distill.alpha}, temperature "
                     f"{recipe.distill.temperature})")

    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(tc.seed)
    epoch_acc: list[float] = []
    step = 0
    t0 = time.perf_counter()
    train_time = 0.0
    bar = tqdm(total=total, desc=f"finetune {recipe.name}", unit="step", disable=not progress)
    epoch = 0
    while step < total:
        perm = torch.randperm(len(y_tr), generator=gen)
        ts = time.perf_counter()
        for i in range(0, len(perm), tc.batch_size):
            idx = perm[i:i + tc.batch_size]
            batch = {"input_ids": enc_tr["input_ids"][idx], "attention_mask": enc_tr["attention_mask"][idx]}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16):
                logits = model(**batch).logits
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(**batch).logits
            if teacher is None:
                loss = F.cross_entropy(logits.float(), y_tr[idx])
            else:
                loss = distill_loss(logits, t_logits, y_tr[idx], recipe.distill.alpha, recipe.distill.temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= total:
                break
        train_time += time.perf_counter() - ts
        epoch += 1
        acc = evaluate(model, enc_te["input_ids"], enc_te["attention_mask"], y_te, tc.eval_batch_size, tc.bf16)
        epoch_acc.append(acc)
        bar.write(f"epoch {epoch}: step {step}/{total}  test accuracy {100 * acc:.2f}%")
    bar.close()
    seconds = time.perf_counter() - t0

    dense_acc = None
    cache_file = os.path.join(cache_dir(), f"{key}.json")
    is_dense = not recipe.pruning and recipe.distill is None
    if use_cache:
        if is_dense:
            os.makedirs(cache_dir(), exist_ok=True)
            _write_json(cache_file, {"accuracy": epoch_acc[-1], "recipe": recipe.name, "seed": tc.seed, "steps": total})
        elif os.path.isfile(cache_file):
            with open(cache_file, encoding="utf-8") as f:
                dense_acc = float(json.load(f)["accuracy"])
    result = FinetuneResult(recipe=recipe.name, seed=tc.seed, steps=total, epochs_run=total / steps_per_epoch,
                            accuracy=epoch_acc[-1], epoch_accuracy=epoch_acc, dense_accuracy=dense_acc,
                            seconds=seconds, seconds_per_step=train_time / max(total, 1), n_train=len(y_tr),
                            n_test=len(y_te), layers=opt.report(), out_dir=out_dir, notes=notes)
    if after is not None:
        result.extra = dict(after(model, lambda m: evaluate(m, enc_te["input_ids"], enc_te["attention_mask"], y_te,
                                                            tc.eval_batch_size, tc.bf16)))
    model.config.id2label = dict(enumerate(data.label_names))
    model.config.label2id = {name: i for i, name in enumerate(data.label_names)}
    if out_dir is not None:
        save_run(out_dir, model, opt, result, recipe, tokenizer=tok)
    if use_cache and is_dense and not os.path.isdir(teacher_dir(key)):
        _save_teacher(key, model, opt, result, recipe, tok)
    return result


def save_run(out_dir: str, model: torch.nn.Module, opt: SparseOptimizer, result: FinetuneResult,
             recipe: Recipe, tokenizer=None) -> None:
    """Write ``model.safetensors``, ``masks.safetensors`` (bool, keyed by weight fqn) and ``result.json``;
    for a Hugging Face model also ``config.json`` and the tokenizer, so that ``out_dir`` is a model folder
    that ``from_pretrained`` and ``sparse convert`` load."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        def write_config(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(config.to_json_string())
        _atomic_write(os.path.join(out_dir, "config.json"), write_config)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    # clone: tied/shared storages cannot be saved by safetensors as views
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(os.path.join(out_dir, "model.safetensors"),
                  lambda tmp: save_file(state, tmp, metadata={"recipe": recipe.name, "format": "pt"}))
    masks = {k: v.contiguous() for k, v in opt.masks.items()}
    _atomic_write(os.path.join(out_dir, "masks.safetensors"),
                  lambda tmp: save_file(masks, tmp, metadata={"recipe": recipe.name,
                                                              "fingerprint": recipe.pruning_fingerprint()}))
    _write_json(os.path.join(out_dir, "result.json"), {**result.to_dict(), "recipe_config": recipe.to_dict()})
