"""Margin sample mining loss (reid_nb.losses): against a brute-force loop over all pairs, on batches with ties."""
import itertools
import numpy as np
import pytest
import torch
from reid_nb.losses import margin_sample_mining_loss


def brute_msml(feats, pids, margin=0.6, normalize=True):
    "Every ordered pair, one at a time, in float64: [max d(same id, i != j) - min d(different ids) + margin]_+."
    f = np.asarray(feats, np.float64)
    if normalize: f = f/np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    pids = list(map(int, pids))
    pos, neg = [], []
    for i, j in itertools.permutations(range(len(f)), 2):
        d = float(np.sqrt(((f[i] - f[j])**2).sum()))
        (pos if pids[i] == pids[j] else neg).append(d)
    if not pos or not neg: return 0.0
    return max(0.0, max(pos) - min(neg) + margin)


def tied_batch(rng, P, K, dim, n_dup, grid=None):
    "P identities × K images; `n_dup` rows copied onto others (exact ties), features on an integer grid if `grid`."
    f = rng.normal(size=(P*K, dim))
    if grid: f = np.round(f*grid)                               # many equal coordinates and distances
    for _ in range(n_dup):
        a, b = rng.choice(P*K, 2, replace=False); f[a] = f[b]   # same or different identity: both kinds of tie
    return torch.tensor(f, dtype=torch.float32), torch.arange(P).repeat_interleave(K)


@pytest.mark.parametrize('normalize', [True, False])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_matches_brute_force_on_batches_with_ties(normalize, dtype):
    "float64: the logic, to 1e-6 (the distance clamp gives 1e-6 for identical rows); float32: to its rounding."
    rng = np.random.default_rng(0)
    for trial in range(60):
        P, K, dim = int(rng.integers(2, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 6))
        f, pids = tied_batch(rng, P, K, dim, n_dup=int(rng.integers(0, 4)), grid=2 if trial % 2 else None)
        margin = float(rng.choice([0.0, 0.3, 0.6, 5.0]))
        got = margin_sample_mining_loss(f.to(dtype), pids, margin=margin, normalize=normalize).item()
        want = brute_msml(f.numpy(), pids, margin, normalize)
        # float32: ||a||² + ||b||² − 2a·b loses ~1e-7 of the squared norms, so a tiny distance is off by up to its root
        tol = 2e-6 if dtype == torch.float64 else 4*np.sqrt(1e-7*max(1.0, float((f**2).sum(1).max())*(not normalize)))
        assert got == pytest.approx(want, abs=tol), (trial, P, K, dim, margin)


def test_shuffled_labels_and_singletons():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(3, 12))
        pids = torch.tensor(rng.integers(0, 4, n))                     # any order, singletons allowed
        f = torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float32)
        assert margin_sample_mining_loss(f, pids).item() == pytest.approx(brute_msml(f.numpy(), pids), abs=2e-5)


def test_no_pair_of_one_kind_gives_zero_with_a_graph():
    f = torch.randn(5, 4, requires_grad=True)
    for pids in (torch.arange(5), torch.zeros(5, dtype=torch.long)):
        loss = margin_sample_mining_loss(f, pids)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.isfinite(f.grad).all()


def test_gradient_matches_brute_force_with_ties_shared_evenly():
    """Where several pairs tie for the extreme, the gradient is the average over them (torch's rule for a full max/min);
    identical rows (distance 0) pass no gradient, as in `pairwise_distance`."""
    def brute_torch(f, pids, margin):
        f = torch.nn.functional.normalize(f.double(), dim=1)
        d = {(i, j): (f[i] - f[j]).pow(2).sum().clamp_min(1e-12).sqrt() for i, j in itertools.permutations(range(len(f)), 2)}
        pos = {k: v for k, v in d.items() if pids[k[0]] == pids[k[1]]}
        neg = {k: v for k, v in d.items() if pids[k[0]] != pids[k[1]]}
        hi, lo = max(v.item() for v in pos.values()), min(v.item() for v in neg.values())
        top = [v for v in pos.values() if abs(v.item() - hi) < 1e-9]      # exact ties by construction
        bottom = [v for v in neg.values() if abs(v.item() - lo) < 1e-9]
        return torch.relu(torch.stack(top).mean() - torch.stack(bottom).mean() + margin)
    rng = np.random.default_rng(2)
    checked = 0
    for trial in range(40):
        f, pids = tied_batch(rng, 3, 3, 4, n_dup=int(rng.integers(0, 3)))
        if trial % 3 == 0: f[4] = f[0]; f[7] = f[1]                           # identity 1 and 2 copy identity 0: tied negatives
        a = f.clone().double().requires_grad_(True); b = f.clone().double().requires_grad_(True)  # exact ties need exact arithmetic
        la, lb = margin_sample_mining_loss(a, pids, margin=1.0), brute_torch(b, pids.tolist(), 1.0)
        assert la.item() == pytest.approx(lb.item(), abs=1e-9)
        if lb.item() == 0: continue
        la.backward(); lb.backward()
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), atol=1e-9, err_msg=f'trial {trial}')
        checked += 1
    assert checked >= 30


def test_only_the_two_extreme_pairs_receive_gradient():
    f = torch.tensor([[0.], [1.], [3.], [6.], [20.], [21.]], requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = margin_sample_mining_loss(f, pids, margin=0.6, normalize=False)   # farthest positive (3, 6); closest negative (1, 3)
    assert loss.item() == pytest.approx(3 - 2 + 0.6, abs=1e-5)
    loss.backward()
    assert f.grad.flatten().ne(0).tolist() == [False, True, True, True, False, False]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r'Expected feats \(B, D\) and pids \(B,\)'):
        margin_sample_mining_loss(torch.randn(4, 2), torch.arange(3))
    with pytest.raises(ValueError, match='Expected feats'):
        margin_sample_mining_loss(torch.randn(4), torch.arange(4))
