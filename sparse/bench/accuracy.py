"""``sparse bench accuracy``: fine-tune several recipes with the same seeds, split and steps; compare to dense.

    sparse bench accuracy --recipes recipes/minilm-bbc-dense.yaml recipes/minilm-bbc-2of4.yaml \\
        --seeds 0 1 2 --json out.json

Runs one fine-tune at a time (the CPU is the bottleneck), writes the JSON after every run so partial
results survive, and prints per recipe the mean and spread (sample std) over seeds of the validation and
test accuracy and macro-F1, and the gaps to the dense recipe (the first recipe without pruning entries).
Each run's epoch is chosen on its validation split and its test split is evaluated once
(:func:`sparse.finetune.train`); recipes are *ranked by validation macro-F1* (``rank``), never by test.

``--oneshot-from RECIPE ...`` also prunes each finished dense model one-shot with those recipes'
pruning entries (no retraining) and evaluates it: the gap that pruning during fine-tuning must close.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import statistics

from sparse.bench import harness

DESCRIPTION = "fine-tune recipes over seeds: accuracy and gap to dense"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipes", nargs="+", default=None, help="recipe YAML files (include a dense one)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="instead of training: merge the runs of these --json files (e.g. seeds run in "
                             "parallel processes) and print the summary (and write it to --json)")
    parser.add_argument("--save-dir", default=None, metavar="DIR",
                        help="save every fine-tuned model (an HF folder) to DIR/<recipe>-seed<S>")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (default: 0)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each run after N optimizer steps")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipes' train.epochs")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --json and skip those (recipe, seed) pairs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--oneshot-from", nargs="+", default=[], metavar="RECIPE",
                        help="after each dense run, prune its model one-shot with these recipes' pruning "
                             "entries (no retraining) and report that accuracy too")
    # --json is rewritten after every run, so partial results survive; --threads 1 is faster on a
    # contended machine
    harness.add_common_arguments(parser, devices=("cpu", "cuda"))  # where each run trains


def oneshot_after(recipes) -> "callable":
    """An ``after`` hook for :func:`sparse.finetune.finetune`: for each recipe, a copy of the trained
    model pruned at once with the recipe's entries (their final sparsity, no retraining), evaluated."""
    import torch

    from ..optim import SparseOptimizer
    from ..recipe import Schedule

    def after(model, test_accuracy) -> dict:
        out = {}
        for recipe in recipes:
            m = copy.deepcopy(model)
            now = recipe.replace(pruning=tuple(dataclasses.replace(e, schedule=Schedule("oneshot", at_step=0),
                                                                   refresh_every=0) for e in recipe.pruning))
            # constructing the optimizer computes the masks and multiplies them into the weights
            opt = SparseOptimizer(torch.optim.SGD(m.parameters(), lr=0.0), m, now)
            if not all(r["valid"] in (True, None) for r in opt.report()):
                raise RuntimeError(f"one-shot {recipe.name}: a mask is invalid")
            out[f"oneshot:{recipe.name}"] = test_accuracy(m)
        return out
    return after


def _mean_std(xs: list) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(runs: list[dict]) -> list[dict]:
    """Per recipe: n, mean, std (sample; 0 for one run), min, max test accuracy and the gap to dense (points);
    mean and std of test macro-F1 (``macro_f1``, ``macro_f1_std``), validation accuracy and macro-F1
    (``val_accuracy``, ``val_macro_f1``, ``val_macro_f1_std``) and their gaps to dense (``f1_gap_points``,
    ``val_f1_gap_points``). Rows come ranked by mean validation macro-F1 (``rank`` 1 is the best; rows
    without validation figures, e.g. one-shot prunings or runs from before issue 16, last, unranked)."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["recipe"], []).append(r)
    for r in runs:  # one-shot prunings of dense models (--oneshot-from) as rows of their own
        for key, acc in (r.get("extra") or {}).items():
            if key.startswith("oneshot:"):
                by.setdefault(f"{key[len('oneshot:'):]} (one-shot, no retrain)", []).append(
                    {"seed": r["seed"], "accuracy": acc, "dense": False})
    dense = next((name for name, rs in by.items() if rs and rs[0]["dense"]), None)
    rows = []
    for name, rs in by.items():
        accs = [r["accuracy"] for r in rs]
        kept = [r["extra"]["mlpruning"]["remaining_fraction"] for r in rs
                if (r.get("extra") or {}).get("mlpruning")]
        f1, f1_std = _mean_std([r.get("macro_f1") for r in rs])
        val_acc, _ = _mean_std([r.get("val_accuracy") for r in rs])
        val_f1, val_f1_std = _mean_std([r.get("val_macro_f1") for r in rs])
        rows.append({"recipe": name, "n": len(accs), "mean": statistics.fmean(accs),
                     "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "min": min(accs), "max": max(accs),
                     "seeds": [r["seed"] for r in rs], "accuracies": accs,
                     "encoder_kept": statistics.fmean(kept) if kept else None,
                     "macro_f1": f1, "macro_f1_std": f1_std, "val_accuracy": val_acc, "val_macro_f1": val_f1,
                     "val_macro_f1_std": val_f1_std})
    if dense is not None:
        dense_by_seed = {r["seed"]: r["accuracy"] for r in by[dense]}
        dmean = next(r["mean"] for r in rows if r["recipe"] == dense)
        drow = next(r for r in rows if r["recipe"] == dense)
        for row in rows:
            row["gap_points"] = 100 * (row["mean"] - dmean)
            paired = [a - dense_by_seed[s] for s, a in zip(row["seeds"], row["accuracies"]) if s in dense_by_seed]
            row["paired_gap_points"] = 100 * statistics.fmean(paired) if paired else None
            for key, gap in (("macro_f1", "f1_gap_points"), ("val_macro_f1", "val_f1_gap_points")):
                row[gap] = (100 * (row[key] - drow[key]) if row[key] is not None and drow[key] is not None
                            else None)
    ranked = sorted((r for r in rows if r["val_macro_f1"] is not None), key=lambda r: -r["val_macro_f1"])
    for i, row in enumerate(ranked, 1):
        row["rank"] = i
    return ranked + [dict(r, rank=None) for r in rows if r["val_macro_f1"] is None]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _pts(x: float) -> str:
    return f"{100 * x:.2f}"


COLUMNS = (
    harness.Column("rank", "rank", missing="-"), harness.Column("recipe", "recipe", align="<", width=36),
    harness.Column("n", "runs"),
    harness.Column("val_macro_f1", "val F1", _pct, missing="-"), harness.Column("val_accuracy", "val acc", _pct,
                                                                               missing="-"),
    harness.Column("mean", "test acc", _pct), harness.Column("std", "std", _pts),
    harness.Column("macro_f1", "test F1", _pct, missing="-"), harness.Column("macro_f1_std", "std", _pts, missing="-"),
    harness.Column("gap_points", "acc vs dense", lambda x: f"{x:+.2f} pt", missing="-"),
    harness.Column("f1_gap_points", "F1 vs dense", lambda x: f"{x:+.2f} pt", missing="-"),
    harness.Column("encoder_kept", "encoder kept", _pct, missing="-"),  # MLPruning: packed / dense weights
)


def format_table(rows: list[dict]) -> str:
    return harness.format_table(rows, COLUMNS)


def run(args) -> int:
    from ..finetune import finetune, is_dense, resolve_teacher
    from ..recipe import load_recipe

    if args.resume and not args.json:
        raise ValueError("--resume: needs --json FILE holding the earlier runs")
    # --resume reads and extends its --json file; otherwise an existing one is refused without --force
    harness.setup(args, json_exists_ok=args.resume)
    if args.merge:
        runs = []
        for path in args.merge:
            with open(path, encoding="utf-8") as f:
                runs.extend(json.load(f)["runs"])
        keys = [(r["recipe"], r["seed"]) for r in runs]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"--merge: the same (recipe, seed) runs appear more than once: {dup}")
        if args.json:
            harness.write_json(args.json, {"runs": runs, "summary": summarize(runs)}, force=True)
        print(format_table(summarize(runs)))
        return 0
    if not args.recipes:
        raise ValueError("--recipes: expected recipe YAML files (or --merge JSON files)")
    recipes = [load_recipe(p) for p in args.recipes]  # validate all before hours of training
    oneshot = [load_recipe(p) for p in args.oneshot_from]
    for r in oneshot:
        if not r.pruning:
            raise ValueError(f"--oneshot-from: recipe {r.name!r} has no pruning entries")
    runs: list[dict] = []
    if args.resume:
        if os.path.isfile(args.json):
            with open(args.json, encoding="utf-8") as f:
                runs = list(json.load(f)["runs"])
    done = {(r["recipe"], r["seed"]) for r in runs}
    # a seed's dense recipes first: a recipe distilling from `dense` then finds that run cached as its
    # teacher rather than training the same dense model again (recipes/minilm-tweets-*.yaml sorts dense last)
    recipes = sorted(recipes, key=lambda r: not is_dense(r))
    for seed in args.seeds:
        for recipe in recipes:
            if (recipe.name, seed) in done:
                continue
            out_dir = os.path.join(args.save_dir, f"{recipe.name}-seed{seed}") if args.save_dir else None
            teacher = resolve_teacher(recipe, seed=seed, max_steps=args.max_steps, epochs=args.epochs,
                                      progress=not args.no_progress, device=args.device)
            res = finetune(recipe, seed=seed, max_steps=args.max_steps, epochs=args.epochs,
                           progress=not args.no_progress, out_dir=out_dir, teacher=teacher, device=args.device,
                           after=oneshot_after(oneshot) if oneshot and not recipe.pruning else None)
            log.info("%s seed %d: %.4f", recipe.name, seed, res.accuracy)
            print(f"{recipe.name} seed {seed}: validation accuracy {100 * res.val_accuracy:.2f}% macro-F1 "
                  f"{100 * res.val_macro_f1:.2f}% (epoch {res.best_epoch} chosen; per epoch "
                  f"{[round(100 * f, 2) for f in res.epoch_val_macro_f1]}), test accuracy {100 * res.accuracy:.2f}% "
                  f"macro-F1 {100 * res.macro_f1:.2f}% ({res.seconds_per_step:.2f} s/step)", flush=True)
            for name, acc in res.extra.items():
                if name.startswith("oneshot:"):
                    print(f"  {recipe.name} seed {seed} pruned {name} without retraining: {100 * acc:.2f}%",
                          flush=True)
            ml = res.extra.get("mlpruning")
            if ml:
                print(f"  {recipe.name} seed {seed} MLPruning: packed model keeps "
                      f"{100 * ml['remaining_fraction']:.1f}% of the encoder weights, packed accuracy "
                      f"{100 * ml['packed_accuracy']:.2f}%", flush=True)
            d = res.to_dict()
            d["dense"] = not recipe.pruning
            d["layers_valid"] = all(r["valid"] in (True, None) for r in d["layers"])
            d.pop("layers")
            if ml:  # the per-layer table stays in the run folder; the summary needs the fraction kept
                d["extra"]["mlpruning"] = {k: v for k, v in ml.items() if k != "layers"}
            runs.append(d)
            if args.json:  # the target was checked by setup(): rewriting it here is ours to do
                harness.write_json(args.json, {"runs": runs, "summary": summarize(runs)}, force=True)
    print(format_table(summarize(runs)))
    return 0
