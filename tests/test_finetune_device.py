"""Where ``sparse finetune`` trains: ``resolve_device``, batches sent to the model's device, predictions
back on the host, ``train.bf16: auto`` resolved for the device, ``result.device``, the ``--device`` flags.
The CUDA run itself is tested where torch sees a GPU."""
import json
import os
import subprocess
import sys

import pytest
import torch

import sparse.finetune as ft
from sparse.finetune import Split, model_device, resolve_device
from sparse.recipe import load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = {"name": "dev", "model": {"source": "minilm", "max_length": 32}, "data": {"dataset": "bbc_news"},
          "train": {"epochs": 1, "batch_size": 8, "bf16": "auto"}, "pruning": []}


def test_resolve_device_defaults_to_the_cpu_and_auto_follows_cuda(monkeypatch):
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device: 'cuda:2', but torch sees 2 CUDA device\(s\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "", "cuda:x", 3.5, "mps", "meta"])
def test_resolve_device_refuses_what_it_cannot_train_on(bad):
    with pytest.raises(ValueError, match=r"^device: expected cpu, cuda, cuda:N or auto, got"):
        resolve_device(bad)


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device: 'cuda' asks for a CUDA GPU, but torch sees none here"):
        resolve_device("cuda")


def test_bf16_auto_is_resolved_for_the_device(monkeypatch):
    recipe = load_recipe(RECIPE)
    monkeypatch.setattr(ft, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert ft.apply_overrides(recipe, None, None, torch.device("cuda")).train.bf16 is True
    assert ft.apply_overrides(recipe, None, None, "cpu").train.bf16 is False
    assert ft.apply_overrides(recipe, None, None).train.bf16 is False  # the CPU by default


def test_batches_go_to_the_requested_device_and_the_split_stays_on_the_host():
    ids = torch.tensor([[5, 6, 0], [7, 0, 0]])
    s = Split(ids, (ids > 0).long(), torch.tensor([0, 1]), torch.zeros_like(ids))
    moved = s.inputs(slice(0, 2), torch.device("meta"))  # a device with no GPU: shapes and placement only
    assert {k: (v.device.type, tuple(v.shape)) for k, v in moved.items()} == {
        "input_ids": ("meta", (2, 2)), "attention_mask": ("meta", (2, 2)), "token_type_ids": ("meta", (2, 2))}
    assert s.input_ids.device.type == "cpu"
    assert all(v.device.type == "cpu" for v in s.inputs(slice(0, 2)).values())


def test_model_device_and_predictions_on_the_host():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_finetune_reports_its_device(tmp_path, minilm_dir):
    res = ft.finetune(RECIPE, max_steps=2, limit_train=16, limit_test=8, progress=False, use_cache=False,
                      device="cpu", out_dir=str(tmp_path / "run"))
    assert res.device == "cpu"
    with open(tmp_path / "run" / "result.json", encoding="utf-8") as f:
        assert json.load(f)["device"] == "cpu"
    with pytest.raises(ValueError, match=r"^device: expected"):
        ft.finetune(RECIPE, max_steps=1, limit_train=8, limit_test=8, progress=False, use_cache=False,
                    device="tpu")


@pytest.mark.parametrize("cmd, message", [
    (["finetune", "minilm-bbc-dense"], "--device: expected cpu, cuda, cuda:N or auto, got 'tpu'"),
    (["bench", "accuracy", "--recipes", "recipes/minilm-bbc-dense.yaml"], "argument --device: invalid choice: 'tpu'"),
])
def test_cli_device_flag_is_checked_before_training(cmd, message):
    out = subprocess.run([sys.executable, "-m", "sparse", *cmd, "--device", "tpu", "--max-steps", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_finetune_on_cuda_matches_the_cpu_run_in_fp32(minilm_dir):
    recipe = {**RECIPE, "train": {**RECIPE["train"], "bf16": False, "fast_dropout": False}}
    kw = dict(max_steps=2, limit_train=16, limit_test=16, progress=False, use_cache=False)
    cpu = ft.finetune(recipe, device="cpu", **kw)
    gpu = ft.finetune(recipe, device="cuda", **kw)
    assert gpu.device.startswith("cuda")
    assert abs(gpu.accuracy - cpu.accuracy) <= 2 / 16  # different kernels: at most a couple of flips
