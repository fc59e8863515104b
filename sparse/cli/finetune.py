"""``sparse finetune [RECIPE]``: fine-tune the recipe's model on its dataset while pruning.

RECIPE is a YAML file, or the name of a shipped recipe (``minilm-bbc-dense``). Without it the
default runs, ``minilm-bbc-2of4-transposable``: the pretrained MiniLM-L6 on BBC News, every encoder
Linear pruned to transposable 2:4. The shipped recipes are the repository's ``recipes/`` folder,
installed as the package ``sparse.recipes`` (setup.py), so the command works from any folder.
"""
from __future__ import annotations

import importlib.resources
import os
import pathlib

DEFAULT_RECIPE_NAME = "minilm-bbc-2of4-transposable.yaml"


def recipes_dir():
    """The shipped recipes folder (an ``importlib.resources`` Traversable).

    Installed: the package ``sparse.recipes``. A source checkout, or an editable install made before
    setup.py mapped ``recipes/`` into the package, has no ``sparse.recipes``: there the folder is the
    checkout's ``recipes/`` itself, next to ``sparse/``.
    """
    try:
        return importlib.resources.files("sparse.recipes")
    except ModuleNotFoundError:
        return pathlib.Path(__file__).resolve().parents[2] / "recipes"


def shipped_recipes() -> dict:
    """``{name: resource}`` of the shipped recipe files, by file name without ``.yaml``."""
    found = {r.name[:-len(".yaml")]: r for r in recipes_dir().iterdir() if r.name.endswith(".yaml")}
    return dict(sorted(found.items()))


def _load_resource(resource):
    from ..recipe import load_recipe

    with importlib.resources.as_file(resource) as path:
        return load_recipe(path)


def default_recipe():
    """The default recipe, loaded from the shipped file."""
    return _load_resource(recipes_dir() / DEFAULT_RECIPE_NAME)


def resolve_recipe(arg: str | None):
    """The recipe that RECIPE names: the default when absent, an existing file, else a shipped recipe
    named without folder (``minilm-bbc-dense`` or ``minilm-bbc-dense.yaml``)."""
    from ..recipe import load_recipe

    if arg is None:
        return default_recipe()
    if os.path.exists(arg) or os.path.dirname(arg):
        return load_recipe(arg)
    shipped = shipped_recipes()
    name = arg[:-len(".yaml")] if arg.endswith(".yaml") else arg
    if name in shipped:
        return _load_resource(shipped[name])
    raise FileNotFoundError(f"recipe file not found: {arg} (nor is it a shipped recipe: {', '.join(shipped)})")


def add_arguments(parser) -> None:
    parser.add_argument("recipe", nargs="?", default=None,
                        help=f"recipe YAML file, or the name of a shipped recipe such as minilm-bbc-dense "
                             f"(default: {DEFAULT_RECIPE_NAME[:-len('.yaml')]})")
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


def check_arguments(args) -> None:
    """One-line errors for bad numbers and a ``--json`` file that would be clobbered."""
    for name in ("max_steps", "epochs", "threads", "limit_train", "limit_test"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v}")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {args.seed}")
    if args.json and os.path.exists(args.json) and not args.overwrite:
        raise FileExistsError(f"--json: {args.json} exists; pass --overwrite to replace it")


def summary(res, recipe, out: str) -> str:
    """The lines printed after a run: per-layer report, accuracy, dense gap, notes, where it is saved."""
    from ..optim import format_report

    pruned = [r for r in res.layers if r["status"] == "pruned"]
    valid = sum(1 for r in pruned if r["valid"])
    lines = ["", format_report(res.layers), "",
             f"recipe        {res.recipe}  (seed {res.seed}, {res.steps} steps, {res.epochs_run:.2f} epochs, "
             f"{res.seconds_per_step:.2f} s/step)",
             f"pruned layers {len(pruned)}/{len(res.layers)}  valid {valid}/{len(pruned)}",
             f"accuracy      {100 * res.accuracy:.2f}%  (per epoch: "
             f"{', '.join(f'{100 * a:.2f}%' for a in res.epoch_accuracy)}; {res.n_test} test docs)"]
    if res.dense_accuracy is not None:
        lines.append(f"dense         {100 * res.dense_accuracy:.2f}%  (cached dense run, same seed/steps)  "
                     f"gap {100 * (res.accuracy - res.dense_accuracy):+.2f} points")
    elif recipe.pruning:
        lines.append("dense         (no cached dense run with the same settings: run minilm-bbc-dense to compare)")
    lines += [f"note          {n}" for n in res.notes]
    lines.append(f"saved         {out}/ (a Hugging Face model folder: model.safetensors, config.json, tokenizer; "
                 f"plus masks.safetensors, result.json)")
    return "\n".join(lines)


def run(args) -> int:
    import torch

    from ..finetune import check_out_dir, finetune, resolve_teacher
    from ..io_utils import atomic_write_json

    check_arguments(args)
    recipe = resolve_recipe(args.recipe)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed = recipe.train.seed if args.seed is None else args.seed
    out = args.out or os.path.join("sparse-runs", f"{recipe.name}-seed{seed}")
    check_out_dir(out, args.overwrite)  # before a missing teacher is trained
    run_args = dict(max_steps=args.max_steps, epochs=args.epochs, seed=args.seed, limit_train=args.limit_train,
                    limit_test=args.limit_test, progress=not args.no_progress)
    teacher = resolve_teacher(recipe, **run_args)
    res = finetune(recipe, teacher=teacher, out_dir=out, overwrite=args.overwrite, **run_args)
    print(summary(res, recipe, out))
    if args.json:
        atomic_write_json(args.json, res.to_dict(), overwrite=args.overwrite)
    return 0
