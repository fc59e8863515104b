"""``sparse bench optimizer``: SparseOptimizer overhead per step on MiniLM (CPU), side by side.

What it measures, in one run:

1. the full dense training step (forward + backward + AdamW step) of MiniLM-L6 with a classifier
   head, batch ``--batch`` x ``--seq`` tokens, bf16 autocast: the median of ``--full-steps`` steps;
2. the optimizer step alone, interleaved round-robin for ``--steps`` rounds on three identical model
   copies holding the same gradients: plain AdamW, AdamW wrapped by SparseOptimizer with static masks,
   and wrapped with masks refreshed every ``--refresh-every`` steps (``--pattern``, default
   transposable 2:4 with the exact solver).

Overhead = extra optimizer-step time of the wrapped variant / full dense step time. Static masks use
medians (per-step cost); the refresh variant uses means over whole refresh periods (amortised).
Forward and backward are identical for all variants (the weights are dense tensors with zeros), so
only the optimizer step differs.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import time

import torch


def add_arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=80, help="interleaved optimizer-step rounds (default 80)")
    parser.add_argument("--full-steps", type=int, default=5, help="full dense steps timed (default 5)")
    parser.add_argument("--refresh-every", type=int, default=40, help="mask refresh period (default 40)")
    parser.add_argument("--pattern", default="2:4T", help="n:m, with a trailing T for transposable (default 2:4T)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT instead of MiniLM (smoke tests)")
    parser.add_argument("--json", default=None, help="write the numbers here")


def _parse_pattern(s: str) -> dict:
    t = s.upper().endswith("T")
    body = s[:-1] if t else s
    try:
        n, m = (int(x) for x in body.split(":"))
    except ValueError:
        raise ValueError(f"--pattern: expected 'n:m' or 'n:mT' (transposable), e.g. 2:4T, got {s!r}") from None
    return {"type": "nm", "n": n, "m": m, "transposable": t, "solver": "exact" if t and m == 4 else "auto"}


def _model(tiny: bool):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if tiny:
        cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, num_labels=5, max_position_embeddings=256)
        return BertForSequenceClassification(cfg), 1000
    from ..data import minilm_path
    m = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=5)
    return m, m.config.vocab_size


def measure(args) -> dict:
    from ..optim import SparseOptimizer

    for name in ("steps", "full_steps", "refresh_every", "batch", "seq"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    pattern = _parse_pattern(args.pattern)
    base, vocab = _model(args.tiny)
    base.train()
    x = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 5, (args.batch,), generator=torch.Generator().manual_seed(1))
    entry = {"name": "encoder", "targets": {"include": [r"encoder\.layer\.\d+\."]}, "pattern": pattern,
             "schedule": {"type": "oneshot", "at_step": 0}}

    # 1. full dense step
    dense_model = base
    dense_opt = torch.optim.AdamW(dense_model.parameters(), lr=1e-5)
    full = []
    for _ in range(args.full_steps + 1):  # +1 warm-up
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = dense_model(input_ids=x).logits
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        dense_opt.step()
        full.append(time.perf_counter() - t)
    full_step = statistics.median(full[1:])

    # 2. optimizer step alone, same gradients on three identical copies
    static_model, refresh_model = copy.deepcopy(dense_model), copy.deepcopy(dense_model)
    static_opt = SparseOptimizer(torch.optim.AdamW(static_model.parameters(), lr=1e-5), static_model,
                                 {"name": "static", "pruning": [entry]})
    t0 = time.perf_counter()
    refresh_opt = SparseOptimizer(torch.optim.AdamW(refresh_model.parameters(), lr=1e-5), refresh_model,
                                  {"name": "refresh", "pruning": [{**entry, "refresh_every": args.refresh_every}]})
    mask_build = time.perf_counter() - t0
    grads = [p.grad.detach().clone() if p.grad is not None else None for p in dense_model.parameters()]

    def set_grads(model):
        for p, g in zip(model.parameters(), grads):
            if g is not None:
                p.grad = g.clone()

    times: dict[str, list[float]] = {"dense": [], "static": [], "refresh": []}
    variants = (("dense", dense_model, dense_opt), ("static", static_model, static_opt),
                ("refresh", refresh_model, refresh_opt))
    rounds = max(args.steps, args.refresh_every)
    rounds -= rounds % args.refresh_every  # whole refresh periods, so the mean is the amortised cost
    for _ in range(rounds):
        for name, model, opt in variants:
            set_grads(model)  # outside the timed region: a real step already has its gradients
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
    dense_opt_med = statistics.median(times["dense"])
    static_over = statistics.median(times["static"]) - dense_opt_med
    refresh_over = statistics.fmean(times["refresh"]) - statistics.fmean(times["dense"])
    n_pruned = len(static_opt.masks)
    return {
        "model": "tiny-bert" if args.tiny else "MiniLM-L6 (+ 5-class head)",
        "batch": args.batch, "seq": args.seq, "threads": torch.get_num_threads(),
        "pattern": args.pattern, "pruned_layers": n_pruned, "refresh_every": args.refresh_every,
        "rounds": rounds,
        "full_dense_step_s": full_step,
        "dense_opt_step_s": dense_opt_med,
        "static_opt_step_s": statistics.median(times["static"]),
        "refresh_opt_step_mean_s": statistics.fmean(times["refresh"]),
        "mask_build_all_layers_s": mask_build,
        "static_overhead_pct": 100 * static_over / full_step,
        "refresh_overhead_amortised_pct": 100 * refresh_over / full_step,
        "targets_pct": {"static": 3.0, "refresh": 5.0},
    }


def format_table(r: dict) -> str:
    rows = [
        ("full dense step (fwd+bwd+AdamW)", f"{1000 * r['full_dense_step_s']:.1f} ms", "", ""),
        ("AdamW step (dense)", f"{1000 * r['dense_opt_step_s']:.1f} ms", "", ""),
        ("SparseOptimizer step, static masks", f"{1000 * r['static_opt_step_s']:.1f} ms",
         f"{r['static_overhead_pct']:+.2f}%", "<= 3%"),
        (f"SparseOptimizer, refresh every {r['refresh_every']} (mean)", f"{1000 * r['refresh_opt_step_mean_s']:.1f} ms",
         f"{r['refresh_overhead_amortised_pct']:+.2f}%", "<= 5%"),
        (f"mask build, all {r['pruned_layers']} layers ({r['pattern']})", f"{1000 * r['mask_build_all_layers_s']:.1f} ms",
         "", ""),
    ]
    head = f"{'':<48} {'time':>10} {'overhead':>9} {'target':>7}"
    lines = [f"{r['model']}, batch {r['batch']}x{r['seq']}, bf16 autocast, {r['threads']} threads, "
             f"{r['rounds']} interleaved rounds", head, "-" * len(head)]
    lines += [f"{a:<48} {b:>10} {c:>9} {d:>7}" for a, b, c, d in rows]
    lines.append("overhead = extra optimizer-step time / full dense step time (same run, interleaved)")
    return "\n".join(lines)


def run(args) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    r = measure(args)
    print(format_table(r))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
    return 0
