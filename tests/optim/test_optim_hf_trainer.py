"""SparseTrainerCallback: the Hugging Face Trainer prunes like SparseOptimizer does."""
import pytest
import torch

from testkit import make_tiny_bert

transformers = pytest.importorskip("transformers")

from sparse.integrations.hf_trainer import SparseTrainerCallback  # noqa: E402
from sparse.masks import is_transposable  # noqa: E402


class Rand(torch.utils.data.Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 200, (n, 16), generator=g)
        self.y = torch.randint(0, 5, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def _recipe():
    return {"name": "t", "pruning": [{
        "pattern": {"type": "nm", "n": 2, "m": 4, "transposable": True, "solver": "exact"},
        "schedule": {"type": "oneshot", "at_step": 2}, "refresh_every": 2}]}


def _check(opt, model, steps):
    assert opt is not None and opt.step_count == steps
    assert len(opt.masks) == 12
    for fqn, mask in opt.masks.items():
        assert is_transposable(mask, 2, 4)
        assert torch.all(model.get_parameter(fqn)[~mask] == 0)
    assert all(r["valid"] for r in opt.report())


def test_callback_through_callback_handler():
    """Drive the callback with transformers' own CallbackHandler in the Trainer's event order
    (clip -> on_pre_optimizer_step -> optimizer.step -> on_optimizer_step)."""
    from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

    model = make_tiny_bert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    cb = SparseTrainerCallback(_recipe())
    handler = CallbackHandler([cb], model, None, opt, None)
    state, control = TrainerState(), TrainerControl()
    handler.on_train_begin(None, state, control)
    data = Rand()
    for step in range(5):
        b = data[slice(8 * (step % 4), 8 * (step % 4) + 8)]
        model(input_ids=b["input_ids"], labels=b["labels"]).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        handler.on_pre_optimizer_step(None, state, control)
        opt.step()
        handler.on_optimizer_step(None, state, control)
        opt.zero_grad()
    _check(cb.sparse, model, 5)
    assert cb.sparse.optimizer is opt  # the Trainer's optimizer is used, not replaced


def test_trainer_callback_prunes_and_keeps_masks(tmp_path):
    pytest.importorskip("accelerate")  # transformers' Trainer needs it
    model = make_tiny_bert()
    cb = SparseTrainerCallback(_recipe())
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=8,
                                          learning_rate=1e-2, use_cpu=True, report_to=[], save_strategy="no",
                                          logging_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rand(), callbacks=[cb])
    trainer.train()
    _check(cb.sparse, model, 5)
    # the Trainer's optimizer is accelerate's wrapper; the AdamW inside it had its pruned state tidied
    inner = cb.sparse.optimizer.optimizer
    assert type(inner) is torch.optim.AdamW
    for fqn, mask in cb.sparse.masks.items():
        assert torch.all(inner.state[model.get_parameter(fqn)]["exp_avg"][~mask] == 0)


def test_callback_validates_recipe_early():
    from sparse.recipe import RecipeError
    with pytest.raises(RecipeError, match="unknown key"):
        SparseTrainerCallback({"name": "t", "bogus": 1})
