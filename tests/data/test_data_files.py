"""``sparse.data`` readers and splits on tiny synthetic CSV / JSON Lines files: what they read, and every
bad input refused with a ValueError naming the file, line and column."""
import json

import pytest

from sparse.data import load_splits, read_csv, read_jsonl
from sparse.recipe import load_recipe


def data_cfg(**data):
    return load_recipe({"name": "t", "data": data}).data


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_jsonl(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return str(path)


def examples(n_per_class=10, classes=("neg", "pos", "neu")):
    return [f"text {c} number {i},{c}" for c in classes for i in range(n_per_class)]


# ---------------------------------------------------------------------------------------------- reading
def test_csv_reads_quoted_multiline_fields_pairs_and_line_numbers(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text('premise,hypothesis,y\n"two\nlines",h1,yes\n\nplain,h2,no\n', encoding="utf-8")
    t = read_csv(str(p), text="premise", label="y", text_pair="hypothesis")
    assert t.texts == ["two\nlines", "plain"] and t.pairs == ["h1", "h2"] and t.labels == ["yes", "no"]
    assert t.where == [f"{p} line 2", f"{p} line 5"]  # a record's first line; the blank line skipped


def test_jsonl_reads_string_and_integer_labels(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"text": "a", "label": 2}, {"text": "b", "label": 10, "extra": 1}])
    t = read_jsonl(p)
    assert t.texts == ["a", "b"] and t.labels == [2, 10] and t.pairs is None


def test_one_file_gets_three_stratified_seeded_splits(tmp_path):
    p = write_csv(tmp_path / "d.csv", examples(20))
    cfg = data_cfg(format="csv", path=p, test_size=0.25, val_size=0.2, split_seed=3)
    d = load_splits(cfg)
    assert (len(d.train_texts), len(d.val_texts), len(d.test_texts)) == (36, 9, 15)
    assert d.label_names == ["neg", "neu", "pos"]
    for labels, n in ((d.train_labels, 12), (d.val_labels, 3), (d.test_labels, 5)):
        assert sorted(labels.count(c) for c in range(3)) == [n, n, n]  # stratified
    assert not set(d.train_texts) & set(d.val_texts) and not set(d.train_texts) & set(d.test_texts)
    assert load_splits(cfg) == d                                        # seeded
    assert load_splits(data_cfg(format="csv", path=p, split_seed=4)).test_texts != d.test_texts
    assert d.fingerprint() == load_splits(cfg).fingerprint()


def test_own_validation_and_test_files_are_used_as_they_are(tmp_path):
    train = write_csv(tmp_path / "train.csv", examples(5, ("b", "a")))
    val = write_csv(tmp_path / "val.csv", ["v1,a", "v2,b"])
    test = write_csv(tmp_path / "test.csv", ["t1,b"])
    d = load_splits(data_cfg(format="csv", path=train, val_path=val, test_path=test))
    assert len(d.train_texts) == 10 and d.val_texts == ["v1", "v2"] and d.test_texts == ["t1"]
    assert d.label_names == ["a", "b"] and d.val_labels == [0, 1] and d.test_labels == [1]


def test_integer_labels_are_ordered_by_value_and_train_size_subsamples(tmp_path):
    objs = [{"text": f"t{i}", "label": i % 3 * 5} for i in range(60)]   # labels 0, 5, 10
    d = load_splits(data_cfg(format="jsonl", path=write_jsonl(tmp_path / "d.jsonl", objs), train_size=12))
    assert d.label_names == ["0", "5", "10"] and len(d.train_texts) == 12
    assert sorted(d.train_labels.count(c) for c in range(3)) == [4, 4, 4]


def test_a_class_too_small_to_stratify_falls_back_and_says_so(tmp_path):
    p = write_csv(tmp_path / "d.csv", examples(10, ("a", "b")) + ["lonely,c"])
    d = load_splits(data_cfg(format="csv", path=p))
    assert any("not stratified" in n for n in d.notes)


# ------------------------------------------------------------------------------------------ bad input
BAD = [
    # (file name, content as bytes, data keys, message regex)
    ("missing.csv", b"body,label\nx,a\n", {}, r"missing\.csv line 1: column 'text' \(data\.text\) not found; "
                                               r"the header has columns 'body', 'label'"),
    ("missing.jsonl", b'{"text": "x", "label": "a"}\n{"text": "y"}\n', {},
     r"missing\.jsonl line 2: column 'label' \(data\.label\) not found; the object has keys 'text'"),
    ("short.csv", b"text,label\nx,a\ny\n", {}, r"short\.csv line 3: column 'label' \(data\.label\) missing: the row "
                                                r"has 1 fields, the header 2"),
    ("number.jsonl", b'{"text": "x", "label": "a"}\n{"text": 5, "label": "b"}\n', {},
     r"number\.jsonl line 2: column 'text' \(data\.text\): expected a string, got int 5"),
    ("null.jsonl", b'{"text": null, "label": "a"}\n', {}, r"null\.jsonl line 1: column 'text' \(data\.text\): "
                                                          r"expected a string, got NoneType None"),
    ("float.jsonl", b'{"text": "x", "label": 1.5}\n', {}, r"float\.jsonl line 1: column 'label' \(data\.label\): "
                                                          r"expected a string or an integer, got float 1\.5"),
    ("empty_text.csv", b"text,label\nx,a\n  ,b\n", {},
     r"empty_text\.csv line 3: column 'text' \(data\.text\) is empty"),
    ("pair.csv", b"text,label,h\nx,a,\n", {"text_pair": "h"},
     r"pair\.csv line 2: column 'h' \(data\.text_pair\) is empty"),
    ("one.csv", b"text,label\nx,a\ny,a\n", {}, r"one\.csv: column data\.label: one class only \('a'\) in 2 training "
                                               r"examples; a classifier needs at least 2 classes"),
    ("empty.csv", b"", {}, r"empty\.csv: empty file; expected a header line naming the columns text, label"),
    ("blank.jsonl", b"\n  \n", {}, r"blank\.jsonl: empty file; expected one JSON object per line"),
    ("header.csv", b"text,label\n", {}, r"header\.csv: no examples \(a header line only\)"),
    ("latin.csv", b"text,label\nok,a\ncaf\xe9,b\n", {},
     r"latin\.csv line 3: not utf-8 text \(byte 0xe9 at offset 19\); "
                                                     r"set data\.encoding"),
    ("bad.jsonl", b'{"text": "x", "label": "a"}\n{"text": \n', {}, r"bad\.jsonl line 2: not valid JSON: "),
    ("list.jsonl", b'["x", "a"]\n', {}, r"list\.jsonl line 1: expected a JSON object with keys text, label, got list"),
]


@pytest.mark.parametrize("name,content,keys,match", BAD, ids=[b[0] for b in BAD])
def test_bad_files_name_file_line_and_column(tmp_path, name, content, keys, match):
    p = tmp_path / name
    p.write_bytes(content)
    fmt = "csv" if name.endswith(".csv") else "jsonl"
    with pytest.raises(ValueError, match=match):
        load_splits(data_cfg(format=fmt, path=str(p), **keys))


def test_latin1_reads_with_its_encoding(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes(b"text,label\n" + b"".join(b"caf\xe9 %d,%s\n" % (i, c) for c in (b"a", b"b") for i in range(10)))
    d = load_splits(data_cfg(format="csv", path=str(p), encoding="latin-1"))
    assert any(t.startswith("café") for t in d.train_texts)


def test_test_labels_not_in_train_are_refused(tmp_path):
    train = write_csv(tmp_path / "train.csv", examples(5, ("a", "b")))
    test = write_csv(tmp_path / "test.csv", ["t1,a", "t2,zebra", "t3,yak"])
    with pytest.raises(ValueError, match=r"test\.csv line 3: column data\.label: label 'zebra' is not in the training "
                                         r"split \(.*train\.csv: 'a', 'b'\); labels of .*test\.csv not in training: "
                                         r"'yak', 'zebra'"):
        load_splits(data_cfg(format="csv", path=train, test_path=test))


@pytest.mark.parametrize("val_size,match", [
    (0.99, r"data\.val_size: 0\.99 of the \d+ examples of .*d\.csv leaves no example to train on"),
    (500, r"data\.val_size: 500 of the 16 examples of .*d\.csv leaves no example to train on \(it carves 500 of 16"),
])
def test_val_size_leaving_no_examples(tmp_path, val_size, match):
    p = write_csv(tmp_path / "d.csv", examples(10, ("a", "b")))
    with pytest.raises(ValueError, match=match):
        load_splits(data_cfg(format="csv", path=p, val_size=val_size))


def test_test_size_leaving_no_examples(tmp_path):
    p = write_csv(tmp_path / "d.csv", examples(2, ("a", "b")))
    with pytest.raises(ValueError, match=r"data\.test_size: 4 of the 4 examples .* leaves no example to train on"):
        load_splits(data_cfg(format="csv", path=p, test_size=4))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.test_path: file not found: .*nope\.csv"):
        load_splits(data_cfg(format="csv", path=write_csv(tmp_path / "d.csv", examples(3, ("a", "b"))),
                             test_path=str(tmp_path / "nope.csv")))
    with pytest.raises(IsADirectoryError, match=r"data\.path: .* is a folder, expected a file"):
        load_splits(data_cfg(format="csv", path=str(tmp_path)))
