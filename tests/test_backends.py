import json
import subprocess
import sys
import textwrap

import pytest

import sparse
from sparse._backends import BackendInfo


def test_backends_lists_all_with_reasons():
    infos = sparse.backends()
    assert set(infos) == {"csrc-cpu", "csrc-cuda", "triton", "torch"}
    for info in infos.values():
        assert isinstance(info, BackendInfo) and info.reason
    assert infos["torch"].available


def test_import_and_masks_work_without_the_extension():
    # Block sparse._C (as if it was never built): import must work and masks must use torch.
    code = textwrap.dedent("""
        import importlib.abc, sys, json
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "sparse._C":
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        import torch, sparse
        from sparse.masks import transposable_mask, nm_mask, is_transposable
        from sparse.ops import last_backend
        w = torch.randn(16, 16)
        ok = is_transposable(transposable_mask(w, 4, 8), 4, 8) and bool(nm_mask(w, 2, 4).sum() == 128)
        info = sparse.backends()["csrc-cpu"]
        print(json.dumps({"ok": ok, "cpu": info.available, "reason": info.reason,
                          "ran": last_backend("transposable_approx")}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ok"] and not res["cpu"]
    assert "blocked for the test" in res["reason"]
    assert res["ran"] == "torch"  # auto picks approx on the torch backend when nothing is compiled


def test_import_sparse_does_not_import_triton_or_transformers():
    code = "import sys, sparse; print(sorted(m for m in ('triton', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cpu_backend_names_the_dropout_kernel():
    import sparse
    from sparse.ops.dropout import native_isa

    info = sparse.backends()["csrc-cpu"]
    if not info.available:
        pytest.skip("sparse._C not built")
    assert f"dropout kernel: {native_isa()}" in info.reason
