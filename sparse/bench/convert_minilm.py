"""``sparse bench convert-minilm``: MiniLM-L6, 50% unstructured -> 2:4 / transposable 2:4, quality kept.

1. Prune the pretrained MiniLM's converted-by-default Linear weights (attention q/k/v/output and
   FFN, 36 matrices) to 50% by magnitude, per matrix: the "unstructured" reference model.
2. Convert it with :func:`sparse.convert_checkpoint` to 2:4 and transposable 2:4 (``--patterns``),
   without calibration and with each of ``--methods`` (AdaPrune, Wanda, SparseGPT; on BBC News
   *training* texts), sequential and/or not (``--sequential on,off``).
3. Embed held-out BBC News *test* texts with every model (mean pooling over real tokens) and report
   the mean cosine similarity of each model's sentence embeddings to the unstructured model's.
4. With ``--classifier DIR`` (a fine-tuned BBC classifier folder, as ``sparse finetune
   recipes/minilm-bbc-dense.yaml --out DIR`` writes it): the same 50 % unstructured pruning and the
   same conversions of the classifier, each evaluated on the BBC News test split it was not trained
   on (the split and max_length of its ``result.json``): accuracy, mean cosine of mean-pooled last
   hidden states to the unstructured classifier's, per-layer calibration error, conversion time;
   ``--dense-oneshot`` adds the dense classifier pruned one-shot to 2:4-T by SparseGPT.

Run: ``sparse bench convert-minilm [--classifier DIR] [--methods none,adaprune,wanda,sparsegpt]
[--sequential on,off] --json out.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from sparse.bench import harness

DESCRIPTION = "MiniLM unstructured -> 2:4 (+AdaPrune): quality kept"


def magnitude_prune_folder(src: str, dst: str, sparsity: float) -> dict:
    """Copy the HF folder ``src`` to ``dst`` with every default conversion target pruned to ``sparsity``
    (per matrix, by magnitude: :class:`sparse.pruning.UnstructuredPattern`)."""
    from safetensors.torch import load_file, save_file

    from ..convert.targets import TargetFilter
    from ..pruning.patterns import UnstructuredPattern

    pattern = UnstructuredPattern(sparsity)
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    sd = load_file(path)
    targets = TargetFilter()
    pruned = 0
    for name, w in sd.items():
        if targets.wanted(name, w.dtype, tuple(w.shape)):
            sd[name] = torch.where(pattern.mask(w), w, torch.zeros((), dtype=w.dtype))
            pruned += 1
    save_file(sd, path, metadata={"format": "pt"})
    return {"pruned_tensors": pruned}


METHODS = ("none", "adaprune", "wanda", "sparsegpt", "sparsegpt-refit")
METHOD_LABELS = {"adaprune": "AdaPrune", "wanda": "Wanda", "sparsegpt": "SparseGPT",
                 "sparsegpt-refit": "SparseGPT+refit"}
# (transposable, calibration method or None, sequential): the default rows
VARIANTS = ((False, None, False), (False, "adaprune", True), (True, None, False), (True, "adaprune", True))


def variant_name(transposable: bool, method: str | None, sequential: bool = True) -> str:
    name = "2:4-T" if transposable else "2:4"
    if method:
        name += f" +{METHOD_LABELS[method]}" + ("" if sequential else " (non-seq)")
    return name


def variants(patterns: list[str], methods: list[str], sequential: list[bool]) -> list[tuple[bool, str | None, bool]]:
    """Rows for ``patterns`` (``2:4``, ``2:4T``) x ``methods`` (``none`` once) x ``sequential`` settings."""
    out = []
    for pat in patterns:
        t = pat == "2:4T"
        for m in methods:
            if m == "none":
                out.append((t, None, False))
            else:
                out += [(t, m, seq) for seq in sequential]
    return out


def _folder_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _calib_cfg(method: str | None, cfg):
    """The settings object of ``method`` with ``cfg``'s text settings (an AdaPruneConfig or None)."""
    import dataclasses

    from ..convert.calibration import config_for

    if method is None:
        return None
    base = method.removesuffix("-refit")
    out = config_for(base, cfg)
    return dataclasses.replace(out, refit=True) if base != method else out


def _mean_errors(report) -> tuple[float | None, float | None]:
    tot = report.totals()
    return tot.get("calibration_mean_error_before"), tot.get("calibration_mean_error_after")


def classifier_accuracy(folder: str, sparsity: float, calib: list[str], calib_cfg, work: str,
                        batch_size: int = 32, rows_spec=VARIANTS, dense_oneshot: bool = False) -> list[dict]:
    """BBC test accuracy of the fine-tuned classifier in ``folder``: as trained, pruned to ``sparsity``
    unstructured by magnitude, and that model converted as ``rows_spec`` says (``(transposable,
    method or None, sequential)`` per row). Each row also has the mean cosine of its mean-pooled last
    hidden states to the unstructured model's, the mean per-layer calibration error before/after and
    the conversion time. ``dense_oneshot``: also the dense classifier pruned one-shot to 2:4-T with
    SparseGPT (no unstructured step)."""
    import time

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..convert import convert_checkpoint
    from ..data import load_bbc_news

    for need in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(folder, need)):
            raise FileNotFoundError(f"--classifier: {folder} has no {need}; expected a fine-tuned model folder "
                                    f"(sparse finetune recipes/minilm-bbc-dense.yaml --out DIR writes one)")
    cfg = {}
    if os.path.isfile(os.path.join(folder, "result.json")):
        with open(os.path.join(folder, "result.json"), encoding="utf-8") as f:
            cfg = json.load(f).get("recipe_config", {})
    data_cfg, model_cfg = cfg.get("data", {}), cfg.get("model", {})
    data = load_bbc_news(test_size=data_cfg.get("test_size", 0.2), seed=data_cfg.get("split_seed", 0))
    max_length = model_cfg.get("max_length", 128)
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(data.test_texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    labels = torch.tensor(data.test_labels, dtype=torch.long)

    @torch.no_grad()
    def evaluate(path: str) -> tuple[float, torch.Tensor]:
        """(accuracy, mean-pooled last hidden states [docs, hidden]) in one fp32 pass."""
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        correct, pooled = 0, []
        for lo in range(0, len(labels), batch_size):
            ids, mask = enc["input_ids"][lo:lo + batch_size], enc["attention_mask"][lo:lo + batch_size]
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            correct += int((out.logits.argmax(-1) == labels[lo:lo + batch_size]).sum())
            m = mask.unsqueeze(-1).float()
            pooled.append((out.hidden_states[-1] * m).sum(1) / m.sum(1).clamp_min(1))
        return correct / len(labels), torch.cat(pooled)

    acc, _ = evaluate(folder)
    rows = [{"model": "fine-tuned dense", "accuracy": acc}]
    unstructured = os.path.join(work, "classifier-unstructured")
    magnitude_prune_folder(folder, unstructured, sparsity)
    acc, ref = evaluate(unstructured)
    rows.append({"model": f"{sparsity:.0%} unstructured", "accuracy": acc, "cosine_to_unstructured": 1.0})
    jobs = [(unstructured, t, m, seq) for t, m, seq in rows_spec]
    if dense_oneshot:
        jobs.append((folder, True, "sparsegpt", True))
    for src, transposable, method, sequential in jobs:
        name = variant_name(transposable, method, sequential) + (" from dense" if src == folder else "")
        out = os.path.join(work, "classifier-" + _folder_name(name))
        t0 = time.perf_counter()
        report = convert_checkpoint(src, out, "2:4", transposable=transposable,
                                    calibrate=method.removesuffix("-refit") if method else False,
                                    calibration=_calib_cfg(method, calib_cfg),
                                    calibration_texts=calib if method else None,
                                    sequential=sequential if method else None)
        convert_s = time.perf_counter() - t0
        acc, emb = evaluate(out)
        before, after = _mean_errors(report)
        rows.append({"model": name, "accuracy": acc, "convert_s": convert_s,
                     "cosine_to_unstructured": float(torch.nn.functional.cosine_similarity(emb, ref).mean()),
                     "calib_err_before": before, "calib_err_after": after,
                     "layer_errors": {c.name: [c.error_before, c.error_after] for c in report.calibration}})
        shutil.rmtree(out)
    for r in rows:
        r["test_docs"] = len(labels)
    return rows


@torch.no_grad()
def embed(folder: str, texts: list[str], max_length: int, batch_size: int) -> torch.Tensor:
    """Mean-pooled sentence embeddings ``[len(texts), hidden]`` fp32 of the HF model in ``folder``."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for lo in range(0, len(texts), batch_size):
        enc = tok(texts[lo:lo + batch_size], padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append((h * m).sum(1) / m.sum(1).clamp_min(1))
    return torch.cat(out)


def add_arguments(parser) -> None:
    parser.add_argument("--num-texts", type=int, default=200, help="BBC test texts embedded (default 200)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per text (default 128)")
    parser.add_argument("--calibration-texts", type=int, default=64, help="BBC training texts for AdaPrune")
    parser.add_argument("--sparsity", type=float, default=0.5, help="unstructured sparsity of the start model")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--classifier", default=None, metavar="DIR",
                        help="a fine-tuned BBC classifier folder (sparse finetune recipes/minilm-bbc-dense.yaml "
                             "--out DIR): also report the BBC test accuracy of it pruned and converted the same way")
    parser.add_argument("--methods", default="none,adaprune",
                        help="comma-separated calibration methods per pattern: none, adaprune, wanda, sparsegpt, "
                             "sparsegpt-refit (SparseGPT's mask, then AdaPrune's least-squares fit) "
                             "(default none,adaprune)")
    parser.add_argument("--patterns", default="2:4,2:4T", help="comma-separated: 2:4, 2:4T (default both)")
    parser.add_argument("--sequential", default="on",
                        help="on, off or on,off: sequential calibration rows (default on)")
    parser.add_argument("--dense-oneshot", action="store_true",
                        help="with --classifier: also prune the dense classifier one-shot to 2:4-T with SparseGPT")
    parser.add_argument("--skip-pretrained", action="store_true",
                        help="skip the pretrained-MiniLM embedding rows (only the --classifier part)")
    harness.add_common_arguments(parser, threads=2)


def _list_arg(flag: str, text: str, allowed) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if not items or bad:
        raise ValueError(f"{flag}: expected a comma-separated list of {', '.join(allowed)}, got {text!r}")
    return list(dict.fromkeys(items))


COLUMNS = (
    harness.Column("model", "model", align="<"),
    harness.Column("cosine_to_unstructured", "cos to unstr.", ".4f"),
    harness.Column("kept_magnitude_ratio", "|w| kept", ".4f"),
    harness.Column("kept_nonzero_fraction", "nz kept", ".4f"),
    harness.Column("calib_err", "calib err"),
    harness.Column("convert_s", "convert s", ".1f"),
)


def run(args) -> int:
    for name in ("num_texts", "max_length", "calibration_texts"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    if not 0.0 < args.sparsity < 1.0:
        raise ValueError(f"--sparsity: expected a fraction in (0, 1), got {args.sparsity}")
    methods = _list_arg("--methods", args.methods, METHODS)
    patterns = _list_arg("--patterns", args.patterns, ("2:4", "2:4T"))
    seqs = [v == "on" for v in _list_arg("--sequential", args.sequential, ("on", "off"))]
    spec = variants(patterns, methods, seqs)
    if args.skip_pretrained and not args.classifier:
        raise ValueError("--skip-pretrained: only with --classifier DIR (nothing would be measured)")
    harness.setup(args)
    torch.manual_seed(0)

    from ..convert import convert_checkpoint
    from ..convert.adaprune import AdaPruneConfig
    from ..data import load_bbc_news, minilm_path

    data = load_bbc_news()
    texts = data.test_texts[:args.num_texts]
    calib = data.train_texts[:args.calibration_texts]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="convert-minilm-") as work:
        unstructured = os.path.join(work, "unstructured")
        facts = magnitude_prune_folder(minilm_path(), unstructured, args.sparsity)
        spec_pre = [] if args.skip_pretrained else spec
        embed_s = None
        if not args.skip_pretrained:
            with harness.stopwatch() as sw:
                ref = embed(unstructured, texts, args.max_length, 16)
            embed_s = sw.wall_ms / 1e3
            dense = embed(minilm_path(), texts, args.max_length, 16)
            rows.append({"model": "dense (pretrained)", "cosine_to_unstructured":
                         float(torch.nn.functional.cosine_similarity(dense, ref).mean()), "convert_s": None,
                         "kept_magnitude_ratio": None, "calib_err_before": None, "calib_err_after": None})
        calib_cfg = AdaPruneConfig(num_texts=args.calibration_texts, max_length=args.max_length)
        for transposable, method, sequential in spec_pre:
            name = variant_name(transposable, method, sequential)
            out = os.path.join(work, _folder_name(name))
            with harness.stopwatch() as sw:
                report = convert_checkpoint(unstructured, out, "2:4", transposable=transposable,
                                            calibrate=method.removesuffix("-refit") if method else False,
                                            calibration=_calib_cfg(method, calib_cfg),
                                            calibration_texts=calib if method else None,
                                            sequential=sequential if method else None)
            conv_s = sw.wall_ms / 1e3
            emb = embed(out, texts, args.max_length, 16)
            tot = report.totals()
            rows.append({"model": name,
                         "cosine_to_unstructured": float(torch.nn.functional.cosine_similarity(emb, ref).mean()),
                         "convert_s": conv_s, "kept_magnitude_ratio": tot["kept_magnitude_ratio"],
                         "kept_nonzero_fraction": tot["kept_nonzero_fraction"],
                         "density_after": tot["density_after"],
                         "calib_err_before": tot.get("calibration_mean_error_before"),
                         "calib_err_after": tot.get("calibration_mean_error_after")})
            shutil.rmtree(out)
        acc_rows = None
        if args.classifier:
            acc_rows = classifier_accuracy(args.classifier, args.sparsity, calib, calib_cfg, work, rows_spec=spec,
                                           dense_oneshot=args.dense_oneshot)
    result = {"texts": len(texts), "max_length": args.max_length, "calibration_texts": len(calib),
              "sparsity": args.sparsity, "pruned_tensors": facts["pruned_tensors"], "embed_seconds": embed_s,
              "bbc_accuracy": acc_rows, "classifier": args.classifier, "rows": rows}
    print(f"MiniLM-L6, {facts['pruned_tensors']} Linear weights at {args.sparsity:.0%} unstructured (magnitude); "
          f"{len(texts)} BBC test texts x {args.max_length} tokens; calibration on {len(calib)} BBC train texts")
    if rows:
        print(harness.format_table([{**r, "calib_err": None if r["calib_err_before"] is None else
                                     f"{r['calib_err_before']:.3f} -> {r['calib_err_after']:.3f}"} for r in rows],
                                   COLUMNS))
    if acc_rows is None:
        print("BBC accuracy: not measured (pass --classifier DIR, a fine-tuned classifier folder from "
              "`sparse finetune recipes/minilm-bbc-dense.yaml --out DIR`)")
    else:
        print(f"BBC News test accuracy ({acc_rows[0]['test_docs']} docs) of {args.classifier}:")
        print(f"  {'model':<34} {'accuracy':>8} {'cos to unstr.':>13} {'calib err':>15} {'convert s':>9}")
        for r in acc_rows:
            cos = r.get("cosine_to_unstructured")
            err = "" if r.get("calib_err_before") is None else \
                f"{r['calib_err_before']:.3f} -> {r['calib_err_after']:.3f}"
            conv = r.get("convert_s")
            print(f"  {r['model']:<34} {100 * r['accuracy']:7.2f}% {'' if cos is None else f'{cos:.4f}':>13} "
                  f"{err:>15} {'' if conv is None else f'{conv:.1f}':>9}")
    if args.json:
        harness.write_json(args.json, result, force=args.force)
    return 0
