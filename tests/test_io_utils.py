"""``sparse.io_utils``, the one atomic writer: nothing half-written, nothing left behind, nothing clobbered."""
import json
import os

import pytest

from sparse.convert.atomic import check_destination
from sparse.io_utils import atomic_dir, atomic_file, atomic_write_json, atomic_write_text


class Boom(Exception):
    pass


def _entries(folder):
    return sorted(os.listdir(folder))


def test_file_written_and_no_temporary_left(tmp_path):
    dst = tmp_path / "out.bin"
    with atomic_file(dst) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and not dst.exists()  # a sibling, renamed at the end
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert dst.read_bytes() == b"new"
    assert _entries(tmp_path) == ["out.bin"]


def test_file_exception_inside_leaves_nothing(tmp_path):
    dst = tmp_path / "out.bin"
    with pytest.raises(Boom):
        with atomic_file(dst) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise Boom
    assert _entries(tmp_path) == []


def test_file_exception_with_force_keeps_previous_version(tmp_path):
    dst = tmp_path / "out.txt"
    dst.write_text("old")
    with pytest.raises(Boom):
        with atomic_file(dst, force=True) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise Boom
    assert dst.read_text() == "old" and _entries(tmp_path) == ["out.txt"]


def test_file_refused_without_force_replaced_with_force(tmp_path):
    dst = tmp_path / "out.txt"
    dst.write_text("old")
    with pytest.raises(FileExistsError, match="force"):
        with atomic_file(dst):
            pytest.fail("the body must not run when the destination exists")
    assert dst.read_text() == "old"
    with atomic_file(dst, force=True) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
    assert dst.read_text() == "new" and _entries(tmp_path) == ["out.txt"]


def test_file_appearing_meanwhile_is_not_clobbered(tmp_path):
    dst = tmp_path / "out.txt"
    with pytest.raises(FileExistsError):
        with atomic_file(dst) as tmp:
            with open(tmp, "w") as f:
                f.write("mine")
            dst.write_text("theirs")  # another process finished first
    assert dst.read_text() == "theirs" and _entries(tmp_path) == ["out.txt"]


def test_file_onto_a_folder_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        with atomic_file(tmp_path / "d", force=True):
            pass
    assert _entries(tmp_path) == ["d"]


def test_dir_written_refused_replaced_and_cleaned_up(tmp_path):
    dst = tmp_path / "run"
    with atomic_dir(dst) as tmp:
        with open(os.path.join(tmp, "a.txt"), "w") as f:
            f.write("1")
    assert _entries(dst) == ["a.txt"] and _entries(tmp_path) == ["run"]
    with pytest.raises(FileExistsError):
        with atomic_dir(dst):
            pass
    with pytest.raises(Boom):
        with atomic_dir(dst, force=True) as tmp:
            with open(os.path.join(tmp, "b.txt"), "w") as f:
                f.write("2")
            raise Boom
    assert _entries(dst) == ["a.txt"] and _entries(tmp_path) == ["run"]  # previous version intact
    with atomic_dir(dst, force=True) as tmp:
        with open(os.path.join(tmp, "b.txt"), "w") as f:
            f.write("2")
    assert _entries(dst) == ["b.txt"] and _entries(tmp_path) == ["run"]  # old one removed, no .old left


def test_text_and_json_writers(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"a": [1, 2]})
    assert json.loads(p.read_text()) == {"a": [1, 2]} and p.read_text().endswith("\n")
    with pytest.raises(FileExistsError):
        atomic_write_json(p, {"a": 3}, overwrite=False)
    assert json.loads(p.read_text()) == {"a": [1, 2]}
    atomic_write_text(p, "replaced")  # the writers' default: the caller checked its --force flag already
    assert p.read_text() == "replaced"
    assert _entries(tmp_path) == ["r.json"]


def test_unserialisable_json_leaves_nothing(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("{}")
    with pytest.raises(TypeError):
        atomic_write_json(p, {"x": object()})
    assert p.read_text() == "{}" and _entries(tmp_path) == ["r.json"]


OVERLAP = r"dst: .* (is the same file as|lies inside|contains) src .*; an output must not be, contain or lie inside"


def test_input_is_never_a_destination(tmp_path):
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"weights")
    for dst in (src, tmp_path):  # the input itself, or a folder holding it
        with pytest.raises(ValueError, match=OVERLAP):
            check_destination(str(src), str(dst), force=True)
    hf = tmp_path / "hf"
    hf.mkdir()
    with pytest.raises(ValueError, match=OVERLAP):
        check_destination(str(hf), str(hf / "inner"), force=True)
    assert src.read_bytes() == b"weights"


# --------------------------------------------------------- interrupts (SIGINT, SIGTERM as KeyboardInterrupt)
def test_interrupt_inside_the_block_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "out.bin") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "run") as tmp:
            open(os.path.join(tmp, "a"), "w").close()
            raise KeyboardInterrupt
    assert _entries(tmp_path) == []


def test_interrupt_between_the_two_renames_restores_the_previous_folder(tmp_path, monkeypatch):
    """With force, the previous DST is moved aside before the new one moves in: an interrupt in
    between once left it under a hidden ``.old`` name and DST missing."""
    dst = tmp_path / "run"
    dst.mkdir()
    (dst / "previous.txt").write_text("keep me")
    real_rename = os.rename
    calls = []

    def rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # the second rename: new folder -> dst
            raise KeyboardInterrupt
        return real_rename(a, b)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(dst, force=True) as tmp:
            open(os.path.join(tmp, "new.txt"), "w").close()
    monkeypatch.undo()
    assert _entries(tmp_path) == ["run"] and _entries(dst) == ["previous.txt"]
    assert (dst / "previous.txt").read_text() == "keep me"


def test_interrupt_while_removing_the_previous_folder_finishes_the_removal(tmp_path, monkeypatch):
    import shutil

    dst = tmp_path / "run"
    dst.mkdir()
    (dst / "previous.txt").write_text("old")
    real_rmtree = shutil.rmtree
    state = {"raised": False}

    def rmtree(path, *a, **k):
        if not state["raised"]:
            state["raised"] = True
            raise KeyboardInterrupt
        return real_rmtree(path, *a, **k)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(dst, force=True) as tmp:
            open(os.path.join(tmp, "new.txt"), "w").close()
    monkeypatch.undo()
    assert _entries(tmp_path) == ["run"] and _entries(dst) == ["new.txt"]


def test_check_regular_file_refuses_missing_folder_and_fifo(tmp_path):
    from sparse.io_utils import check_regular_file

    f = tmp_path / "ok.txt"
    f.write_text("x")
    check_regular_file(str(f), "--in")
    with pytest.raises(FileNotFoundError, match=r"--in: file not found: .*nope"):
        check_regular_file(str(tmp_path / "nope"), "--in")
    with pytest.raises(IsADirectoryError, match=r"--in: .* is a folder, expected a CSV file"):
        check_regular_file(str(tmp_path), "--in", expected="a CSV file")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    class Custom(ValueError):
        pass

    with pytest.raises(Custom, match=r"--in: .*pipe is not a regular file"):
        check_regular_file(str(fifo), "--in", error=Custom)
