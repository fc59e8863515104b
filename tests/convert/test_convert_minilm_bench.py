"""sparse.bench.convert_minilm: the BBC-accuracy part on a tiny fine-tuned-classifier folder."""
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, save_tiny_bert):
    """A 1-layer random BERT classifier (5 labels) saved as a run folder, with a result.json."""
    folder = tmp_path_factory.mktemp("cls") / "run"
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=5)
    save_tiny_bert(transformers.BertForSequenceClassification(cfg).eval(), folder)
    (folder / "result.json").write_text(json.dumps({"recipe_config": {"model": {"max_length": 32},
                                                                      "data": {"test_size": 0.2, "split_seed": 0}}}))
    return folder


@torch.no_grad()
def _plain_accuracy(folder) -> float:
    """BBC test accuracy of ``folder`` recomputed with a plain HF forward (not the code under test)."""
    from sparse.data import load_bbc_news

    data = load_bbc_news(test_size=0.2, seed=0)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    enc = tok(data.test_texts, truncation=True, max_length=32, padding="max_length", return_tensors="pt")
    pred = model(**enc).logits.argmax(-1)
    return float((pred == torch.tensor(data.test_labels)).float().mean())


def test_classifier_accuracy_rows_and_untouched_source(tiny_classifier, tmp_path):
    from safetensors.torch import load_file

    from sparse.bench.convert_minilm import classifier_accuracy
    from sparse.convert.adaprune import AdaPruneConfig

    before = load_file(str(tiny_classifier / "model.safetensors"))
    rows = classifier_accuracy(str(tiny_classifier), 0.5, ["a short calibration text", "another one"],
                               AdaPruneConfig(num_texts=2, max_length=32), str(tmp_path))
    assert [r["model"] for r in rows] == ["fine-tuned dense", "50% unstructured", "2:4", "2:4 +AdaPrune",
                                          "2:4-T", "2:4-T +AdaPrune"]
    assert all(-1 <= r["cosine_to_unstructured"] <= 1 and r["convert_s"] > 0 for r in rows[2:])
    assert rows[3]["calib_err_after"] < rows[3]["calib_err_before"] and len(rows[3]["layer_errors"]) == 6
    assert all(r["test_docs"] == 445 and (r["accuracy"] * 445) == pytest.approx(round(r["accuracy"] * 445))
               for r in rows)                                      # a count of correct documents
    assert rows[0]["accuracy"] == pytest.approx(_plain_accuracy(tiny_classifier))
    after = load_file(str(tiny_classifier / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)    # the classifier folder is only read
    assert sorted(os.listdir(tmp_path)) == ["classifier-unstructured"]   # converted copies cleaned up


def test_classifier_folder_must_be_a_model_folder(tmp_path):
    from sparse.bench.convert_minilm import classifier_accuracy

    with pytest.raises(FileNotFoundError, match="--classifier: .* has no config.json"):
        classifier_accuracy(str(tmp_path), 0.5, ["x"], None, str(tmp_path))


def test_magnitude_prune_folder_is_the_unstructured_pattern(tiny_classifier, tmp_path):
    """The reference model is pruned by UnstructuredPattern (exactly round(s * numel) per matrix)."""
    from safetensors.torch import load_file

    from sparse.bench.convert_minilm import magnitude_prune_folder
    from sparse.convert.targets import TargetFilter
    from sparse.pruning import UnstructuredPattern

    facts = magnitude_prune_folder(str(tiny_classifier), str(tmp_path / "u"), 0.5)
    before = load_file(str(tiny_classifier / "model.safetensors"))
    after = load_file(str(tmp_path / "u" / "model.safetensors"))
    wanted = [k for k, w in before.items() if TargetFilter().wanted(k, w.dtype, tuple(w.shape))]
    assert facts["pruned_tensors"] == len(wanted) == 6      # q, k, v, attention output, FFN in and out
    for k, w in before.items():
        if k in wanted:
            assert int((after[k] == 0).sum()) == w.numel() // 2
            assert torch.equal(after[k], w * UnstructuredPattern(0.5).mask(w))
        else:
            assert torch.equal(after[k], w)


def test_classifier_rows_for_every_method_and_dense_oneshot(tiny_classifier, tmp_path):
    from sparse.bench.convert_minilm import classifier_accuracy, variants
    from sparse.convert.adaprune import AdaPruneConfig

    spec = variants(["2:4T"], ["none", "wanda", "sparsegpt"], [True, False])
    rows = classifier_accuracy(str(tiny_classifier), 0.5, ["a short calibration text", "another one"],
                               AdaPruneConfig(num_texts=2, max_length=32), str(tmp_path), rows_spec=spec,
                               dense_oneshot=True)
    assert [r["model"] for r in rows[2:]] == ["2:4-T", "2:4-T +Wanda", "2:4-T +Wanda (non-seq)", "2:4-T +SparseGPT",
                                              "2:4-T +SparseGPT (non-seq)", "2:4-T +SparseGPT from dense"]
    assert rows[5]["calib_err_after"] < rows[5]["calib_err_before"]


def test_bench_list_arguments_are_checked():
    import argparse

    from sparse.bench import convert_minilm

    parser = argparse.ArgumentParser()
    convert_minilm.add_arguments(parser)
    for argv, flag in ((["--methods", "obs"], "--methods"), (["--patterns", "4:8"], "--patterns"),
                       (["--sequential", "maybe"], "--sequential"), (["--skip-pretrained"], "--skip-pretrained")):
        with pytest.raises(ValueError, match=flag):
            convert_minilm.run(parser.parse_args(argv))
