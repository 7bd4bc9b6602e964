"""SparseGPT per shared input: grouping by input identity, the stacked solve against the per-linear
solve, the single-linear solve against a plain transcription of Alg. 1, and in-place damping."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_calib, tiny_model
from prunekit.core.engine import sequential
from prunekit.core.architectures import layout
from prunekit.solvers.prune import prune_block, prune_model
from prunekit.solvers.masks import magnitude_mask, wanda_mask
from prunekit.solvers.sparsegpt import SparseGPT, sparsegpt


def _groups(model) -> list[list[set[str]]]:
    """Per block: the sets of linears sharing one Hessian; checks each shared Hessian against
    2/N XᵀX of the inputs that linear actually received (captured here by separate hooks)."""
    lay, out, seen = layout(model), [], {}

    def hook(i, name):
        def f(mod, inp, _):
            seen.setdefault((i, name), []).append(inp[0].reshape(-1, inp[0].shape[-1]).detach().clone())
        return f

    handles = [m.register_forward_hook(hook(i, n)) for i in range(lay.num_blocks) for n, m in lay.linears(i).items()]

    def on_block(i, block, stats):
        g: dict[int, set[str]] = {}
        for name, h in stats["hessian"].items():
            g.setdefault(id(h.root), set()).add(name)
            X = torch.cat(seen[(i, name)])
            ref = 2 * X.t() @ X / h.root.nseq  # N = 4 sequences (OPT's fc1 sees 2-D inputs: N = 2 batches)
            assert float((h.H - ref).norm() / ref.norm()) < 1e-5, (i, name)
        out.append(sorted(g.values(), key=sorted))

    try:
        sequential(model, tiny_calib(4, 16).input_ids, collect=("hessian",), on_block=on_block,
                   modifies=False, batch_size=3, progress=False)
    finally:
        for h in handles:
            h.remove()
    return out


def test_linears_reading_one_input_share_one_hessian():
    want = sorted([{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}, {"self_attn.o_proj"},
                   {"mlp.gate_proj", "mlp.up_proj"}, {"mlp.down_proj"}], key=sorted)
    for g in _groups(tiny_model("llama")):
        assert g == want
    opt = _groups(tiny_model("opt"))[0]
    assert {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"} in opt and len(opt) == 4


@pytest.mark.parametrize("kind, nm", [("llama", None), ("llama", (2, 4)), ("opt", None), ("gemma3", None)])
def test_stacked_equals_per_linear(kind, nm):
    """Each block on the same dense inputs: the stacked solve (prune_block) against SparseGPT of
    every linear on its own, from the same Hessian."""
    model = tiny_model(kind, seed=3)
    lay = layout(model)
    rng = np.random.default_rng(0)
    values = rng.uniform(0.3, 0.8, size=(lay.num_blocks, len(lay.linear_names)))
    values[1, 1] = 0.0  # k_proj of block 1 untouched: it drops out of its group
    if nm is not None:
        values[:] = 0.5
    checked = []

    def on_block(i, block, stats):
        lins = lay.linears(i)
        want = {n: (lins[n].weight.detach().clone() if values[i, k] == 0 and nm is None else
                    sparsegpt(lins[n].weight, stats["hessian"][n].H, float(values[i, k]), nm))
                for k, n in enumerate(lay.linear_names)}
        prune_block(i, block, stats, values, "sparsegpt", nm, lay.linear_names)
        for k, n in enumerate(lay.linear_names):
            a, b = lins[n].weight.detach(), want[n]
            assert torch.equal(a == 0, b == 0), (i, n)            # identical masks
            assert float((a - b).norm() / b.norm()) <= 1e-5, (i, n)
            if values[i, k] > 0:
                assert float((a == 0).float().mean()) >= (0.5 if nm else values[i, k]) - 0.01
        checked.append(i)

    sequential(model, tiny_calib(8, 32, seed=4).input_ids, collect=("hessian",), on_block=on_block,
               modifies=False, batch_size=3, progress=False)
    assert checked == list(range(lay.num_blocks))


def test_prune_model_sparsegpt_runs_stacked():
    model = tiny_model("llama", seed=2)
    rep = prune_model(model, tiny_calib(4, 32).input_ids, 0.5, "sparsegpt", progress=False)
    assert rep["global_sparsity"] == pytest.approx(0.5, abs=0.01)


def _alg1(W, H, s, blocksize, percdamp=0.01, nm=None):
    """SparseGPT Alg. 1 written out plainly (fp64, explicit inverse, one column at a time; with
    ``nm`` = (N, M) the N lowest scores of every M columns of a row, chosen when the sweep reaches them)."""
    W, H = W.double().clone(), H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    M = torch.zeros_like(W, dtype=torch.bool)
    for j in range(W.shape[1]):
        if nm is not None and j % nm[1] == 0:
            grp = slice(j, j + nm[1])
            sc = (W[:, grp] / torch.diag(U)[grp]) ** 2
            M[:, grp] = False
            for r in range(W.shape[0]):
                M[r, j + torch.argsort(sc[r])[:nm[0]]] = True
        if nm is None and j % blocksize == 0:
            blk = slice(j, min(j + blocksize, W.shape[1]))
            sc = (W[:, blk] / torch.diag(U)[blk]) ** 2
            k = int(sc.numel() * s)
            flat = torch.zeros(sc.numel(), dtype=torch.bool)
            flat[torch.argsort(sc.reshape(-1))[:k]] = True
            M[:, blk] = flat.reshape(sc.shape)
        e = W[:, j] * M[:, j] / U[j, j]
        W[:, j:] -= torch.outer(e, U[j, j:])
        W[M[:, j], j] = 0
    return W


def test_single_linear_matches_transcription_of_alg1():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(400, 48, generator=g) * torch.linspace(0.2, 3, 48)
    X[:, 7] = 0                                   # a dead input
    H = 2 * X.t() @ X / 400
    W = torch.randn(20, 48, generator=g)
    got = sparsegpt(W, H, 0.6, blocksize=16)
    want = _alg1(W, H, 0.6, 16)
    assert torch.equal(got == 0, want == 0)
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-5)
    assert float((got == 0).float().mean()) >= 0.6


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_chunked_sweep_matches_transcription_of_alg1(nm):
    """Blocks of 128 with a partial last block: the sweep's within-block chunks (lazy rank-1
    updates, one matmul per chunk) and the transposed layout change nothing but rounding."""
    g = torch.Generator().manual_seed(7)
    d = 300
    X = torch.randn(900, d, generator=g) @ (torch.randn(d, d, generator=g) / d ** 0.5 + torch.eye(d))
    X[:, 11] = 0
    H = 2 * X.t() @ X / 900
    W = torch.randn(20, d, generator=g)
    got = sparsegpt(W, H, 0.6, nm=nm, blocksize=128)
    want = _alg1(W, H, 0.6, 128, nm=nm)
    assert torch.equal(got == 0, want == 0)
    assert float((got.double() - want).norm() / want.norm()) < 1e-5


def test_damping_is_in_place_and_does_not_touch_callers_hessian():
    g = torch.Generator().manual_seed(6)
    X = torch.randn(100, 32, generator=g)
    H = X.t() @ X
    keep = H.clone()
    sparsegpt(torch.randn(8, 32, generator=g), H, 0.5)
    assert torch.equal(H, keep)                      # the convenience wrapper copies
    H2 = H.clone()
    solver = SparseGPT(H2)
    Hd = keep + 0.01 * torch.diag(keep).mean() * torch.eye(32)
    assert solver.Hinv.data_ptr() == H2.data_ptr()   # H2 now holds U: no new d×d matrix kept
    assert torch.equal(H2, H2.triu())
    assert torch.allclose(H2.t() @ H2, torch.linalg.inv(Hd), rtol=1e-3, atol=1e-6)  # UᵀU = (H+λI)⁻¹


@pytest.mark.parametrize("d", [1, 7, 130, 300])
def test_inverse_cholesky_against_fp64(d):
    """U from one Cholesky of the flipped H and a triangular inverse by halves (odd sizes, several
    recursion levels) against the upper Cholesky factor of the fp64 inverse, which is unique."""
    g = torch.Generator().manual_seed(d)
    X = torch.randn(3 * d + 5, d, generator=g) * torch.linspace(0.3, 2, d)
    H = X.t() @ X
    U, dead = SparseGPT._inverse_cholesky(H.clone(), 0.01)
    Hd = H.double() + 0.01 * torch.diag(H.double()).mean() * torch.eye(d, dtype=torch.float64)
    want = torch.linalg.cholesky(torch.linalg.inv(Hd), upper=True)
    assert float((U.double() - want).norm() / want.norm()) < 1e-4
    assert not dead.any()


def test_sparsegpt_reconstruction_beats_magnitude_and_wanda():
    torch.manual_seed(4)
    d_in, d_out, n = 64, 32, 512
    mix = torch.randn(d_in, d_in) * 0.3 + torch.eye(d_in)
    X = torch.randn(n, d_in) @ mix * (torch.rand(d_in) * 3)  # correlated, uneven columns
    W = torch.randn(d_out, d_in)
    H = 2.0 / n * X.T @ X
    norm = X.pow(2).sum(0).sqrt()
    err = {}
    for s in (0.5, 0.7):
        Wm = W.masked_fill(magnitude_mask(W, s), 0)
        Ww = W.masked_fill(wanda_mask(W, norm, s), 0)
        Ws = sparsegpt(W, H, s, blocksize=16)
        assert abs((Ws == 0).float().mean().item() - s) < 0.02
        err = {k: torch.linalg.norm(X @ (W - V).T).item() for k, V in (("mag", Wm), ("wanda", Ww), ("sgpt", Ws))}
        assert err["sgpt"] < err["wanda"] and err["sgpt"] < err["mag"], err


def test_sparsegpt_zero_sparsity_is_identity_up_to_damping():
    torch.manual_seed(5)
    W = torch.randn(8, 32)
    X = torch.randn(300, 32)
    Ws = sparsegpt(W, 2 / 300 * X.T @ X, 0.0)
    assert torch.allclose(Ws, W, atol=1e-5)


@pytest.mark.parametrize("d", [64, 300, 576])
def test_block_upper_hessian_equals_full_xtx(d):
    """The Hessian accumulates only the block-upper bands of XᵀX and mirrors them on read; against
    2/N XᵀX in fp64, also when more inputs arrive after a read, and for bf16 inputs."""
    from prunekit.core.engine import Hessian
    g = torch.Generator().manual_seed(d)
    h = Hessian(torch.nn.Linear(d, 3))
    xs = [torch.randn(2, 17, d, generator=g), torch.randn(1, 5, d, generator=g).bfloat16()]
    for x in xs:
        h.add(x, x.shape[0])
    X = torch.cat([x.reshape(-1, d).double() for x in xs])
    assert torch.allclose(h.H.double(), 2 * X.t() @ X / 3, rtol=1e-5, atol=1e-4)
    more = torch.randn(4, 9, d, generator=g)
    h.add(more, 4)                                   # after a read: the mirror is redone
    X = torch.cat([X, more.reshape(-1, d).double()])
    want = 2 * X.t() @ X / 7
    assert torch.allclose(h.H.double(), want, rtol=1e-5, atol=1e-4)
    assert torch.allclose(h.take().double(), want, rtol=1e-5, atol=1e-4)
