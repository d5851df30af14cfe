"Batch-hard triplet loss against a brute-force loop; cross-entropy and BaselineLoss of reid_nb.losses."
import math
import pytest
import torch
import torch.nn.functional as F
from reid_nb.core import get_preset
from reid_nb.losses import batch_hard_triplet_loss, cross_entropy, pairwise_distance, WeightedLoss, Term
from reid_nb.core import Outputs
from reid_nb.methods.registry import build_loss


def brute_force_batch_hard(feats, pids, margin):
    "Hermans et al.'s batch-hard loss by explicit loops over anchors, positives and negatives."
    feats, pids = feats.double(), pids.tolist()
    terms = []
    for a in range(len(pids)):
        pos = [math.dist(feats[a].tolist(), feats[p].tolist()) for p in range(len(pids)) if p != a and pids[p] == pids[a]]
        neg = [math.dist(feats[a].tolist(), feats[n].tolist()) for n in range(len(pids)) if pids[n] != pids[a]]
        if not pos or not neg: continue
        x = max(pos) - min(neg)
        terms.append(math.log1p(math.exp(x)) if margin is None else max(0.0, x + margin))
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize('seed', range(12))
@pytest.mark.parametrize('margin', [0.3, 1.0, None])
def test_batch_hard_matches_brute_force(seed, margin):
    g = torch.Generator().manual_seed(seed)
    n_ids, k = [(2, 2), (4, 4), (8, 3), (3, 1)][seed % 4]
    pids = torch.arange(n_ids).repeat_interleave(k)
    if seed % 3 == 0: pids = torch.cat([pids, torch.tensor([99])])  # a singleton identity: no positive
    pids = pids[torch.randperm(len(pids), generator=g)]
    feats = torch.randn(len(pids), 5, generator=g) * (0.2 if seed % 2 else 2.0)
    got = batch_hard_triplet_loss(feats, pids, margin)
    assert got.item() == pytest.approx(brute_force_batch_hard(feats, pids, margin), abs=1e-4)


def test_batch_hard_duplicates_have_finite_gradients():
    f = torch.zeros(6, 4, requires_grad=True)  # all features identical: every distance is 0
    loss = batch_hard_triplet_loss(f, torch.tensor([0, 0, 1, 1, 2, 2]), 0.3)
    assert loss.item() == pytest.approx(0.3, abs=1e-5)
    loss.backward()
    assert torch.isfinite(f.grad).all()


def test_pairwise_distance_matches_cdist():
    x, y = torch.randn(7, 9), torch.randn(5, 9)
    assert torch.allclose(pairwise_distance(x, y), torch.cdist(x, y), atol=1e-4)
    assert torch.allclose(pairwise_distance(x, y, squared=True), torch.cdist(x, y) ** 2, atol=1e-3)


def test_batch_hard_normalize_and_bad_shapes():
    f, p = torch.randn(8, 3), torch.arange(4).repeat(2)
    assert batch_hard_triplet_loss(f, p, normalize=True).item() == pytest.approx(
        brute_force_batch_hard(F.normalize(f, dim=1), p, 0.3), abs=1e-4)
    with pytest.raises(ValueError, match='Expected feats'): batch_hard_triplet_loss(f[:, :, None], p)
    assert batch_hard_triplet_loss(f, torch.arange(8)).item() == 0.0  # no positives at all


def test_cross_entropy_label_smoothing_by_formula():
    g = torch.Generator().manual_seed(0)
    logits, y, eps = torch.randn(6, 5, generator=g), torch.tensor([0, 4, 2, 2, 1, 3]), 0.2
    q = torch.full((6, 5), eps / 5); q[torch.arange(6), y] += 1 - eps
    ref = -(q * logits.log_softmax(1)).sum(1).mean()
    assert cross_entropy(logits, y, eps).item() == pytest.approx(ref.item(), abs=1e-6)
    with pytest.raises(ValueError, match='Relabel'): cross_entropy(logits, torch.tensor([0, 5, 0, 0, 0, 0]))


def test_baseline_loss_combines_and_records_parts():
    cfg = get_preset('smoke', triplet_weight=0.7, triplet_margin=0.5, label_smoothing=0.0)
    lf = build_loss(cfg)
    assert isinstance(lf, WeightedLoss) and [(t.name, t.weight) for t in lf.terms] == [('ce', 1.0), ('triplet', 0.7)]
    logits, emb, pids = torch.randn(8, 4), torch.randn(8, 6), torch.arange(4).repeat(2)
    loss = lf(Outputs(logits={'id': logits}, feats={'triplet': emb}), pids)
    ce, tri = F.cross_entropy(logits, pids), brute_force_batch_hard(emb, pids, 0.5)
    assert lf.parts['ce'].item() == pytest.approx(ce.item(), abs=1e-5)
    assert lf.parts['triplet'].item() == pytest.approx(tri, abs=1e-4)
    assert loss.item() == pytest.approx(ce.item() + 0.7 * tri, abs=1e-4)
    with pytest.raises(TypeError, match='eval mode'): lf(emb, pids)
    with pytest.raises(ValueError, match="'baseline'"): build_loss(get_preset('smoke', method='nope'))


def test_weighted_loss_reads_outputs_and_targets_by_name():
    "Each term reads any output or target; the total is the weighted sum; parts are the unweighted values."
    out = Outputs(logits={'a': torch.randn(4, 3)}, feats={'f': torch.randn(4, 2, requires_grad=True)}, maps={'m': torch.rand(4, 6, 2, requires_grad=True)})
    targets = {'whole': torch.rand(4, 6, 2)}
    lf = WeightedLoss([Term('mse', lambda m, t: (m - t).pow(2).mean(), ('maps.m', 'targets.whole'), 0.1),
                       Term('norm', lambda f, p: f.norm(dim=1).mean() + 0 * p.sum(), ('feats.f', 'pids'), 2.0)])
    total = lf(out, torch.arange(4), targets)
    mse, norm = (out.maps['m'] - targets['whole']).pow(2).mean(), out.feats['f'].norm(dim=1).mean()
    assert torch.allclose(total, 0.1 * mse + 2 * norm) and set(lf.parts) == {'mse', 'norm'}
    assert torch.allclose(lf.parts['mse'], mse)
    total.backward(); assert out.feats['f'].grad is not None
    with pytest.raises(KeyError, match="available: logits.a, feats.f, maps.m"):
        WeightedLoss([Term('x', torch.mean, ('maps.S1w',))])(out, torch.arange(4))
    with pytest.raises(KeyError, match="it carries: whole"):
        WeightedLoss([Term('x', torch.mean, ('targets.upper',))])(out, torch.arange(4), targets)
