"""sparse.ops.dropout: distribution, scaling, seeding, thread/ISA independence, gradients, fallbacks.

Statistical checks use fixed seeds and 5-sigma binomial bounds (a false alarm would need a > 5-sigma draw; the
seeds are fixed, so a test either always passes or always fails). No timing assertions.
"""
from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sparse.ops import BackendUnavailable, last_backend, use_backend

D = importlib.import_module("sparse.ops.dropout")  # the module (sparse.ops.dropout is the function)
dropout = D.dropout

requires_kernel = pytest.mark.skipif(D.native_isa() is None, reason="sparse._C without the dropout kernel")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


# --------------------------------------------------------------------------- independent reference
_M0, _M1, _W0, _W1, _U32 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF


def philox4x32_10(ctr, key):
    c, k = list(ctr), list(key)
    for _ in range(10):
        p0, p1 = _M0 * c[0], _M1 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & _U32, (p0 >> 32) ^ c[3] ^ k[1], p0 & _U32]
        k = [(k[0] + _W0) & _U32, (k[1] + _W1) & _U32]
    return c


def test_reference_philox_matches_random123_known_answers():
    assert philox4x32_10([0] * 4, [0] * 2) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox4x32_10([_U32] * 4, [_U32] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def reference_keep(n: int, p: float, seed: int, offset: int) -> torch.Tensor:
    """The documented mapping: element 64b + 16w + l <- word w of Philox((16b + l, offset), seed)."""
    thr = min(round((1 - p) * 2**32), 2**32 - 1)
    words = {}
    keep = []
    for i in range(n):
        b, r = divmod(i, 64)
        w, lane = divmod(r, 16)
        ctr = 16 * b + lane
        if ctr not in words:
            words[ctr] = philox4x32_10([ctr & _U32, ctr >> 32, offset & _U32, offset >> 32],
                                       [seed & _U32, seed >> 32])
        keep.append(words[ctr][w] < thr)
    return torch.tensor(keep)


def scaled(x: torch.Tensor, p: float) -> torch.Tensor:
    """x * 1/(1-p): scale in fp32 (fp64 for fp64), product rounded once to x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = torch.tensor(1.0 / (1.0 - p), dtype=torch.float64).to(acc)
    return (x.to(acc) * s).to(x.dtype)


def kernel(x, p, seed, offset):
    return D._native_ext()[0].dropout_forward(x, p, torch.tensor([seed, offset], dtype=torch.int64))


# --------------------------------------------------------------------------- the kernel's bits and values
@requires_kernel
@pytest.mark.parametrize("n", [1, 15, 64, 65, 200, 1000])
@pytest.mark.parametrize("seed,offset", [(0, 0), (123456789012345, 987654321), (2**63 - 1, 2**62 + 7)])
def test_keep_bits_follow_the_documented_philox_mapping(n, seed, offset):
    x = torch.randn(n) + 10.0  # no zeros: keep == (out != 0)
    out, mask = kernel(x, 0.3, seed, offset)
    want = reference_keep(n, 0.3, seed, offset)
    assert torch.equal(out != 0, want)
    assert torch.equal(D.unpack_mask(mask, n), want)
    assert mask.numel() == 8 * math.ceil(n / 64)
    assert not D.unpack_mask(mask, mask.numel() * 8)[n:].any()  # padding bits cleared


@requires_kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_kept_values_are_exactly_x_over_keep_prob(dtype, p):
    x = (torch.randn(4099, dtype=torch.float64) * 3).to(dtype)
    torch.manual_seed(1)
    out = dropout(x, p)
    assert out.dtype == dtype and out.shape == x.shape
    kept = out != 0
    assert torch.equal(out[kept], scaled(x, p)[kept])
    assert torch.equal(out[~kept], (x * 0)[~kept])  # x * 0: -0.0 for negative x, as torch
    # and close to the exact x / (1 - p)
    tol = {torch.float32: 1e-6, torch.float64: 1e-15, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    exact = x.double()[kept] / (1 - p)
    assert torch.allclose(out[kept].double(), exact, rtol=tol, atol=0)


@requires_kernel
@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("shape", [(1000,), (16, 128, 384), (16, 12, 128, 16), (3, 1037)])
def test_kept_fraction_within_binomial_bound(p, shape):
    torch.manual_seed(2)
    x = torch.ones(shape)
    out = dropout(x, p)
    n, q = x.numel(), 1 - p
    k = int((out != 0).sum())
    assert abs(k - n * q) <= 5 * math.sqrt(n * q * p) + 1, (k, n * q)


@requires_kernel
def test_kept_fraction_of_a_block_position_is_uniform():
    # Every position of the 64-element block (each Philox lane and word) keeps with 1 - p.
    torch.manual_seed(3)
    out = dropout(torch.ones(2000, 64), 0.25)
    frac = (out != 0).double().mean(0)
    n, q = 2000, 0.75
    assert ((frac - q).abs() <= 5 * math.sqrt(q * (1 - q) / n)).all(), frac


@requires_kernel
def test_calls_are_independent_and_seeding_reproduces():
    x = torch.ones(200_000)
    torch.manual_seed(0)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(0)
    a2, b2 = dropout(x, 0.5), dropout(x, 0.5)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(a, b)
    # independence of two consecutive draws: P(kept in both) = q^2
    both = float(((a != 0) & (b != 0)).double().mean())
    n, pq = x.numel(), 0.25
    assert abs(both - pq) <= 5 * math.sqrt(pq * (1 - pq) / n)
    torch.manual_seed(1)
    assert not torch.equal(dropout(x, 0.5), a)


@requires_kernel
def test_generator_argument():
    x = torch.ones(5000)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = dropout(x, 0.3, generator=g1)
    torch.manual_seed(123)  # the default generator plays no part
    assert torch.equal(a, dropout(x, 0.3, generator=g2))
    assert not torch.equal(dropout(x, 0.3, generator=g1), a)  # the generator moved on
    assert not torch.equal(dropout(x, 0.3, generator=torch.Generator().manual_seed(8)), a)


@requires_kernel
def test_seed_and_offset_both_matter():
    x = torch.ones(1000)
    base = kernel(x, 0.5, 11, 22)[0]
    assert torch.equal(base, kernel(x, 0.5, 11, 22)[0])
    assert not torch.equal(base, kernel(x, 0.5, 12, 22)[0])
    assert not torch.equal(base, kernel(x, 0.5, 11, 23)[0])


@requires_kernel
def test_result_independent_of_thread_count():
    x = torch.randn(300_001)  # many parallel chunks, and a partial last block
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(kernel(x, 0.2, 5, 6))
    finally:
        torch.set_num_threads(before)
    for out, mask in outs[1:]:
        assert torch.equal(out, outs[0][0]) and torch.equal(mask, outs[0][1])


@requires_kernel
def test_result_independent_of_thread_count_across_processes():
    code = ("import importlib, torch, sys; torch.set_num_threads(int(sys.argv[1])); "
            "D = importlib.import_module('sparse.ops.dropout'); torch.manual_seed(0); "
            "y = D.dropout(torch.arange(100_003, dtype=torch.float32) + 1, 0.4); "
            "print(int((y != 0).sum()), float(y.double().sum()), D.native_isa())")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    outs = [subprocess.run([sys.executable, "-c", code, str(t)], capture_output=True, text=True, env=env, check=True)
            .stdout.split() for t in (1, 2)]
    assert outs[0] == outs[1]


@requires_kernel
@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_and_scalar_paths_agree(monkeypatch, dtype):
    if D.native_isa() != "avx512":
        pytest.skip("no AVX-512 on this CPU: only the scalar path runs")
    x = torch.randn(64 * 50 + 37).to(dtype)
    x[5] = float("nan")
    x[70] = float("inf")
    vec = kernel(x, 0.35, 99, 100)
    monkeypatch.setenv("SPARSE_DROPOUT_ISA", "scalar")
    assert D.native_isa() == "scalar"
    sca = kernel(x, 0.35, 99, 100)
    assert torch.equal(vec[1], sca[1])
    assert torch.equal(vec[0], sca[0]) or torch.allclose(vec[0], sca[0], equal_nan=True, rtol=0, atol=0)
    g = torch.randn_like(x)
    monkeypatch.delenv("SPARSE_DROPOUT_ISA")
    gv = D._native_ext()[0].dropout_backward(g, vec[1], 0.35)
    monkeypatch.setenv("SPARSE_DROPOUT_ISA", "scalar")
    assert torch.equal(gv, D._native_ext()[0].dropout_backward(g, vec[1], 0.35))


@requires_kernel
def test_nan_and_inf_follow_torch_semantics():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), -1.0] * 64)
    torch.manual_seed(0)
    y = dropout(x, 0.5)
    assert torch.isnan(y[0::4]).all()  # NaN * anything
    kept_inf = y[1::4]
    assert ((kept_inf == float("inf")) | torch.isnan(kept_inf)).all()  # inf * s or inf * 0
    neg = y[3::4]
    assert ((neg == -1 / 0.5) | ((neg == 0) & torch.signbit(neg))).all()  # -1 * 0 = -0.0


# --------------------------------------------------------------------------- gradients
@requires_kernel
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_is_mask_times_scale(dtype):
    x = (torch.randn(7, 131) + 5).to(dtype).requires_grad_()
    torch.manual_seed(4)
    y = dropout(x, 0.3)
    g = torch.randn(7, 131).to(dtype)
    y.backward(g)
    keep = y.detach() != 0
    want = torch.where(keep, scaled(g, 0.3), torch.zeros((), dtype=dtype))
    assert torch.equal(x.grad, want)
    # the recomputation: same seed, same bits
    torch.manual_seed(4)
    assert torch.equal(dropout(x.detach(), 0.3) != 0, keep)


@requires_kernel
def test_gradcheck_fp64():
    x = torch.randn(3, 70, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator()

    def f(t):
        gen.manual_seed(5)
        return dropout(t, 0.4, generator=gen)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@requires_kernel
def test_non_contiguous_grad_and_input():
    base = torch.randn(40, 30) + 3
    xt = base.t().requires_grad_()  # a non-contiguous view
    assert not xt.is_contiguous()
    torch.manual_seed(6)
    y = dropout(xt, 0.5)
    torch.manual_seed(6)
    y2 = dropout(xt.detach().contiguous(), 0.5)
    assert y.shape == xt.shape and torch.equal(y, y2)
    g = torch.randn(40, 30).t()
    y.backward(g)
    assert torch.equal(xt.grad, torch.where(y != 0, g * torch.tensor(2.0), torch.zeros(())))


@requires_kernel
def test_opcheck():
    so = torch.tensor([1, 2], dtype=torch.int64)
    torch.library.opcheck(torch.ops.sparse.dropout.default, (torch.randn(5, 70), 0.3, so))
    torch.library.opcheck(torch.ops.sparse.dropout.default, (torch.randn(5, 70, dtype=torch.float64,
                                                                          requires_grad=True), 0.3, so))
    torch.library.opcheck(torch.ops.sparse.dropout_backward.default,
                          (torch.randn(5, 70), torch.zeros(48, dtype=torch.uint8), 0.3))


@requires_kernel
def test_autocast_cpu_keeps_dtype():
    w = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x @ w
        y = dropout(h, 0.2)
    assert y.dtype == torch.bfloat16 and last_backend("dropout") == "csrc-cpu"
    y.float().sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


# --------------------------------------------------------------------------- special cases, errors
@pytest.mark.parametrize("dtype", DTYPES)
def test_p_zero_eval_and_empty_return_x_itself(dtype):
    x = torch.randn(5, 3).to(dtype)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.5, training=False) is x
    e = torch.empty(0, 4, dtype=dtype)
    assert dropout(e, 0.5) is e
    assert F.dropout(x, 0.0) is x  # the torch behaviour being copied


def test_p_one_gives_zeros_like_torch():
    x = torch.tensor([1.0, -2.0, float("nan"), float("inf")], requires_grad=True)
    y = dropout(x, 1.0)
    assert torch.equal(torch.signbit(y[:2]), torch.tensor([False, True])) and (y[:2] == 0).all()
    assert torch.allclose(y, F.dropout(x, 1.0), equal_nan=True)
    y[:2].sum().backward()
    assert torch.equal(x.grad, torch.zeros(4))
    assert dropout(x.detach(), 1) is not x


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_bad_p_is_a_value_error_naming_p(p):
    with pytest.raises(ValueError, match=r"^p: "):
        dropout(torch.ones(3), p)


def test_bad_x_and_generator():
    with pytest.raises(ValueError, match="^x: "):
        dropout([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="^generator: "):
        dropout(torch.ones(3), 0.5, generator=42)
    with pytest.raises(ValueError, match="^generator: .*meta"):
        dropout(torch.ones(3, device="meta"), 0.5, generator=torch.Generator())


# --------------------------------------------------------------------------- dispatch and fallbacks
@requires_kernel
def test_backend_reported():
    dropout(torch.ones(100), 0.5)
    assert last_backend("dropout") == "csrc-cpu"
    with use_backend("torch"):
        torch.manual_seed(0)
        a = dropout(torch.ones(100), 0.5)
        assert last_backend("dropout") == "torch"
    torch.manual_seed(0)
    assert torch.equal(a, F.dropout(torch.ones(100), 0.5))  # the fallback is torch's dropout


def test_other_devices_and_dtypes_fall_back_to_torch():
    y = dropout(torch.ones(8, device="meta"), 0.5)
    assert y.device.type == "meta" and last_backend("dropout") == "torch"
    with use_backend("csrc-cpu"), pytest.raises(BackendUnavailable, match="meta"):
        dropout(torch.ones(8, device="meta"), 0.5)
    x = torch.ones(64, dtype=torch.complex64)
    assert D.native_usable(x, 0.5) is not None
    g = torch.Generator().manual_seed(0)
    with use_backend("torch"):
        a = dropout(torch.ones(1000), 0.5, generator=g)
    assert last_backend("dropout") == "torch"
    assert set(a.unique().tolist()) <= {0.0, 2.0}


def test_missing_extension_runs_torch(monkeypatch):
    monkeypatch.setattr(D, "ext", lambda: None)
    assert D.native_isa() is None
    assert D.native_usable(torch.ones(3), 0.5) == "sparse._C is not built"
    torch.manual_seed(0)
    a = dropout(torch.ones(100), 0.5)
    assert last_backend("dropout") == "torch"
    torch.manual_seed(0)
    assert torch.equal(a, F.dropout(torch.ones(100), 0.5))


def test_import_without_extension_in_a_subprocess():
    code = ("import sys; sys.modules['sparse._C'] = None\n"
            "import torch, sparse, importlib\n"
            "D = importlib.import_module('sparse.ops.dropout')\n"
            "import sparse.nn.dropout as N\n"
            "m = N.Dropout(0.5); y = m(torch.ones(10))\n"
            "from sparse.ops import last_backend\n"
            "print(last_backend('dropout'), D.native_isa(), sparse.backends()['csrc-cpu'].available)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["torch", "None", "False"]
