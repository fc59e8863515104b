"""Hostile recipes, as an untrusted file or mapping would bring them.

Every bad input is a ``RecipeError`` (``FileNotFoundError`` / ``IsADirectoryError`` for paths) that names
the key and stays one short line however large the input: YAML alias bombs, deep nesting, huge files,
duplicate keys, non-UTF-8 bytes and names that are not plain file names are refused at load.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from sparse.recipe import MAX_RECIPE_BYTES, Recipe, RecipeError, load_recipe

NM = {"type": "nm", "n": 2, "m": 4}
UN = {"type": "unstructured", "sparsity": 0.5}
BL = {"type": "block", "sparsity": 0.5, "block": [4, 4]}
MAX_MESSAGE = 400  # no message grows with the input


def entry(**kw):
    return {"name": "t", "pruning": [{"pattern": NM, **kw}]}


def top(**kw):
    return {"name": "t", **kw}


def refused(data, match):
    with pytest.raises(RecipeError, match=match) as info:
        load_recipe(data)
    msg = str(info.value)
    assert len(msg) <= MAX_MESSAGE and "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------ wrong types, every key
WRONG_TYPES = [
    (top(name=12), r"^name: expected a plain file name .*got int 12"),
    (top(name=True), r"^name: expected a plain file name .*got bool True"),
    (top(description=123), r"^description: expected a string, got int"),
    (top(model="minilm"), r"^model: expected a mapping with keys source, max_length, got str 'minilm'"),
    (top(model={"source": 5}), r"^model\.source: expected a non-empty string, got int 5"),
    (top(model={"max_length": "128"}), r"^model\.max_length: expected an integer, got str '128'"),
    (top(model={"max_length": 12.5}), r"^model\.max_length: expected an integer, got float 12\.5"),
    (top(model={"max_length": True}), r"^model\.max_length: expected an integer, got bool True"),
    (top(data=[]), r"^data: expected a mapping with keys dataset, format, path, .*split_seed, got list \[\]"),
    (top(data={"dataset": 1}), r"^data\.dataset: expected one of bbc_news, tweets, got 1"),
    (top(data={"test_size": "big"}), r"^data\.test_size: expected a fraction in \(0, 1\) or a count >= 1, got str 'big'"),
    (top(data={"val_size": True}), r"^data\.val_size: expected a fraction in \(0, 1\) or a count >= 1, got bool True"),
    (top(data={"format": "xls", "path": "a"}), r"^data\.format: expected one of csv, jsonl, hf, got 'xls'"),
    (top(data={"format": "csv", "path": 3}), r"^data\.path: expected a non-empty string, got int 3"),
    (top(data={"format": "csv", "path": "a", "text": ""}), r"^data\.text: expected a non-empty string, got str ''"),
    (top(data={"format": "csv", "path": "a", "label": ["x"]}), r"^data\.label: expected a non-empty string, got list"),
    (top(data={"format": "csv", "path": "a", "encoding": "klingon"}), r"^data\.encoding: unknown text encoding 'klingon'"),
    (top(data={"split_seed": 1.5}), r"^data\.split_seed: expected an integer, got float"),
    (top(train="fast"), r"^train: expected a mapping with keys epochs, .*got str 'fast'"),
    (top(train={"epochs": True}), r"^train\.epochs: expected an integer, got bool True"),
    (top(train={"batch_size": 16.0}), r"^train\.batch_size: expected an integer, got float 16\.0"),
    (top(train={"lr": "fast"}), r"^train\.lr: expected a number, got 'fast'"),
    (top(train={"bf16": "yes"}), r"^train\.bf16: expected true, false or auto, got str 'yes'"),
    (top(train={"bf16": 1}), r"^train\.bf16: expected true, false or auto, got int 1"),
    (top(train={"seed": None}), r"^train\.seed: expected an integer, got NoneType None"),
    (top(distill="dense"), r"^distill: expected a mapping with keys teacher, alpha, temperature, teacher_train, got str"),
    (top(distill={"alpha": "half"}), r"^distill\.alpha: expected a number, got 'half'"),
    (top(pruning="2:4"), r"^pruning: expected a list of pruning entries, got str"),
    (top(pruning=[None]), r"^pruning\[0\]: expected a mapping with keys name, targets, .*got NoneType None"),
    (top(pruning=[[1, 2]]), r"^pruning\[0\]: expected a mapping .*got list \[1, 2\]"),
    (entry(name=5), r"^pruning\[0\]\.name: expected a non-empty string .*got int 5"),
    ({"name": "t", "pruning": [{"pattern": "2:4"}]}, r"^pruning\[0\]\.pattern: expected a mapping with 'type'"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "n": "2"}}]}, r"pattern\.n: expected an integer, got str '2'"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "transposable": "true"}}]},
     r"pattern\.transposable: expected true or false, got str 'true'"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "transposable": 1}}]},
     r"pattern\.transposable: expected true or false, got int 1"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "solver": "fastest"}}]},
     r"pattern\.solver: expected one of auto, exact, approx, greedy, flow, got 'fastest'"),
    ({"name": "t", "pruning": [{"pattern": {**BL, "block": "32x32"}}]}, r"pattern\.block: expected \[rows, cols\]"),
    ({"name": "t", "pruning": [{"pattern": {**BL, "block": [True, 4]}}]},
     r"pattern\.block\[0\]: expected an integer, got bool"),
    (entry(method=3), r"^pruning\[0\]\.method: expected a mapping with keys type, lambda, got int 3"),
    (entry(method={"type": "srste", "lambda": "big"}), r"method\.lambda: expected a number, got 'big'"),
    (entry(schedule="oneshot"), r"^pruning\[0\]\.schedule: expected a mapping with 'type' one of oneshot, cubic"),
    (entry(schedule={"type": "oneshot", "at_step": 1.0}), r"schedule\.at_step: expected an integer, got float"),
    (entry(targets="Linear"), r"^pruning\[0\]\.targets: expected a mapping with keys types, include"),
    (entry(targets={"types": ["nn.Linear"]}), r"targets\.types: expected one of Linear, Conv1d, Conv2d, got 'nn"),
    (entry(targets={"include": [3]}), r"targets\.include\[0\]: expected a non-empty regex string, got 3"),
    (entry(targets={"exclude": {"a": 1}}), r"targets\.exclude: expected a regex or a list of regexes, got dict"),
    (entry(refresh_every="8"), r"refresh_every: expected an integer, got str '8'"),
]


@pytest.mark.parametrize("data,match", WRONG_TYPES)
def test_wrong_types_name_the_key(data, match):
    refused(data, match)


# ------------------------------------------------------------------------------- unknown keys, every level
UNKNOWN_KEYS = [
    (top(nmae="x"), r"^recipe\.nmae: unknown key; allowed keys: name, description, model"),
    (top(model={"path": "x"}), r"^model\.path: unknown key; allowed keys: source, max_length"),
    (top(data={"fromat": "csv"}), r"^data\.fromat: unknown key; allowed keys: dataset, format, path, val_path, "
                                  r"test_path, text, label, text_pair, encoding, test_size, val_size, train_size, "
                                  r"split_seed"),
    (top(train={"steps": 3}), r"^train\.steps: unknown key; allowed keys: epochs, batch_size"),
    (top(distill={"beta": 1}), r"^distill\.beta: unknown key; allowed keys: teacher, alpha, temperature, teacher_train"),
    (entry(when=3), r"^pruning\[0\]\.when: unknown key; allowed keys: name, targets, pattern"),
    (entry(targets={"regex": "x"}), r"^pruning\[0\]\.targets\.regex: unknown key; allowed keys: types, include"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "dim": 0}}]}, r"pattern\.dim: unknown key; allowed keys: type, n, m"),
    ({"name": "t", "pruning": [{"pattern": {**UN, "n": 2}}]}, r"pattern\.n: unknown key; allowed keys: type, sparsity$"),
    ({"name": "t", "pruning": [{"pattern": {**BL, "n": 2}}]}, r"pattern\.n: unknown key; allowed keys: type, sparsity, block"),
    (entry(method={"type": "srste", "lam": 1}), r"method\.lam: unknown key; allowed keys: type, lambda"),
    (entry(schedule={"type": "oneshot", "step": 1}), r"schedule\.step: unknown key; allowed keys: type, at_step"),
    ({"name": "t", "pruning": [{"pattern": UN, "schedule": {"type": "cubic", "end_step": 3, "every": 1}}]},
     r"schedule\.every: unknown key; allowed keys: type, initial_sparsity, start_step, end_step, frequency"),
    (top(**{"x" * 100_000: 1}), r"^recipe\.x+\.\.\.: unknown key"),  # a huge key is cut short
    ({"name": "t", None: 1}, r"^recipe\.None: unknown key"),
]


@pytest.mark.parametrize("data,match", UNKNOWN_KEYS)
def test_unknown_keys_at_every_level(data, match):
    refused(data, match)


# -------------------------------------------------------------------- numbers out of range, NaN and inf
NAN, INF = float("nan"), float("inf")
BAD_NUMBERS = [
    (top(train={"epochs": 0}), r"train\.epochs: expected an integer >= 1, got 0"),
    (top(train={"epochs": -1}), r"train\.epochs: expected an integer >= 1, got -1"),
    (top(train={"batch_size": 0}), r"train\.batch_size: expected an integer >= 1, got 0"),
    (top(train={"lr": 0}), r"train\.lr: expected a number in \(0\.0, inf\], got 0"),
    (top(train={"lr": NAN}), r"train\.lr: expected a finite number, got nan"),
    (top(train={"lr": INF}), r"train\.lr: expected a finite number, got inf"),
    (top(train={"lr": -INF}), r"train\.lr: expected a finite number, got -inf"),
    (top(train={"lr": "1e999"}), r"train\.lr: expected a finite number, got inf"),
    (top(train={"lr": "nan"}), r"train\.lr: expected a finite number, got nan"),
    (top(train={"weight_decay": -0.1}), r"train\.weight_decay: expected a number in \[0\.0, inf\], got -0\.1"),
    (top(train={"warmup_ratio": 1.5}), r"train\.warmup_ratio: expected a number in \[0\.0, 1\.0\], got 1\.5"),
    (top(train={"seed": -1}), r"train\.seed: expected an integer in \[0, 4294967295\], got -1"),
    (top(train={"seed": 2 ** 64}), r"train\.seed: expected an integer in \[0, 4294967295\], got 18446744073709551616"),
    (top(data={"split_seed": 2 ** 32}), r"data\.split_seed: expected an integer in \[0, 4294967295\]"),
    (top(data={"test_size": 0}), r"data\.test_size: expected a fraction in \(0, 1\) or a count >= 1, got int 0"),
    (top(data={"test_size": 1.0}), r"data\.test_size: expected a fraction in \(0, 1\) or a count >= 1, got float 1\.0"),
    (top(data={"val_size": -3}), r"data\.val_size: expected a fraction in \(0, 1\) or a count >= 1, got int -3"),
    (top(data={"train_size": float("nan")}), r"data\.train_size: expected a fraction in \(0, 1\) or a count >= 1"),
    (top(model={"max_length": 10 ** 6}), r"model\.max_length: expected an integer in \[8, 4096\], got 1000000"),
    (top(model={"max_length": 7}), r"model\.max_length: expected an integer in \[8, 4096\], got 7"),
    (top(distill={"alpha": NAN}), r"distill\.alpha: expected a finite number, got nan"),
    (top(distill={"temperature": -1}), r"distill\.temperature: expected a number in \(0\.0, inf\]"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "n": 0}}]}, r"pattern\.n: expected an integer >= 1, got 0"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "m": 1}}]}, r"pattern\.m: expected an integer in \[2, 32\], got 1"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "m": 10 ** 20}}]}, r"pattern\.m: expected an integer in \[2, 32\]"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "n": 10 ** 30}}]}, r"pattern\.n: expected n < m"),
    ({"name": "t", "pruning": [{"pattern": {**UN, "sparsity": -0.1}}]}, r"pattern\.sparsity: expected a number in \[0"),
    ({"name": "t", "pruning": [{"pattern": {**UN, "sparsity": NAN}}]}, r"pattern\.sparsity: expected a finite number"),
    ({"name": "t", "pruning": [{"pattern": {**BL, "block": [0, 4]}}]}, r"pattern\.block\[0\]: expected an integer >= 1"),
    (entry(method={"type": "srste", "lambda": -1}), r"method\.lambda: expected a number in \[0\.0, inf\], got -1"),
    (entry(method={"type": "srste", "lambda": INF}), r"method\.lambda: expected a finite number, got inf"),
    (entry(schedule={"type": "oneshot", "at_step": -1}), r"schedule\.at_step: expected an integer >= 0, got -1"),
    ({"name": "t", "pruning": [{"pattern": UN, "schedule": {"type": "cubic", "end_step": 3, "frequency": 0}}]},
     r"schedule\.frequency: expected an integer >= 1, got 0"),
    ({"name": "t", "pruning": [{"pattern": UN, "schedule": {"type": "cubic", "end_step": 3, "initial_sparsity": 1.0}}]},
     r"schedule\.initial_sparsity: expected a number in \[0\.0, 1\.0\)"),
]


@pytest.mark.parametrize("data,match", BAD_NUMBERS)
def test_numbers_out_of_range(data, match):
    refused(data, match)


# ------------------------------------------------------------------ names: a plain file name only (point 3)
@pytest.mark.parametrize("name", ["../../escaped", "/abs/path", "", ".", "..", "a/b", "a\\b", "a\0b", "-rf",
                                  ".hidden", "x" * 200, "new\nline", "tab\there", "C:evil", " lead", "ünï"])
def test_recipe_names_that_are_not_plain_file_names_are_refused(name):
    msg = refused(top(name=name), r"^name: expected a plain file name \(1-128 characters of A-Z a-z 0-9 \. _ \+ -, "
                                  r"not starting with '\.' or '-'\), got ")
    assert repr(name)[:20] in msg


def test_plain_names_are_accepted_and_direct_construction_is_checked_too():
    for name in ("minilm-bbc-2of4", "run_1.v2+exp", "A", "x" * 128):
        assert load_recipe(top(name=name)).name == name
    with pytest.raises(RecipeError, match="^name: expected a plain file name"):
        Recipe(name="../x")
    with pytest.raises(RecipeError, match="^name: expected a plain file name"):
        load_recipe(top()).replace(name="/tmp/x")


def test_name_from_the_file_name_is_made_plain(tmp_path):
    p = tmp_path / "my recipe (v2).yaml"
    p.write_text("pruning: []\n")
    assert load_recipe(p).name == "my_recipe__v2_"
    q = tmp_path / "-.yaml"
    q.write_text("pruning: []\n")
    assert load_recipe(q).name == "recipe"


@pytest.mark.parametrize("name", ["", "x" * 129, "a\nb", "a\0b"])
def test_entry_names_are_bounded(name):
    refused(entry(name=name), r"^pruning\[0\]\.name: expected a non-empty string of at most 128 characters "
                              r"without control characters")


@pytest.mark.parametrize("source", ["./model\0", "./x\ny"])
def test_paths_with_control_characters_are_refused(source):
    refused(top(model={"source": source}), r"^model\.source: expected one of minilm or a path")


# ---------------------------------------------------------------------------------------- YAML files
def write(tmp_path, content, name="r.yaml"):
    p = tmp_path / name
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    return p


FILES = [
    ("", r"r\.yaml: empty recipe"),
    ("# only a comment\n", r"r\.yaml: empty recipe"),
    ("- a\n- b\n", r"r\.yaml: recipe: expected a mapping .*got list \['a', 'b'\]"),
    ("just a string\n", r"r\.yaml: recipe: expected a mapping .*got str 'just a string'"),
    (b"\x00\x01\x02\xff\xfe garbage", r"r\.yaml: not UTF-8 text \(byte 0xff at offset 3\)"),
    (b"name: caf\xe9\n", r"r\.yaml: not UTF-8 text \(byte 0xe9 at offset 9\)"),
    (b"name: a\x00b\n", r"r\.yaml: not valid YAML: .*special characters are not allowed"),
    ("name: a\nname: b\n", r"r\.yaml: not valid YAML: duplicate key 'name' \(line 2\)"),
    ("name: t\ntrain: {lr: 1, lr: 2}\n", r"r\.yaml: not valid YAML: duplicate key 'lr' \(line 2\)"),
    ("name: a\n---\nname: b\n", r"r\.yaml: not valid YAML: .*expected a single document"),
    ("name: t\ntrain: {epochs: " + "1" * 5000 + "}\n", r"r\.yaml: not valid YAML: .*digits"),
    ("name: " + "[" * 100_000 + "\n", r"r\.yaml: not valid YAML: nested deeper than 64 levels"),
    ("name: !!binary aGVsbG8=\n", r"r\.yaml: name: expected a plain file name .*got bytes"),
    ("name: 2024-01-01\n", r"r\.yaml: name: expected a plain file name .*got date"),
    ("name: yes\n", r"r\.yaml: name: expected a plain file name .*got bool True"),
    ("name: t\ntrain: {epochs: yes}\n", r"r\.yaml: train\.epochs: expected an integer, got bool True"),
    ("name: t\npruning: [{pattern: {type: nm, n: 2, m: 4}, targets: {types: !!set {Linear: null}}}]\n",
     r"targets\.types: expected a non-empty list of Linear, Conv1d, Conv2d, got set"),
    ("name: !foo bar\n", r"r\.yaml: not valid YAML: .*could not determine a constructor for the tag '!foo'"),
    ("name: !!python/object/apply:os.system ['echo pwned']\n", r"r\.yaml: not valid YAML"),
    ("name: t\npruning: &a [*a]\n", r"r\.yaml: not valid YAML: .*alias"),
    ("name: [unclosed\n", r"r\.yaml: not valid YAML"),
]


@pytest.mark.parametrize("content,match", FILES)
def test_hostile_files(tmp_path, content, match):
    refused(write(tmp_path, content), match)


def test_yaml_booleans_are_booleans_where_booleans_are_expected(tmp_path):
    # YAML 1.1: yes/on are true; where the schema wants a bool that is what the author meant
    r = load_recipe(write(tmp_path, "name: t\ntrain: {bf16: off}\npruning: [{pattern: {type: nm, n: 2, m: 4, "
                                    "transposable: on}}]\n"))
    assert r.train.bf16 is False and r.pruning[0].pattern.transposable is True


def test_size_is_bounded(tmp_path):
    p = write(tmp_path, "name: t\ndescription: '" + "x" * MAX_RECIPE_BYTES + "'\n")
    refused(p, rf"r\.yaml: larger than {MAX_RECIPE_BYTES} bytes \(1 MiB\); a recipe is a few hundred bytes")


def test_utf8_bom_is_accepted(tmp_path):
    assert load_recipe(write(tmp_path, "\ufeffname: bom\n")).name == "bom"


def test_paths_that_are_not_recipe_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipe: file not found: .*missing.yaml"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(IsADirectoryError, match=r"recipe: .* is a folder, expected a YAML file"):
        load_recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"recipe: /dev/null is not a regular file"):
        load_recipe(os.devnull)
    with pytest.raises(RecipeError, match=r"path_or_dict: expected a YAML path, a mapping or a Recipe, got bytes"):
        load_recipe(b"r.yaml")


def test_small_aliases_still_work(tmp_path):
    """Anchors shared between entries are ordinary YAML: kept as long as they expand to little."""
    p = write(tmp_path, textwrap.dedent("""\
        name: t
        pruning:
          - name: a
            targets: &t {include: ['attention']}
            pattern: &p {type: nm, n: 2, m: 4}
          - name: b
            targets: *t
            pattern: *p
        """))
    a, b = load_recipe(p).pruning
    assert a.targets == b.targets and a.pattern == b.pattern


# ------------------------------------------------ billion laughs: bounded memory, in a limited subprocess
def laughs(indent: str) -> str:
    """The classic 9 x 9 ... x 9 alias bomb as a YAML list, about 500 bytes."""
    lines = [f"{indent}- &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{indent}- &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BOMBS = {
    "model": "name: lol\nmodel:\n" + laughs("  "),
    "pattern": "name: lol\npruning:\n  - pattern:\n" + laughs("    "),
    "pruning": "name: lol\npruning:\n" + laughs("  "),
}

# one subprocess for every case (importing torch dominates its run time), under an address-space limit
BOUNDED = textwrap.dedent("""\
    import json, resource, sys
    import yaml
    import sparse.recipe
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    limit = vm + 512 * 2 ** 20  # what is loaded already, plus 512 MiB for the recipes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def bomb():
        x = ["lol"] * 9
        for _ in range(8):
            x = [x] * 9
        return x

    cases = {f"file-{w}": lambda w=w: sparse.recipe.load_recipe(sys.argv[1] + f"/{w}.yaml") for w in sys.argv[2:]}
    cases["dict-model"] = lambda: sparse.recipe.load_recipe({"name": "lol", "model": bomb()})
    cases["dict-pattern"] = lambda: sparse.recipe.load_recipe({"name": "lol", "pruning": [{"pattern": bomb()}]})
    out = {}
    for label, call in cases.items():
        try:
            call()
            out[label] = "loaded"
        except sparse.recipe.RecipeError as exc:
            out[label] = str(exc)
    print(json.dumps(out))
    """)


@pytest.fixture(scope="module")
def bounded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    for where, text in BOMBS.items():
        (folder / f"{where}.yaml").write_text(text)
    proc = subprocess.run([sys.executable, "-c", BOUNDED, str(folder), *BOMBS], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("where", sorted(BOMBS))
def test_billion_laughs_file_is_refused_with_bounded_memory(bounded, where):
    assert len(BOMBS[where].encode()) < 600
    msg = bounded[f"file-{where}"]
    assert "not valid YAML: more than 10000 nodes once aliases are expanded" in msg
    assert len(msg) <= MAX_MESSAGE


@pytest.mark.parametrize("where", ["model", "pattern"])
def test_shared_references_in_a_mapping_never_reach_a_message_unbounded(bounded, where):
    """The same bomb built in Python (shared lists): the error message is cut short, not expanded."""
    msg = bounded[f"dict-{where}"]
    assert msg.startswith(f"{where if where == 'model' else 'pruning[0].pattern'}: expected a mapping")
    assert len(msg) <= MAX_MESSAGE
