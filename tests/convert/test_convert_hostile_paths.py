"""Adversarial sweep over the arguments and paths of ``convert_checkpoint`` / ``sparse convert`` /
``sparse inspect`` (issue 10, data loss and clear errors).

Every refused case is checked twice: through the sub-command's ``run`` (the exact exception class and
a message naming the argument) and through ``sparse.cli.main`` (exit 2, one line on stderr, no
traceback). And every refused case leaves the work folder exactly as it was: nothing written,
nothing removed, no hidden temporary.

Tally against the code before this sweep (each case run on it): 87 tried, 48 already good, 39 fixed.
  * refused cases (``REFUSED``): 68 tried, 38 good, 30 fixed (``FIXED``): outputs overwriting
    each other or an input (``--report DST`` exited 0 with DST holding the report; ``--report``
    over a shard of SRC, with ``--force``, replaced it), checks that ran only after the work (report
    folder missing or a folder; calibration file as an output), a FIFO calibration file that hung
    forever, options silently ignored (``--fit``/``--add-pruned-mean`` without ``--calibrate``,
    ``--method`` without a transposable pattern, an ``--include`` selecting nothing), messages
    naming the wrong argument or none, tracebacks;
  * accepted cases (the ``test_*`` below the table): 9 tried, 1 fixed (an fp64 checkpoint crashed);
  * API-only arguments: 7 tried, 5 fixed (None / int / NUL / list / bytes paths: bare TypeErrors);
  * signals (``test_convert_signals.py``): 3 tried, 3 fixed (SIGTERM left the temporary behind,
    SIGINT printed a traceback).
"""
import hashlib
import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparse.cli import build_parser, main
from sparse.convert import convert_checkpoint


# --------------------------------------------------------------------------------------- the folder
def _layout(root):
    """A work folder with every kind of input and obstacle the cases name (relative to ``root``)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g)
    save_file({"l.weight": w, "l.bias": torch.randn(8, generator=g), "odd.weight": torch.randn(8, 6, generator=g)},
              str(root / "in.safetensors"))
    torch.save({"l.weight": w}, root / "in.pt")
    (root / "hf").mkdir()
    save_file({"enc.l.weight": w, "enc.l.bias": torch.randn(8, generator=g)}, str(root / "hf" / "model.safetensors"))
    (root / "hf" / "config.json").write_text("{}")
    (root / "sharded").mkdir()
    save_file({"a.weight": w}, str(root / "sharded" / "s1.safetensors"))
    save_file({"b.weight": w}, str(root / "sharded" / "s2.safetensors"))
    (root / "sharded" / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a.weight": "s1.safetensors", "b.weight": "s2.safetensors"}}')
    save_file({}, str(root / "empty.safetensors"))
    save_file({"l.weight": w.double()}, str(root / "f64.safetensors"))
    save_file({"l.weight": torch.randn(6, 10, generator=g)}, str(root / "odd.safetensors"))
    (root / "emptydir").mkdir()
    (root / "dir.safetensors").mkdir()
    (root / "afile").write_text("not a folder")
    (root / "texts.txt").write_text("a calibration text\nanother one\n")
    (root / "blank.txt").write_text("\n  \n\n")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00\x81\x00binary")
    (root / "existing.safetensors").write_bytes(b"an earlier output")
    (root / "existing.json").write_text("{}")
    (root / "link.safetensors").symlink_to("in.safetensors")
    os.link(root / "in.safetensors", root / "hard.safetensors")
    os.mkfifo(root / "fifo.safetensors")


def _snapshot(root):
    """Every path under ``root`` with its kind and content digest (links by target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(open(p, "rb").read()).hexdigest())
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


@pytest.fixture
def work(tmp_path, monkeypatch):
    _layout(tmp_path)
    monkeypatch.chdir(tmp_path)  # the cases use relative paths; "{abs}" is the absolute folder
    return tmp_path


def _argv(argv, root):
    return [a.replace("{abs}", str(root)) for a in argv]


# ---------------------------------------------------------------------- refused: (argv, error, words)
# ``words``: substrings the message must hold (the argument's name first). FIXED: the cases that
# were not a clear refusal before this sweep.
C = "convert"
REFUSED = {
    # DST against SRC: same file, other spellings, links, nesting
    "dst-equals-src": ([C, "in.safetensors", "in.safetensors"], ValueError, ["dst", "same file as src"]),
    "dst-equals-src-absolute": ([C, "in.safetensors", "{abs}/in.safetensors", "--force"], ValueError,
                                ["dst", "same file as src"]),
    "dst-equals-src-dotted": ([C, "in.safetensors", "emptydir/../in.safetensors", "--force"], ValueError,
                              ["dst", "same file as src"]),
    "dst-symlink-to-src": ([C, "in.safetensors", "link.safetensors", "--force"], ValueError,
                           ["dst", "same file as src"]),
    "dst-hardlink-to-src": ([C, "in.safetensors", "hard.safetensors", "--force"], ValueError,
                            ["dst", "same file as src"]),
    "dst-equals-src-pt": ([C, "in.pt", "./in.pt", "--force"], ValueError, ["dst", "same file as src"]),
    "dst-inside-src-folder": ([C, "hf", "hf/out"], ValueError, ["dst", "lies inside src"]),
    "src-inside-dst-folder": ([C, "hf", ".", "--force"], ValueError, ["dst", "contains src"]),
    "src-inside-dst-file-output": ([C, "in.safetensors", "{abs}", "--force"], ValueError, ["dst", "contains src"]),
    "dst-contains-index": ([C, "sharded/model.safetensors.index.json", "sharded", "--force"], ValueError,
                           ["dst", "contains src"]),
    # DST itself
    "dst-existing-file": ([C, "in.safetensors", "existing.safetensors"], FileExistsError, ["dst", "--force"]),
    "dst-existing-folder": ([C, "hf", "emptydir"], FileExistsError, ["dst", "--force"]),
    "dst-folder-for-file-output": ([C, "in.safetensors", "dir.safetensors", "--force"], ValueError,
                                   ["dst", "expected a file path"]),
    "dst-missing-parent": ([C, "in.safetensors", "nodir/out.safetensors"], FileNotFoundError,
                           ["dst", "does not exist"]),
    "dst-under-regular-file": ([C, "in.safetensors", "afile/out.safetensors"], ValueError,
                               ["dst", "is not a folder"]),
    "dst-empty-string": ([C, "in.safetensors", ""], ValueError, ["dst", "expected a path"]),
    "dst-bad-extension": ([C, "in.safetensors", "out.txt"], ValueError, ["dst", ".safetensors"]),
    # --report against DST, SRC and the other inputs
    "report-equals-dst": ([C, "in.safetensors", "out.safetensors", "--report", "out.safetensors"], ValueError,
                          ["--report", "same file as dst"]),
    "report-equals-dst-force": ([C, "in.safetensors", "out.safetensors", "--report", "{abs}/out.safetensors",
                                 "--force"], ValueError, ["--report", "same file as dst"]),
    "report-equals-src": ([C, "in.safetensors", "out.safetensors", "--report", "in.safetensors", "--force"],
                          ValueError, ["--report", "same file as src"]),
    "report-symlink-to-src": ([C, "in.safetensors", "out.safetensors", "--report", "link.safetensors", "--force"],
                              ValueError, ["--report", "same file as src"]),
    "report-inside-dst-folder": ([C, "hf", "out", "--report", "out/report.json"], ValueError,
                                 ["--report", "lies inside dst"]),
    "report-over-a-dst-file": ([C, "hf", "out", "--report", "out/config.json"], ValueError,
                               ["--report", "lies inside dst"]),
    "report-inside-src-folder": ([C, "hf", "out", "--report", "hf/report.json"], ValueError,
                                 ["--report", "lies inside src"]),
    "report-equals-shard": ([C, "sharded/model.safetensors.index.json", "out", "--report",
                             "sharded/s2.safetensors", "--force"], ValueError, ["--report", "src shard"]),
    "report-missing-folder": ([C, "in.safetensors", "out.safetensors", "--report", "nodir/r.json"],
                              FileNotFoundError, ["--report", "does not exist"]),
    "report-under-regular-file": ([C, "in.safetensors", "out.safetensors", "--report", "afile/r.json"],
                                  ValueError, ["--report", "is not a folder"]),
    "report-is-a-folder": ([C, "in.safetensors", "out.safetensors", "--report", "emptydir", "--force"],
                           ValueError, ["--report", "expected a file path"]),
    "report-existing-no-force": ([C, "in.safetensors", "out.safetensors", "--report", "existing.json"],
                                 FileExistsError, ["--report", "--force"]),
    # calibration inputs
    "dst-equals-calibration-file": ([C, "hf", "texts.txt", "--calibrate", "--calibration-file", "texts.txt",
                                     "--force"], ValueError, ["dst", "same file as calibration_file"]),
    "report-equals-calibration-file": ([C, "hf", "out", "--calibrate", "--calibration-file", "texts.txt",
                                        "--report", "./texts.txt", "--force"], ValueError,
                                       ["--report", "same file as calibration_file (--calibration-file)"]),
    "calibration-file-missing": ([C, "hf", "out", "--calibrate", "--calibration-file", "nope.txt"],
                                 FileNotFoundError, ["--calibration-file", "does not exist"]),
    "calibration-file-blank": ([C, "hf", "out", "--calibrate", "--calibration-file", "blank.txt"], ValueError,
                               ["--calibration-file", "non-empty line"]),
    "calibration-file-binary": ([C, "hf", "out", "--calibrate", "--calibration-file", "binary.txt"], ValueError,
                                ["--calibration-file", "UTF-8"]),
    "calibration-file-folder": ([C, "hf", "out", "--calibrate", "--calibration-file", "emptydir"], ValueError,
                                ["--calibration-file", "not a regular file"]),
    "calibration-file-fifo": ([C, "hf", "out", "--calibrate", "--calibration-file", "fifo.safetensors"],
                              ValueError, ["--calibration-file", "not a regular file"]),
    "calibration-file-without-calibrate": ([C, "hf", "out", "--calibration-file", "texts.txt"], ValueError,
                                           ["--calibration-file", "only used with --calibrate"]),
    "calibrate-unknown-method": ([C, "hf", "out", "--calibrate", "obs"], ValueError,
                                 ["--calibrate", "adaprune, sparsegpt, wanda", "obs"]),
    "calibrate-non-hf-src": ([C, "in.safetensors", "out.safetensors", "--calibrate"], ValueError,
                             ["calibrate", "HF model folder"]),
    "max-length-zero": ([C, "hf", "out", "--calibrate", "--max-length", "0"], ValueError, ["--max-length", ">= 1"]),
    "calibration-texts-negative": ([C, "hf", "out", "--calibrate", "--calibration-texts", "-3"], ValueError,
                                   ["--calibration-texts", ">= 1"]),
    "fit-unknown": ([C, "hf", "out", "--calibrate", "--fit", "sgd"], ValueError, ["--fit", "lstsq"]),
    "fit-without-calibrate": ([C, "hf", "out", "--fit", "adam"], ValueError, ["--fit", "only used with --calibrate"]),
    "pruned-mean-without-calibrate": ([C, "hf", "out", "--add-pruned-mean"], ValueError,
                                      ["--add-pruned-mean", "only used with --calibrate"]),
    # pattern, method, selection
    "pattern-n-ge-m": ([C, "in.safetensors", "out.safetensors", "--pattern", "5:4"], ValueError, ["--pattern", "N:M"]),
    "pattern-three-parts": ([C, "in.safetensors", "out.safetensors", "--pattern", "2:4:8"], ValueError,
                            ["--pattern", "N:M"]),
    "pattern-words": ([C, "in.safetensors", "out.safetensors", "--pattern", "two:four"], ValueError,
                      ["--pattern", "N:M"]),
    "pattern-zero": ([C, "in.safetensors", "out.safetensors", "--pattern", "0:4"], ValueError, ["--pattern", "N:M"]),
    "pattern-m-too-big": ([C, "in.safetensors", "out.safetensors", "--pattern", "2:64"], ValueError,
                          ["--pattern", "M=64"]),
    "pattern-empty": ([C, "in.safetensors", "out.safetensors", "--pattern", ""], ValueError, ["--pattern", "N:M"]),
    "pattern-double-t": ([C, "in.safetensors", "out.safetensors", "--pattern", "2:4TT"], ValueError,
                         ["--pattern", "N:M"]),
    "method-unknown": ([C, "in.safetensors", "out.safetensors", "--transposable", "--method", "magic"], ValueError,
                       ["--method", "flow"]),
    "method-without-transposable": ([C, "in.safetensors", "out.safetensors", "--method", "flow"], ValueError,
                                    ["--method", "only used with transposable"]),
    "include-bad-regex": ([C, "in.safetensors", "out.safetensors", "--include", "("], ValueError,
                          ["include", "regular expression"]),
    "exclude-bad-regex": ([C, "in.safetensors", "out.safetensors", "--exclude", "[a-"], ValueError,
                          ["exclude", "regular expression"]),
    "include-matches-nothing": ([C, "in.safetensors", "out.safetensors", "--include", "encoder"], ValueError,
                                ["include", "got none", "'l.weight'"]),
    "include-only-biases": ([C, "in.safetensors", "out.safetensors", "--include", r"\.bias$"], ValueError,
                            ["include", "2 to 4 dims"]),
    "exclude-cancels-include": ([C, "in.safetensors", "out.safetensors", "--include", "weight", "--exclude", "."],
                                ValueError, ["include, exclude", "got none"]),
    # SRC
    "src-missing": ([C, "nope.safetensors", "out.safetensors"], FileNotFoundError, ["src", "does not exist"]),
    "src-empty-string": ([C, "", "out.safetensors"], FileNotFoundError, ["src", "does not exist"]),
    "src-folder-without-model": ([C, "emptydir", "out"], ValueError, ["src", "HF model folder"]),
    "src-not-a-checkpoint": ([C, "afile", "out.safetensors"], ValueError, ["src", ".safetensors"]),
    "src-fifo": ([C, "fifo.safetensors", "out.safetensors"], ValueError, ["src", "not a regular file"]),
    "src-json-not-an-index": ([C, "hf/config.json", "out"], ValueError, ["config.json", "shard index"]),
    # sparse inspect
    "inspect-missing": (["inspect", "nope.safetensors"], FileNotFoundError, ["nope.safetensors", "does not exist"]),
    "inspect-folder-without-model": (["inspect", "emptydir"], ValueError, ["emptydir", "HF model folder"]),
    "inspect-not-a-checkpoint": (["inspect", "afile"], ValueError, ["afile", ".safetensors"]),
    "inspect-fifo": (["inspect", "fifo.safetensors"], ValueError, ["fifo.safetensors", "not a regular file"]),
}

FIXED = {"dst-hardlink-to-src", "dst-folder-for-file-output", "dst-under-regular-file", "dst-empty-string",
         "report-equals-dst", "report-equals-dst-force", "report-symlink-to-src", "report-inside-dst-folder",
         "report-over-a-dst-file", "report-inside-src-folder", "report-equals-shard", "report-missing-folder",
         "report-under-regular-file", "report-is-a-folder", "dst-equals-calibration-file",
         "report-equals-calibration-file", "calibration-file-missing", "calibration-file-binary",
         "calibration-file-folder", "calibration-file-fifo", "calibrate-unknown-method",
         "calibration-texts-negative", "fit-without-calibrate", "report-equals-src", "report-existing-no-force",
         "pruned-mean-without-calibrate",
         "method-without-transposable", "include-matches-nothing", "include-only-biases",
         "exclude-cancels-include"}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_a_clear_error_and_nothing_touched(work, case, capsys):
    argv, error, words = REFUSED[case]
    argv = _argv(argv, work)
    before = _snapshot(work)
    args = build_parser().parse_args(argv)
    with pytest.raises(error) as info:
        args._run(args)
    assert type(info.value) is error
    message = str(info.value)
    for w in words:
        assert w in message, (w, message)
    assert _snapshot(work) == before
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"sparse {argv[0]}: error: {message}"]
    assert _snapshot(work) == before


# --------------------------------------------------------------------- accepted: the right result
def test_relative_and_absolute_spellings_of_the_outputs(work, capsys):
    assert main([C, "in.safetensors", f"{work}/emptydir/../o1.safetensors", "--report", "./r1.json",
                 "--no-progress"]) == 0
    assert (work / "o1.safetensors").is_file() and (work / "r1.json").is_file()
    assert main([C, f"{work}/hf", "o2", "--report", f"{work}/r2.json", "--no-progress"]) == 0
    assert sorted(os.listdir(work / "o2")) == ["config.json", "model.safetensors"]


def test_an_empty_checkpoint_converts_to_an_empty_one_with_a_warning(work, capsys, caplog):
    assert main([C, "empty.safetensors", "out.safetensors", "--no-progress"]) == 0
    assert load_file("out.safetensors") == {}
    assert "no tensor" in caplog.text
    assert main(["inspect", "empty.safetensors", "--json"]) == 0
    assert capsys.readouterr().out.strip().endswith("[]")


def test_transposable_shapes_not_divisible_are_skipped_and_reported(work, capsys):
    assert main([C, "odd.safetensors", "out.safetensors", "--transposable", "--json", "--no-progress"]) == 0
    import json

    rep = json.loads(capsys.readouterr().out)
    assert rep["tensors"] == [] and "divisible" in rep["skipped"]["l.weight"]
    assert torch.equal(load_file("out.safetensors")["l.weight"], load_file("odd.safetensors")["l.weight"])


def test_fp64_checkpoint_converts(work, capsys):
    """Once a RuntimeError from the magnitude sums (vector_norm refused to narrow fp64)."""
    assert main([C, "f64.safetensors", "out.safetensors", "--no-progress"]) == 0
    out = load_file("out.safetensors")["l.weight"]
    assert out.dtype == torch.float64 and bool(((out != 0).reshape(8, 4, 4).sum(-1) == 2).all())


def test_force_replaces_a_dangling_dst_link_not_its_target(work, capsys):
    (work / "dangling.safetensors").symlink_to("elsewhere/target.safetensors")
    assert main([C, "in.safetensors", "dangling.safetensors", "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main([C, "in.safetensors", "dangling.safetensors", "--force", "--no-progress"]) == 0
    assert not (work / "dangling.safetensors").is_symlink() and not (work / "elsewhere").exists()
    assert "l.weight" in load_file("dangling.safetensors")


def test_force_replaces_an_existing_output_file(work, capsys):
    assert main([C, "in.safetensors", "existing.safetensors", "--report", "existing.json", "--force",
                 "--no-progress"]) == 0
    assert "l.weight" in load_file("existing.safetensors")
    assert '"pattern": "2:4"' in (work / "existing.json").read_text()
    assert not [n for n in os.listdir(work) if n.endswith(".tmp")]


def test_calibration_options_with_calibrate_are_accepted_up_to_the_model(work, monkeypatch):
    """Valid calibration options pass the checks (the calibration itself is stubbed out)."""
    import sparse.convert.calibration as calibration

    seen = {}

    def fake(source, pattern, targets, method, cfg, texts, sequential=True, progress=False):
        seen.update(cfg=cfg, texts=texts, method=method, sequential=sequential)
        return {}, {}, []
    monkeypatch.setattr(calibration, "calibrate_hf_folder", fake)
    assert main([C, "hf", "out", "--calibrate", "adaprune", "--calibration-file", "texts.txt", "--fit", "adam",
                 "--max-length", "8", "--calibration-texts", "1", "--no-progress"]) == 0
    assert seen["texts"] == ["a calibration text"] and seen["cfg"].fit == "adam" and seen["cfg"].max_length == 8
    assert seen["method"] == "adaprune" and seen["sequential"] is True
    assert main([C, "hf", "out", "--calibrate", "sparsegpt", "--no-sequential", "--seq-len", "8", "--damp", "0.05",
                 "--calibration-samples", "1", "--calibration-file", "texts.txt", "--force", "--no-progress"]) == 0
    assert seen["method"] == "sparsegpt" and seen["sequential"] is False
    assert seen["cfg"].max_length == 8 and seen["cfg"].damp == 0.05 and seen["cfg"].num_texts == 1


# ------------------------------------------------------------------------------- API-only arguments
@pytest.mark.parametrize("kw,error,words", [
    ({"dst": None}, ValueError, ["dst", "expected a path", "NoneType"]),
    ({"dst": 12}, ValueError, ["dst", "expected a path", "int"]),
    ({"dst": "out\0.safetensors"}, ValueError, ["dst", "expected a path"]),
    ({"report_path": ["r.json"]}, ValueError, ["report_path (--report)", "expected a path"]),
    ({"include": "weight"}, ValueError, ["include", "list of regex strings"]),
    ({"calibration_file": "texts.txt"}, ValueError, ["calibration_file", "only used with calibrate"]),
], ids=["dst-None", "dst-int", "dst-NUL", "report-list", "include-str", "calibration-file-no-calibrate"])
def test_api_arguments_of_the_wrong_kind(work, kw, error, words):
    before = _snapshot(work)
    kw = {"dst": "out.safetensors", **kw}
    with pytest.raises(error) as info:
        convert_checkpoint("in.safetensors", **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert _snapshot(work) == before


def test_api_accepts_path_objects_and_bytes(work):
    import pathlib

    convert_checkpoint(pathlib.Path("in.safetensors"), b"out.safetensors", report_path=pathlib.Path("r.json"))
    assert (work / "out.safetensors").is_file() and (work / "r.json").is_file()

