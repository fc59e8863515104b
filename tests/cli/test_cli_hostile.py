"""Hostile ``sparse finetune`` arguments and failing disks: one line on stderr naming the argument or
the path, a non-zero exit, no traceback; outputs that cannot be written are refused before training."""
import errno
import os

import pytest

import sparse.finetune as ft
from sparse.cli import main
from sparse.cli.finetune import default_out_dir

CPUS = os.cpu_count() or 1


@pytest.fixture
def no_training(monkeypatch):
    """Every case below must fail before a model is loaded or trained."""
    def trained(*a, **k):
        raise AssertionError("training started before the arguments were checked")
    monkeypatch.setattr(ft, "finetune", trained)
    monkeypatch.setattr(ft, "resolve_teacher", trained)
    monkeypatch.setattr(ft, "load_data", trained)


def files(tmp_path):
    """A regular file, a folder, a non-UTF-8 recipe, a recipe whose name escapes, an empty recipe."""
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    (tmp_path / "escape.yaml").write_text("name: ../../escaped\n")
    (tmp_path / "abs.yaml").write_text("name: /tmp/escaped\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_text("a previous run")
    return tmp_path


# argv (with {t} for tmp_path), message on stderr
BAD_ARGUMENTS = [
    (["--max-steps", "-1"], "--max-steps: expected an integer >= 1, got -1"),
    (["--max-steps", "0"], "--max-steps: expected an integer >= 1, got 0"),
    (["--threads", "0"], f"--threads: expected an integer in [1, {CPUS}] (the CPUs here), got 0"),
    (["--threads", "-3"], f"--threads: expected an integer in [1, {CPUS}] (the CPUs here), got -3"),
    (["--threads", "100000"], f"--threads: expected an integer in [1, {CPUS}] (the CPUs here), got 100000"),
    (["--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
    (["--limit-train", "0"], "--limit-train: expected an integer >= 1, got 0"),
    (["--limit-test", "-1"], "--limit-test: expected an integer >= 1, got -1"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 4294967295], got -1"),
    (["--seed", str(2 ** 64)], "--seed: expected an integer in [0, 4294967295], got 18446744073709551616"),
    (["no-such-recipe"], "recipe: file not found: no-such-recipe (nor is it a shipped recipe: minilm-bbc-2of4"),
    (["{t}/folder"], "recipe: {t}/folder is a folder, expected a YAML file"),
    (["{t}/latin1.yaml"], "latin1.yaml: not UTF-8 text (byte 0xe9 at offset 9)"),
    (["{t}/escape.yaml"], "escape.yaml: name: expected a plain file name"),
    (["{t}/abs.yaml"], "abs.yaml: name: expected a plain file name"),
    (["{t}/empty.yaml"], "empty.yaml: empty recipe"),
    (["--out", "{t}/file.txt"], "--out: {t}/file.txt is a file, expected a folder"),
    (["--out", "{t}/file.txt/run"], "--out: cannot create {t}/file.txt/run: {t}/file.txt is not a folder"),
    (["--out", "{t}/out"], "--out: {t}/out already holds a run (model.safetensors); pass overwrite=True (--overwrite)"),
    (["--json", "{t}/file.txt/r.json"], "--json: cannot write {t}/file.txt/r.json: {t}/file.txt is not a folder"),
    (["--json", "{t}/missing/r.json"], "--json: cannot write {t}/missing/r.json: folder {t}/missing does not exist"),
    (["--json", "{t}/folder"], "--json: {t}/folder is a folder, expected a file path"),
    (["--json", "{t}/file.txt"], "--json: {t}/file.txt exists; pass --overwrite to replace it"),
    (["--out", "{t}/new", "--json", "{t}/new/model.safetensors"],
     "--json: {t}/new/model.safetensors is a file the run writes in --out {t}/new; choose another path"),
    (["--out", "{t}/new", "--json", "{t}/new"], "--json: {t}/new is the --out folder; choose a file path"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_fail_before_training_with_one_line(tmp_path, monkeypatch, capsys, no_training, argv,
                                                         message):
    t = str(files(tmp_path))
    monkeypatch.chdir(tmp_path)  # the default run folder is relative
    argv = [a.format(t=t) for a in argv]
    assert main(["finetune", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message.format(t=t) in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_escaping_recipe_names_write_nothing(tmp_path, monkeypatch, capsys, no_training):
    files(tmp_path)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = sorted(p for p in tmp_path.rglob("*"))
    for name in ("escape.yaml", "abs.yaml"):
        assert main(["finetune", str(tmp_path / name)]) == 2
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not os.path.exists("/tmp/escaped-seed0")


def test_default_run_folder_stays_inside_sparse_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_out_dir("minilm-bbc-2of4", 3) == os.path.join("sparse-runs", "minilm-bbc-2of4-seed3")
    for name in ("../../escaped", "/tmp/x", "..", "a/../../b", "", "a\0b", "a\\b"):
        with pytest.raises(ValueError, match="recipe name .* would put the run outside sparse-runs/"):
            default_out_dir(name, 0)
    os.makedirs("sparse-runs")
    os.symlink(str(tmp_path.parent), os.path.join("sparse-runs", "link-seed0"))
    with pytest.raises(ValueError, match="would put the run outside sparse-runs/"):
        default_out_dir("link", 0)


def test_non_integer_arguments_are_argparse_errors(capsys, no_training):
    with pytest.raises(SystemExit) as info:
        main(["finetune", "--max-steps", "abc"])
    assert info.value.code == 2 and "invalid int value: 'abc'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- errors while running
def _result(out):
    return ft.FinetuneResult(recipe="r", seed=0, steps=1, epochs_run=1.0, accuracy=0.5, epoch_accuracy=[0.5],
                             dense_accuracy=None, seconds=1.0, seconds_per_step=1.0, n_train=1, n_test=2,
                             out_dir=out)


@pytest.mark.parametrize("exc,message", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/run/model.safetensors"),
     "Read-only file system: '/ro/run/model.safetensors'"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/y"), "Permission denied: '/x/y'"),
], ids=["ENOSPC", "EROFS", "EACCES"])
def test_os_errors_during_a_run_are_one_line(tmp_path, monkeypatch, capsys, exc, message):
    def failing(*a, **k):
        raise exc
    monkeypatch.setattr(ft, "finetune", failing)
    out = str(tmp_path / "run")
    assert main(["finetune", "--out", out, "--no-progress", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparse finetune: error: ") and message in err and len(err.splitlines()) == 1


def test_save_run_names_the_run_folder_when_the_disk_fails(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    from sparse.optim import SparseOptimizer
    from sparse.recipe import load_recipe

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    r = load_recipe({"name": "r", "pruning": [{"pattern": {"type": "nm", "n": 2, "m": 4}}]})
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, r)
    out = str(tmp_path / "run")
    with pytest.raises(OSError, match=rf"cannot write the run to {out}: No space left on device") as info:
        ft.save_run(out, model, opt, _result(out), r)
    assert info.value.errno == errno.ENOSPC
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # no temporary left behind


def test_json_write_failure_after_training_names_the_path_and_the_saved_run(tmp_path, monkeypatch, capsys):
    js = tmp_path / "gone" / "r.json"
    js.parent.mkdir()
    out = str(tmp_path / "run")

    def fake(recipe, **kw):
        js.parent.rmdir()  # the folder disappears while training
        return _result(out)
    monkeypatch.setattr(ft, "finetune", fake)
    monkeypatch.setattr(ft, "resolve_teacher", lambda *a, **k: None)
    monkeypatch.setattr("sparse.cli.finetune.summary", lambda *a: "summary")
    assert main(["finetune", "--out", out, "--json", str(js), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--json: cannot write {js}" in err and f"the run itself is saved in {out}" in err
    assert len(err.splitlines()) == 1


def test_backend_unavailable_and_interrupts_are_one_line(monkeypatch, capsys):
    from sparse.ops.dispatch import BackendUnavailable

    def unavailable(args):
        raise BackendUnavailable("compress_24: forced backend 'csrc-cuda' cannot run this call")
    monkeypatch.setattr("sparse.cli.finetune.run", unavailable)
    assert main(["finetune"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sparse finetune: error: compress_24: forced backend 'csrc-cuda' cannot run this call"

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr("sparse.cli.finetune.run", interrupted)
    assert main(["finetune"]) == 130
    assert capsys.readouterr().err.strip() == "sparse finetune: interrupted"


def test_bugs_still_show_a_traceback_and_debug_keeps_them(monkeypatch, capsys):
    def bug(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr("sparse.cli.finetune.run", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["finetune"])
    monkeypatch.undo()
    monkeypatch.setenv("SPARSE_DEBUG", "1")
    with pytest.raises(ValueError, match="--max-steps"):
        main(["finetune", "--max-steps", "0"])


def test_max_length_beyond_the_models_positions_is_refused_before_data_is_loaded(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    from testkit import make_tiny_bert

    make_tiny_bert().config.save_pretrained(tmp_path / "tiny")  # max_position_embeddings 64

    def loaded(*a, **k):
        raise AssertionError("data loaded before model.max_length was checked")
    monkeypatch.setattr(ft, "load_texts", loaded)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nmodel: {{source: {tmp_path / 'tiny'}, max_length: 128}}\n")
    assert main(["finetune", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.max_length: expected at most the model's max_position_embeddings (64)" in err and "got 128" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kw,match", [
    ({"seed": 2 ** 64}, r"seed: expected an integer in \[0, 4294967295\], got 18446744073709551616"),
    ({"seed": -1}, r"seed: expected an integer in \[0, 4294967295\], got -1"),
    ({"max_steps": True}, r"max_steps: expected an integer >= 1, got True"),
    ({"limit_test": 2.5}, r"limit_test: expected an integer >= 1, got 2\.5"),
])
def test_finetune_api_overrides_are_checked_first(monkeypatch, kw, match):
    def loaded(*a, **k):
        raise AssertionError("data loaded before the overrides were checked")
    monkeypatch.setattr(ft, "load_data", loaded)
    with pytest.raises(ValueError, match=match):
        ft.finetune({"name": "r"}, progress=False, use_cache=False, **kw)


def test_finetune_api_refuses_an_out_dir_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ft, "load_data", lambda *a, **k: pytest.fail("data loaded before out_dir was checked"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"out_dir: .*/f is a file, expected a folder"):
        ft.finetune({"name": "r"}, out_dir=str(tmp_path / "f"), progress=False, use_cache=False)
    with pytest.raises(NotADirectoryError, match=r"out_dir: cannot create .*/f/run: .*/f is not a folder"):
        ft.finetune({"name": "r"}, out_dir=str(tmp_path / "f" / "run"), progress=False, use_cache=False)
