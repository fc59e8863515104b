"""``data: {format: hf, path}``: a folder written by datasets' save_to_disk (skipped without datasets)."""
import sys

import pytest

from sparse.data import load_splits
from sparse.recipe import load_recipe


def data_cfg(**data):
    return load_recipe({"name": "t", "data": {"format": "hf", **data}}).data


def test_without_datasets_the_error_says_which_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets fails, as when it is not installed
    with pytest.raises(ModuleNotFoundError, match=r"datasets package is not installed; install the extra: "
                                                  r"pip install -e '\.\[datasets\]'"):
        load_splits(data_cfg(path=str(tmp_path)))


def make(columns: dict, features=None):
    """A ``datasets.Dataset`` of ``columns``. Built with an explicit fingerprint: datasets 5.2.0 with
    pyarrow 26 (the versions on this index) cannot hash a new in-memory table (``Dataset.from_dict`` fails
    pickling pyarrow's MonthDayNano); saving and loading work."""
    import datasets
    import pyarrow as pa

    table = pa.table(columns)
    if features is not None:
        table = table.cast(features.arrow_schema)
    info = datasets.DatasetInfo(features=features or datasets.Features.from_arrow_schema(table.schema))
    return datasets.Dataset(table, info=info, fingerprint=f"test-{id(table)}")


def test_dataset_dict_with_classlabel_and_its_own_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"sentence": datasets.Value("string"),
                               "y": datasets.ClassLabel(names=["sad", "happy"])})
    def ds(n, off=0):
        return make({"sentence": [f"s{off + i}" for i in range(n)], "y": [i % 2 for i in range(n)]}, feats)
    datasets.DatasetDict({"train": ds(20), "validation": ds(4, 100), "test": ds(6, 200)}).save_to_disk(
        str(tmp_path / "dd"))
    d = load_splits(data_cfg(path=str(tmp_path / "dd"), text="sentence", label="y"))
    assert d.label_names == ["sad", "happy"]            # the ClassLabel's names, in its order
    assert len(d.train_texts) == 20 and d.val_texts == ["s100", "s101", "s102", "s103"] and len(d.test_texts) == 6
    assert d.val_labels == [0, 1, 0, 1]


def test_one_dataset_is_train_and_splits_are_carved(tmp_path):
    pytest.importorskip("datasets")
    make({"text": [f"t{i}" for i in range(40)], "label": ["a", "b"] * 20}).save_to_disk(str(tmp_path / "one"))
    d = load_splits(data_cfg(path=str(tmp_path / "one")))
    assert (len(d.train_texts), len(d.val_texts), len(d.test_texts)) == (28, 4, 8) and d.label_names == ["a", "b"]


def test_hf_bad_input(tmp_path):
    pytest.importorskip("datasets")
    make({"text": ["x", "y"], "lab": [0, 1]}).save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(ValueError, match=r"nolabel\[train\]: column 'label' \(data\.label\) not found; columns: "
                                         r"'text', 'lab'"):
        load_splits(data_cfg(path=str(tmp_path / "nolabel")))
    make({"text": ["x", None], "label": [0, 1]}).save_to_disk(str(tmp_path / "none"))
    with pytest.raises(ValueError, match=r"none\[train\] row 1: column 'text' \(data\.text\): expected a string"):
        load_splits(data_cfg(path=str(tmp_path / "none")))
    (tmp_path / "f.csv").write_text("text,label\n")
    with pytest.raises(ValueError, match=r"data\.path: expected a folder written by datasets' save_to_disk"):
        load_splits(data_cfg(path=str(tmp_path / "f.csv")))
