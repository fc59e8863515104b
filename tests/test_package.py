"""Packaging: what an installed ``sparse`` offers, checked in fresh interpreters."""
import json
import os
import subprocess
import sys

from sparse.recipe import load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FILE = os.path.join(ROOT, "recipes", "minilm-bbc-2of4-transposable.yaml")


def _python(code: str, cwd, env=None) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_star_import_works(tmp_path):
    out = _python("from sparse import *\nimport sparse\nhave = set(globals())\n"
                  "print(sorted(n for n in sparse.__all__ if n not in have))", cwd=tmp_path)
    assert out.strip() == "[]"


def test_built_package_ships_the_recipes(tmp_path):
    """setup.py's build (what a wheel holds) puts recipes/ inside the package as sparse.recipes: the default
    recipe and the named ones load from there, from any folder, with no source tree in sight."""
    lib = tmp_path / "lib"
    env = {**os.environ, "SPARSE_BUILD_EXT": "0"}
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    assert sorted(os.listdir(lib / "sparse" / "recipes")) == sorted(
        ["__init__.py", *(f for f in os.listdir(os.path.join(ROOT, "recipes")) if f.endswith(".yaml"))])
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = _python(
        "import json, sparse\n"
        "from sparse.cli.finetune import default_recipe, resolve_recipe\n"
        "r = default_recipe()\n"
        "print(json.dumps({'package': sparse.__file__, 'source': r.source, 'recipe': r.to_dict(),\n"
        "                  'named': resolve_recipe('minilm-bbc-dense').name}))\n",
        cwd=work, env={**env, "PYTHONPATH": str(lib)})
    got = json.loads(out.strip().splitlines()[-1])
    assert got["package"].startswith(str(lib)) and got["source"].startswith(str(lib / "sparse" / "recipes"))
    assert got["recipe"] == json.loads(json.dumps(load_recipe(DEFAULT_FILE).to_dict()))
    assert got["named"] == "minilm-bbc-dense"
