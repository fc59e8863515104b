"""The shipped pruning recipes (YAML files in this folder).

setup.py installs this folder as the package ``sparse.recipes``; ``sparse finetune`` finds the
recipes there with ``importlib.resources`` (or here, in a source checkout).
"""
