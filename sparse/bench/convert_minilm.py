"""``sparse bench convert-minilm``: MiniLM-L6, 50% unstructured -> 2:4 / transposable 2:4, quality kept.

1. Prune the pretrained MiniLM's converted-by-default Linear weights (attention q/k/v/output and
   FFN, 36 matrices) to 50% by magnitude, per matrix: the "unstructured" reference model.
2. Convert it with :func:`sparse.convert_checkpoint` to 2:4 and transposable 2:4, each without and
   with ``calibrate`` (AdaPrune, on BBC News *training* texts).
3. Embed held-out BBC News *test* texts with every model (mean pooling over real tokens) and report
   the mean cosine similarity of each model's sentence embeddings to the unstructured model's.
4. With ``--classifier DIR`` (a fine-tuned BBC classifier folder, as ``sparse finetune
   recipes/minilm-bbc-dense.yaml --out DIR`` writes it): the same 50 % unstructured pruning and the
   four conversions of the classifier, each evaluated on the BBC News test split it was not trained
   on (the split and max_length of its ``result.json``).

Run: ``sparse bench convert-minilm [--classifier DIR] --json out.json``.
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


VARIANTS = ((False, False), (False, True), (True, False), (True, True))  # (transposable, calibrate)


def variant_name(transposable: bool, calibrate: bool) -> str:
    return ("2:4-T" if transposable else "2:4") + (" +AdaPrune" if calibrate else "")


def classifier_accuracy(folder: str, sparsity: float, calib: list[str], calib_cfg, work: str,
                        batch_size: int = 32) -> list[dict]:
    """BBC test accuracy of the fine-tuned classifier in ``folder``: as trained, pruned to ``sparsity``
    unstructured by magnitude, and that model converted to 2:4 / 2:4-T without and with AdaPrune."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..convert import convert_checkpoint
    from ..data import load_bbc_news
    from ..finetune import evaluate

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

    def accuracy(path: str) -> float:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        return evaluate(model, enc["input_ids"], enc["attention_mask"], labels, batch_size, bf16=False)

    rows = [{"model": "fine-tuned dense", "accuracy": accuracy(folder)}]
    unstructured = os.path.join(work, "classifier-unstructured")
    magnitude_prune_folder(folder, unstructured, sparsity)
    rows.append({"model": f"{sparsity:.0%} unstructured", "accuracy": accuracy(unstructured)})
    for transposable, calibrate in VARIANTS:
        name = variant_name(transposable, calibrate)
        out = os.path.join(work, "classifier-" + name.replace(":", "").replace(" +", "_"))
        convert_checkpoint(unstructured, out, "2:4", transposable=transposable, calibrate=calibrate,
                           calibration=calib_cfg, calibration_texts=calib)
        rows.append({"model": name, "accuracy": accuracy(out)})
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
    harness.add_common_arguments(parser, threads=2)


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
        with harness.stopwatch() as sw:
            ref = embed(unstructured, texts, args.max_length, 16)
        embed_s = sw.wall_ms / 1e3
        dense = embed(minilm_path(), texts, args.max_length, 16)
        rows.append({"model": "dense (pretrained)", "cosine_to_unstructured":
                     float(torch.nn.functional.cosine_similarity(dense, ref).mean()), "convert_s": None,
                     "kept_magnitude_ratio": None, "calib_err_before": None, "calib_err_after": None})
        calib_cfg = AdaPruneConfig(num_texts=args.calibration_texts, max_length=args.max_length)
        for transposable, calibrate in VARIANTS:
            name = variant_name(transposable, calibrate)
            out = os.path.join(work, name.replace(":", "").replace(" +", "_"))
            with harness.stopwatch() as sw:
                report = convert_checkpoint(unstructured, out, "2:4", transposable=transposable,
                                            calibrate=calibrate, calibration=calib_cfg, calibration_texts=calib)
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
            acc_rows = classifier_accuracy(args.classifier, args.sparsity, calib, calib_cfg, work)
    result = {"texts": len(texts), "max_length": args.max_length, "calibration_texts": len(calib),
              "sparsity": args.sparsity, "pruned_tensors": facts["pruned_tensors"], "embed_seconds": embed_s,
              "bbc_accuracy": acc_rows, "classifier": args.classifier, "rows": rows}
    print(f"MiniLM-L6, {facts['pruned_tensors']} Linear weights at {args.sparsity:.0%} unstructured (magnitude); "
          f"{len(texts)} BBC test texts x {args.max_length} tokens; AdaPrune on {len(calib)} BBC train texts")
    print(harness.format_table([{**r, "calib_err": None if r["calib_err_before"] is None else
                                 f"{r['calib_err_before']:.3f} -> {r['calib_err_after']:.3f}"} for r in rows], COLUMNS))
    if acc_rows is None:
        print("BBC accuracy: not measured (pass --classifier DIR, a fine-tuned classifier folder from "
              "`sparse finetune recipes/minilm-bbc-dense.yaml --out DIR`)")
    else:
        print(f"BBC News test accuracy ({acc_rows[0]['test_docs']} docs) of {args.classifier}:")
        for r in acc_rows:
            print(f"  {r['model']:<20} {100 * r['accuracy']:6.2f}%")
    if args.json:
        harness.write_json(args.json, result, force=args.force)
    return 0
