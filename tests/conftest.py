import os

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
