"""``sparse finetune [RECIPE]``: fine-tune the recipe's model on its dataset while pruning.

RECIPE is a YAML file, or the name of a shipped recipe (``minilm-bbc-dense``). Without it the
default runs, ``minilm-bbc-2of4-transposable``: the pretrained MiniLM-L6 on BBC News, every encoder
Linear pruned to transposable 2:4. The shipped recipes are the repository's ``recipes/`` folder,
installed as the package ``sparse.recipes`` (setup.py), so the command works from any folder.

The recipe's ``data:`` block picks the data (a packaged dataset, or CSV / JSON Lines / ``datasets`` files:
:mod:`sparse.data`); the epoch is chosen on the validation split and the test split is evaluated once, and
the summary reports validation and test accuracy and macro-F1.

Everything that can be checked without training is checked first (numbers, the recipe, that ``--out``
and ``--json`` can be written and do not collide), so a bad argument costs seconds, not a run.
"""
from __future__ import annotations

import importlib.resources
import os
import pathlib

DEFAULT_RECIPE_NAME = "minilm-bbc-2of4-transposable.yaml"
RUNS_DIR = "sparse-runs"
# files a run writes into --out (save_run, and the tokenizer's save_pretrained)
RUN_FILES = ("model.safetensors", "masks.safetensors", "result.json", "config.json", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "sparse_modules.safetensors",
             "sparse_modules.json")


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
    raise FileNotFoundError(f"recipe: file not found: {arg} (nor is it a shipped recipe: {', '.join(shipped)})")


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
    parser.add_argument("--limit-test", type=int, default=None,
                        help="use only the first N test and validation examples")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--keep-sparse-modules", action="store_true",
                        help="also save the layers that run on a block-sparse kernel (recipe entries with "
                             "kernel: block-sparse) as such: sparse_modules.safetensors + sparse_modules.json, "
                             "loaded by sparse.pruning.kernel_swap.load_block_sparse(model, folder); the "
                             "folder's model.safetensors is always the dense-shaped model")
    parser.add_argument("--device", default="cpu",
                        help="where to train: cpu (default), cuda, cuda:N, or auto (a CUDA GPU when torch sees "
                             "one, else the CPU); train.bf16: auto is resolved for it")
    parser.add_argument("--no-fast-dropout", action="store_true",
                        help="PyTorch's own dropout instead of the fast dropout kernel (sets train.fast_dropout: "
                             "false): bit-exact comparison with plain PyTorch runs")


def check_arguments(args) -> None:
    """One-line errors for numbers out of range."""
    from ..recipe import MAX_SEED

    for name in ("max_steps", "epochs", "limit_train", "limit_test"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {v}")
    cpus = os.cpu_count() or 1
    # more OpenMP threads than CPUs only slows down; a huge count makes the OpenMP runtime crash
    if args.threads is not None and not 1 <= args.threads <= cpus:
        raise ValueError(f"--threads: expected an integer in [1, {cpus}] (the CPUs here), got {args.threads}")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed: expected an integer in [0, {MAX_SEED}], got {args.seed}")
    from ..finetune import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as exc:
        raise ValueError(f"--{exc}") from None


def check_json(path: str | None, out: str, overwrite: bool) -> None:
    """Refuse, before training, a ``--json`` path the result could not be written to (a folder, under a
    file, in a missing or unwritable folder), one that exists (unless ``--overwrite``), or one that is
    the run folder ``out`` or a file the run writes there."""
    if not path:
        return
    from ..finetune import nearest_existing

    real, real_out = os.path.realpath(path), os.path.realpath(out)
    if real == real_out:
        raise ValueError(f"--json: {path} is the --out folder; choose a file path")
    if os.path.dirname(real) == real_out and os.path.basename(real) in RUN_FILES:
        raise ValueError(f"--json: {path} is a file the run writes in --out {out}; choose another path")
    if os.path.isdir(path):
        raise IsADirectoryError(f"--json: {path} is a folder, expected a file path")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"--json: {path} exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    base = nearest_existing(parent)
    if not os.path.isdir(base):
        raise NotADirectoryError(f"--json: cannot write {path}: {base} is not a folder")
    if base != parent:
        raise FileNotFoundError(f"--json: cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--json: cannot write {path}: folder {parent} is not writable")


def default_out_dir(name: str, seed: int) -> str:
    """``sparse-runs/<name>-seed<seed>``, and never a folder outside ``sparse-runs/``.

    Recipe names are plain file names already (:func:`sparse.recipe.check_plain_name`); this checks the
    resolved path as well (a name with separators, or a link inside ``sparse-runs`` pointing elsewhere),
    because it is the one place a recipe file decides where the run is written."""
    out = os.path.join(RUNS_DIR, f"{name}-seed{seed}")
    plain = (isinstance(name, str) and name not in ("", ".", "..") and "\0" not in name
             and not any(sep and sep in name for sep in ("/", "\\", os.sep, os.altsep)))
    root, real = os.path.realpath(RUNS_DIR), (os.path.realpath(out) if plain else out)
    if not plain or os.path.dirname(real) != root:
        raise ValueError(f"recipe name {name!r} would put the run outside {RUNS_DIR}/ (at {real}); use a plain "
                         f"file name, or choose the folder with --out")
    return out


def summary(res, recipe, out: str) -> str:
    """The lines printed after a run: per-layer report, accuracy, dense gap, notes, where it is saved."""
    from ..optim import format_report

    pruned = [r for r in res.layers if r["status"] == "pruned"]
    valid = sum(1 for r in pruned if r["valid"])
    mlp = (res.extra or {}).get("mlpruning")
    if mlp is not None:  # an MLPruning run has no SparseOptimizer layers: say what the pruner kept
        what = (f"mlpruning     {100 * mlp['remaining_fraction']:.1f}% of the encoder's Linear weights remain "
                f"(target {100 * mlp['target']:.0f}%); packed model {100 * mlp['packed_accuracy']:.2f}%")
    else:
        what = f"pruned layers {len(pruned)}/{len(res.layers)}  valid {valid}/{len(pruned)}"
    lines = ["", format_report(res.layers), ""] if res.layers else [""]
    lines += [f"recipe        {res.recipe}  (seed {res.seed}, {res.steps} steps, {res.epochs_run:.2f} epochs, "
              f"{res.seconds_per_step:.2f} s/step on {getattr(res, 'device', 'cpu')})",
              what]
    lines += score_lines(res)
    if res.dense_accuracy is not None:
        dense_f1 = getattr(res, "dense_macro_f1", None)
        f1 = getattr(res, "macro_f1", None)
        f1_gap = (f"; macro-F1 {100 * dense_f1:.2f}%, gap {100 * (f1 - dense_f1):+.2f} points"
                  if dense_f1 is not None and f1 is not None else "")
        lines.append(f"dense         {100 * res.dense_accuracy:.2f}%  (cached dense run, same seed/steps)  "
                     f"gap {100 * (res.accuracy - res.dense_accuracy):+.2f} points" + f1_gap)
    elif recipe.pruning:
        lines.append("dense         (no cached dense run with the same settings: run the dense recipe with the same "
                     "model, data and training settings, e.g. minilm-bbc-dense or minilm-tweets-dense, to compare)")
    if res.kernel_step is not None:
        before, after = res.seconds_per_step_before_swap, res.seconds_per_step_after_swap
        speed = f"  ({before / after:.2f}x)" if before and after else ""
        lines.append(f"kernel        block-sparse after step {res.kernel_step}: "
                     + (f"{before:.3f} s/step before" if before is not None else "no step before")
                     + (f", {after:.3f} s/step after" if after is not None else "") + speed)
    lines += [f"note          {n}" for n in res.notes]
    kept = os.path.isfile(os.path.join(out, "sparse_modules.json")) and res.kernel_step is not None
    lines.append(f"saved         {out}/ (a Hugging Face model folder: model.safetensors, config.json, tokenizer; "
                 f"plus masks.safetensors, result.json" + (", sparse_modules.*" if kept else "") + ")")
    return "\n".join(lines)


def score_lines(res) -> list[str]:
    """The validation and test lines of :func:`summary` (runs from before issue 16 report test only)."""
    val_f1 = getattr(res, "val_macro_f1", None)
    if val_f1 is None:
        return [f"accuracy      {100 * res.accuracy:.2f}%  (per epoch: "
                f"{', '.join(f'{100 * a:.2f}%' for a in res.epoch_accuracy)}; {res.n_test} test docs)"]
    per_epoch = ", ".join(f"{100 * f:.2f}%" for f in res.epoch_val_macro_f1)
    return [f"validation    accuracy {100 * res.val_accuracy:.2f}%  macro-F1 {100 * val_f1:.2f}%  (epoch "
            f"{res.best_epoch} of {len(res.epoch_accuracy)} chosen on validation macro-F1: {per_epoch}; "
            f"{res.n_val} docs)",
            f"test          accuracy {100 * res.accuracy:.2f}%  macro-F1 {100 * res.macro_f1:.2f}%  (evaluated once, "
            f"at the end; {res.n_test} docs)"]


def run(args) -> int:
    import torch

    from .. import finetune as ft
    from ..io_utils import atomic_write_json
    from .signals import interrupts_as_exceptions

    check_arguments(args)
    recipe = resolve_recipe(args.recipe)
    if args.no_fast_dropout:
        import dataclasses

        recipe = recipe.replace(train=dataclasses.replace(recipe.train, fast_dropout=False))
    seed = recipe.train.seed if args.seed is None else args.seed
    out = args.out or default_out_dir(recipe.name, seed)
    # outputs are checked before a missing teacher or the run itself is trained
    ft.check_out_dir(out, args.overwrite, name="--out")
    check_json(args.json, out, args.overwrite)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    run_args = dict(max_steps=args.max_steps, epochs=args.epochs, seed=args.seed, limit_train=args.limit_train,
                    limit_test=args.limit_test, progress=not args.no_progress, device=args.device)
    with interrupts_as_exceptions():  # SIGTERM unwinds like Ctrl-C: the atomic writers clean up
        teacher = ft.resolve_teacher(recipe, **run_args)
        res = ft.finetune(recipe, teacher=teacher, out_dir=out, overwrite=args.overwrite,
                          keep_sparse_modules=args.keep_sparse_modules, **run_args)
    print(summary(res, recipe, out))
    if args.json:
        try:
            atomic_write_json(args.json, res.to_dict(), overwrite=args.overwrite)
        except OSError as exc:
            msg = f"--json: cannot write {args.json}: {exc.strerror or exc}; the run itself is saved in {out}"
            raise (OSError(exc.errno, msg) if exc.errno is not None else OSError(msg)) from exc
    return 0
