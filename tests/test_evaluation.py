"Evaluation against an independent brute-force reference, property tests and bad-input cases."
import math, warnings
import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st, HealthCheck
from torch.utils.data import DataLoader, TensorDataset

from reid_nb.evaluation import (extract_features, euclidean_distance, evaluate_ranking, chance_level,
                                protocol_keep, ranked_gallery, plot_cmc, plot_ranked_list, describe_gallery, pool_features,
                                evaluate_single_gallery_shot, single_gallery_shot_picks, mean_over_splits, bootstrap_ci)


def brute_force(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, with_trapezoid=False):
    "Per-query python loops: stable argsort, drop same-id-same-cam and junk, cumulative hits, AP = mean precision at hits."
    cmcs, aps, inps, skipped, traps = [], [], [], 0, []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind='stable')
        kept = [j for j in order if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        hits = [int(g_pids[j] == q_pids[i]) for j in kept]
        if sum(hits) == 0: skipped += 1; continue
        first = hits.index(1) + 1
        cmcs.append([1.0 if k >= first else 0.0 for k in range(1, max_rank + 1)])
        precs, n_hit, last = [], 0, 0
        for rank, h in enumerate(hits, 1):
            if h: n_hit += 1; precs.append(n_hit / rank); last = rank
        aps.append(sum(precs) / len(precs)); inps.append(n_hit / last)
        traps.append(market_trapezoid_ap(hits))
    if not aps: return (None, None, None, 0, skipped) + ((None,) if with_trapezoid else ())
    return (np.mean(cmcs, 0), np.mean(aps), np.mean(inps), len(aps), skipped) + ((np.mean(traps),) if with_trapezoid else ())


def market_trapezoid_ap(hits):
    "The official Market-1501 MATLAB compute_AP, line by line (junk already removed from `hits`)."
    ngood = sum(hits)
    old_recall, old_precision, ap, intersect_size, j, good_now = 0., 1., 0., 0, 0, 0
    for h in hits:
        if h: good_now += 1; intersect_size += 1
        recall = intersect_size / ngood
        precision = intersect_size / (j + 1)
        ap += (recall - old_recall) * ((old_precision + precision) / 2)
        old_recall, old_precision = recall, precision
        j += 1
        if good_now == ngood: return ap
    return ap


def random_problem(rng, Q, G, n_ids, n_cams, ties):
    q_pids = rng.integers(1, n_ids + 1, Q)
    g_pids = rng.integers(-1, n_ids + 1, G)          # includes junk (-1) and distractors (0)
    q_camids, g_camids = rng.integers(0, n_cams, Q), rng.integers(0, n_cams, G)
    distmat = rng.integers(0, 4, (Q, G)).astype(np.float32) if ties else rng.random((Q, G)).astype(np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize('seed', range(16))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    Q, G = int(rng.integers(1, 30)), int(rng.integers(1, 60))
    n_cams = 1 if seed == 0 else int(rng.integers(2, 5))  # one camera: every query is skipped → error
    args = random_problem(rng, Q, G, n_ids=int(rng.integers(1, 8)), n_cams=n_cams, ties=seed % 2 == 0)
    max_rank = int(rng.integers(1, 80))  # sometimes beyond the gallery size
    cmc, mAP, mINP, n_valid, n_skip, trap = brute_force(*args, max_rank, with_trapezoid=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if n_valid == 0:
            with pytest.raises(ValueError, match='None of the'): evaluate_ranking(*args, max_rank=max_rank)
            return
        # both ranking paths: candidates only (max_candidates=1) and whole-row sort (max_candidates=0)
        for mc in [1.0, 0.0, 0.5]:
            res = evaluate_ranking(*args, max_rank=max_rank, chunk_size=int(rng.integers(1, 8)), max_candidates=mc)
            assert res['cmc'].shape == (max_rank,)
            np.testing.assert_allclose(res['cmc'], cmc, atol=1e-12)
            assert res['rank1'] == pytest.approx(cmc[0])
            assert res['mAP'] == pytest.approx(mAP, abs=1e-12) and res['mINP'] == pytest.approx(mINP, abs=1e-12)
            assert res['mAP_trapezoid'] == pytest.approx(trap, abs=1e-12)
            assert (res['num_valid_queries'], res['num_skipped_queries']) == (n_valid, n_skip)


@pytest.mark.parametrize('dtype', [np.float32, np.float64, np.float16])
def test_structured_problem_all_paths_and_dtypes(dtype):
    "Clustered distances (a good model: few candidates per query), distractors and junk, in several float types."
    rng = np.random.default_rng(3)
    Q, G, n_ids = 60, 400, 30
    q_pids, g_pids = rng.integers(1, n_ids + 1, Q), rng.integers(-1, n_ids + 1, G)
    q_camids, g_camids = rng.integers(0, 4, Q), rng.integers(0, 4, G)
    distmat = (np.where(q_pids[:, None] == g_pids[None], 0.0, 1.0) + rng.random((Q, G)) * 1.2).astype(dtype)
    distmat[0, :5] = distmat[0, 5]  # a few exact ties
    ref = brute_force(distmat, q_pids, g_pids, q_camids, g_camids, 50, with_trapezoid=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for mc in [1.0, 0.0]:
            res = evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, chunk_size=16, max_candidates=mc)
            np.testing.assert_allclose(res['cmc'], ref[0], atol=1e-12)
            assert (res['mAP'], res['mINP'], res['mAP_trapezoid']) == pytest.approx((ref[1], ref[2], ref[5]), abs=1e-12)
    assert 0.3 < res['mAP'] < 1 and res['mAP_trapezoid'] < res['mAP']


def test_signed_zero_and_negative_distances_tie_rule():
    "Negative 'distances' (e.g. negated similarities) and -0.0 == 0.0 ties are ranked like the brute force."
    d = np.array([[0.0, -0.0, -1.5, 2.0, -0.0], [-0.0, 0.0, 0.0, -2.0, -3.0]], dtype=np.float32)
    args = (d, [1, 2], [2, 1, 3, 1, 2], [0, 0], [1, 1, 1, 1, 1])
    ref = brute_force(*args, 5, with_trapezoid=True)
    for mc in [1.0, 0.0]:
        res = evaluate_ranking(*args, max_rank=5, max_candidates=mc)
        np.testing.assert_allclose(res['cmc'], ref[0]); assert res['mAP'] == pytest.approx(ref[1])


def test_identity_absent_from_gallery_is_skipped_and_reported():
    distmat = np.array([[0.1, 0.2], [0.3, 0.1], [0.2, 0.2]])
    with pytest.warns(UserWarning, match='2 of 3 queries have no valid match'):
        res = evaluate_ranking(distmat, [1, 9, 8], [1, 2], [0, 0, 0], [1, 1])
    assert res['skipped_queries'].tolist() == [1, 2] and res['num_valid_queries'] == 1 and res['rank1'] == 1.0


def test_trapezoid_ap_hand_value():
    "Hits at ranks 2, 3, 6 (the chapter's worked example)."
    res = evaluate_ranking([[1., 2., 3., 4., 5., 6.]], [1], [2, 1, 1, 3, 4, 1], [0], [1] * 6, max_rank=6)
    assert res['mAP'] == pytest.approx((1/2 + 2/3 + 3/6) / 3)
    assert res['mAP_trapezoid'] == pytest.approx(((0 + 1/2) / 2 + (1/2 + 2/3) / 2 + (2/5 + 3/6) / 2) / 3)
    assert res['mAP_trapezoid'] == pytest.approx(market_trapezoid_ap([0, 1, 1, 0, 0, 1]))


def test_brute_force_larger_with_ties_and_torch_inputs():
    rng = np.random.default_rng(123)
    args = random_problem(rng, 80, 300, n_ids=25, n_cams=4, ties=True)
    cmc, mAP, mINP, n_valid, n_skip = brute_force(*args, 50)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        res = evaluate_ranking(*[torch.as_tensor(a) for a in args], max_rank=50, chunk_size=7)
    np.testing.assert_allclose(res['cmc'], cmc, atol=1e-12)
    assert res['mAP'] == pytest.approx(mAP, abs=1e-12) and res['mINP'] == pytest.approx(mINP, abs=1e-12)
    assert res['rank5'] == pytest.approx(cmc[4]) and res['rank10'] == pytest.approx(cmc[9])
    assert res['num_skipped_queries'] == n_skip
    assert (n_skip > 0) == any(f'{n_skip} of 80 queries have no valid match' in str(x.message) for x in w)


def test_skipped_queries_warn_and_count():
    # query 0's identity is only in its own camera: skipped; query 1 hits at rank 1, query 2 at rank 3
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.2, 0.1, 0.3]])
    with pytest.warns(UserWarning, match='1 of 3 queries have no valid match'):
        res = evaluate_ranking(distmat, [1, 2, 3], [1, 2, 3], [0, 0, 0], [0, 1, 1])
    assert res['num_valid_queries'] == 2 and res['num_skipped_queries'] == 1 and res['rank1'] == 0.5


def kept_by_rule(q_pid, q_camid, g_pid, g_camid):
    "The Market protocol, one pair at a time."
    return g_pid != -1 and not (g_pid == q_pid and g_camid == q_camid)


def test_protocol_keep_matches_rule():
    rng = np.random.default_rng(7)
    _, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 20, 50, n_ids=4, n_cams=3, ties=False)
    keep = protocol_keep(*[torch.as_tensor(a) for a in (q_pids, g_pids, q_camids, g_camids)])
    ref = [[kept_by_rule(q_pids[i], q_camids[i], g_pids[j], g_camids[j]) for j in range(50)] for i in range(20)]
    assert keep.dtype == torch.bool and keep.tolist() == ref
    assert 0 < keep.sum() < keep.numel()  # the example exercises both outcomes


def test_junk_never_counts_and_distractors_are_negatives():
    # junk (-1) nearest: ignored; distractor (0) nearest: a wrong answer at rank 1
    assert evaluate_ranking([[0.0, 1.0]], [5], [-1, 5], [0], [1, 1])['rank1'] == 1.0
    res = evaluate_ranking([[0.0, 1.0]], [5], [0, 5], [0], [1, 1])
    assert res['rank1'] == 0.0 and res['mAP'] == 0.5
    # the same-id-same-camera image is removed, so the other-camera match at distance 1.0 is rank 1
    res = evaluate_ranking([[0.0, 1.0, 2.0]], [7], [7, 7, 3], [1], [1, 2, 2], max_rank=3)
    assert res['cmc'].tolist() == [1.0, 1.0, 1.0] and res['mAP'] == 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.integers(1, 12), st.integers(2, 40))
def test_gallery_permutation_invariance(seed, Q, G):
    rng = np.random.default_rng(seed)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, Q, G, n_ids=5, n_cams=3, ties=False)
    distmat = rng.permutation(Q * G).reshape(Q, G).astype(np.float32)  # distinct values: no ties
    g_pids[0], g_camids[0], q_pids[0], q_camids[0] = 1, 1, 1, 0        # at least one valid query
    perm = rng.permutation(G)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        a = evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10)
        b = evaluate_ranking(distmat[:, perm], q_pids, g_pids[perm], q_camids, g_camids[perm], max_rank=10)
    np.testing.assert_allclose(a['cmc'], b['cmc']); assert a['mAP'] == pytest.approx(b['mAP']) and a['mINP'] == pytest.approx(b['mINP'])
    assert a['mAP_trapezoid'] == pytest.approx(b['mAP_trapezoid'])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 10), st.integers(1, 30))
def test_perfect_distance_scores_one(seed, Q, G):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(1, 5, Q), rng.integers(-1, 5, G)
    q_camids, g_camids = rng.integers(0, 3, Q), rng.integers(0, 3, G)
    distmat = np.where(q_pids[:, None] == g_pids[None], 0.0, 1.0) + rng.random((Q, G)) * 0.5  # every match before every non-match
    any_valid = any(q_pids[i] == g_pids[j] and kept_by_rule(q_pids[i], q_camids[i], g_pids[j], g_camids[j])
                    for i in range(Q) for j in range(G))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if not any_valid:
            with pytest.raises(ValueError, match='None of the'): evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids)
            return
        res = evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids)
    assert res['rank1'] == 1.0 and res['mAP'] == pytest.approx(1.0) and res['mINP'] == pytest.approx(1.0)
    assert res['mAP_trapezoid'] == pytest.approx(1.0)
    assert (res['cmc'] == 1.0).all()


def test_ties_follow_gallery_order():
    assert evaluate_ranking([[1.0, 1.0]], [1], [1, 2], [0], [1, 1])['rank1'] == 1.0
    assert evaluate_ranking([[1.0, 1.0]], [1], [2, 1], [0], [1, 1])['rank1'] == 0.0


def test_chance_level_exact_against_enumeration():
    # enumerate all rankings of a small valid gallery per query
    import itertools
    q_pids, g_pids = np.array([1, 2]), np.array([1, 1, 2, 3, -1, 1, 0])
    q_camids, g_camids = np.array([0, 1]), np.array([0, 1, 2, 1, 1, 2, 0])
    ch = chance_level(q_pids, g_pids, q_camids, g_camids)
    aps, r1s = [], []
    for i in range(2):
        valid = [j for j in range(7) if kept_by_rule(q_pids[i], q_camids[i], g_pids[j], g_camids[j])]
        ap_i, r1_i = [], []
        for perm in itertools.permutations(valid):
            d = np.full((1, 7), 99.0); d[0, list(perm)] = np.arange(len(perm))
            res = evaluate_ranking(d, q_pids[i:i+1], g_pids, q_camids[i:i+1], g_camids)
            ap_i.append(res['mAP']); r1_i.append(res['rank1'])
        aps.append(np.mean(ap_i)); r1s.append(np.mean(r1_i))
    assert ch['mAP'] == pytest.approx(np.mean(aps)) and ch['rank1'] == pytest.approx(np.mean(r1s))
    assert ch['num_valid_queries'] == 2


@pytest.mark.parametrize('bad, match', [
    (dict(q_pids=[1, 2, 3]), r'q_pids must be 1-D.*expected shape \(2,\), found \(3,\)'),
    (dict(g_camids=[0, 1]), r'g_camids must be 1-D.*expected shape \(3,\), found \(2,\)'),
    (dict(distmat=np.array([[0., np.nan, 1.], [0., 1., 2.]])), 'NaN/inf'),
    (dict(distmat=np.array([[0., np.inf, 1.], [0., 1., 2.]])), 'NaN/inf'),
    (dict(distmat=np.zeros(3)), r'Expected a non-empty \(num_query, num_gallery\)'),
    (dict(q_pids=[1.5, 2.0]), 'integer ids'),
    (dict(max_rank=0), 'max_rank must be a positive int'),
])
def test_bad_inputs(bad, match):
    kw = dict(distmat=np.zeros((2, 3)), q_pids=[1, 2], g_pids=[1, 2, 2], q_camids=[0, 0], g_camids=[1, 1, 1])
    kw.update(bad)
    with pytest.raises(ValueError, match=match): evaluate_ranking(**kw)


def test_euclidean_distance():
    q, g = torch.randn(9, 5, dtype=torch.float64), torch.randn(13, 5, dtype=torch.float64)
    ref = ((q[:, None] - g[None]) ** 2).sum(-1)
    torch.testing.assert_close(euclidean_distance(q, g, squared=True, dtype=torch.float64), ref)
    torch.testing.assert_close(euclidean_distance(q.numpy(), g.numpy()), ref.sqrt().float(), atol=1e-4, rtol=1e-4)
    assert (euclidean_distance(q, q) >= 0).all()
    with pytest.raises(ValueError, match='same D'): euclidean_distance(q, torch.randn(2, 4))


class FirstColumn(nn.Module):
    "Descriptor = the image's first pixel column; its mirror's descriptor is the last column."
    def __init__(self): super().__init__(); self.drop = nn.Dropout(0.9)
    def forward(self, x): return self.drop(x[..., 0].flatten(1))


def test_extract_features_flip_and_modes():
    imgs = torch.randn(7, 3, 4, 6)
    dl = DataLoader(TensorDataset(imgs, torch.arange(7), torch.arange(7) % 3), batch_size=3)
    m = FirstColumn().train()
    f, p, c = extract_features(m, dl, flip=True, progress=False)
    # dropout would scramble values if eval mode were not set
    torch.testing.assert_close(f, ((imgs[..., 0] + imgs[..., -1]) / 2).flatten(1))
    torch.testing.assert_close(extract_features(m, dl, flip=False, progress=True)[0], imgs[..., 0].flatten(1))
    assert f.dtype == torch.float32 and f.device.type == 'cpu' and p.dtype == c.dtype == torch.int64
    assert p.tolist() == list(range(7)) and c.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert m.training and m.drop.training
    # mixed modes are restored exactly
    m.drop.eval(); extract_features(m, dl, progress=False)
    assert m.training and not m.drop.training


def test_extract_features_bad_batches():
    with pytest.raises(ValueError, match=r'Expected evaluation batches \(images, pids, camids\)'):
        extract_features(FirstColumn(), [(torch.zeros(1, 3, 2, 2), torch.zeros(1))], progress=False)
    class Tup(nn.Module):
        def forward(self, x): return x, x
    with pytest.raises(TypeError, match=r'expected a \(B, D\) tensor'):
        extract_features(Tup(), [(torch.zeros(1, 3, 2, 2), torch.zeros(1), torch.zeros(1))], progress=False)


def test_ranked_gallery_and_figures(tmp_path):
    import matplotlib; matplotlib.use('Agg')
    from PIL import Image
    rng = np.random.default_rng(0)
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(rng, 3, 12, n_ids=2, n_cams=3, ties=True)
    for i in range(3):
        order = ranked_gallery(distmat[i], q_pids[i], q_camids[i], g_pids, g_camids)
        expected = [j for j in np.argsort(distmat[i], kind='stable') if kept_by_rule(q_pids[i], q_camids[i], g_pids[j], g_camids[j])]
        assert list(order) == expected and 0 < len(expected) < 12
    paths = []
    for i in range(15):
        paths.append(tmp_path / f'{i}.png'); Image.fromarray(rng.integers(0, 255, (16, 8, 3), dtype=np.uint8)).save(paths[-1])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fig = plot_ranked_list(paths[:3], paths[3:], distmat, q_pids, g_pids, q_camids, g_camids, n_queries=2, topk=4)
    n_valid = brute_force(distmat, q_pids, g_pids, q_camids, g_camids, 1)[3]
    assert n_valid >= 2 and len(fig.axes) == 2 * 5  # rows are scorable queries, each with the query + top-4
    colours = {tuple(np.round(ax.spines['top'].get_edgecolor(), 3)) for ax in fig.axes if ax.axison}
    assert colours <= {tuple(np.round(matplotlib.colors.to_rgba(c), 3)) for c in ['royalblue', 'limegreen', 'red']}
    with pytest.raises(ValueError, match='Expected 3 query and 12 gallery images'):
        plot_ranked_list(paths[:2], paths[3:], distmat, q_pids, g_pids, q_camids, g_camids)
    cam_labels = [t for ax in fig.axes for t in ax.get_title().split('\n') if t.startswith('cam ')]
    shown = {int(t.split()[1]) for t in cam_labels}
    assert shown and shown <= {c + 1 for c in np.unique(np.r_[q_camids, g_camids]).tolist()}   # the dataset's 1-based numbering
    assert 0 not in shown and describe_gallery(g_pids) in fig._suptitle.get_text()
    fig = plot_cmc({'a': np.linspace(0.2, 1, 10), 'b': {'cmc': np.ones(10), 'mAP': 0.5}})
    assert len(fig.axes[0].lines) == 2 and 'mAP 50.0%' in fig.axes[0].get_legend().get_texts()[1].get_text()
    long = np.linspace(0.2, 1, 50)
    assert list(plot_cmc({'a': long}).axes[0].lines[0].get_xdata()) == list(range(1, 21))    # ranks 1-20 by default
    assert len(plot_cmc({'a': long}, max_rank=None).axes[0].lines[0].get_xdata()) == 50


def test_describe_gallery_does_not_count_distractors_or_junk_as_identities():
    assert describe_gallery([3, 3, 5, 0, 0, -1]) == '6 images: 2 ids + 2 distractors + 1 junk'
    assert describe_gallery([4, 0]) == '2 images: 1 id + 1 distractor'
    assert describe_gallery(torch.tensor([1, 2, 2])) == '3 images: 2 ids'


def test_pool_features_against_loops():
    rng = np.random.default_rng(0)
    feats, groups = rng.normal(size=(30, 5)), rng.permutation(np.arange(30) % 7)
    mean, mx = pool_features(feats, groups), pool_features(feats, groups, how='max')
    for k in range(7):
        np.testing.assert_allclose(mean[k].numpy(), feats[groups == k].mean(0), atol=1e-12)
        np.testing.assert_allclose(mx[k].numpy(), feats[groups == k].max(0))
    with pytest.raises(ValueError, match='1 of 8 queries have no image to pool'): pool_features(feats, groups, n_queries=8)
    with pytest.raises(ValueError, match='one group index per row'): pool_features(feats, groups[:5])
    with pytest.raises(ValueError, match=r'lie in \[0, 3\)'): pool_features(feats, groups, n_queries=3)


def test_multi_query_through_evaluate_ranking():
    "Pooled query features are evaluated like single queries; pooling several noisy views helps."
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 16))
    g_pids = np.repeat(np.arange(20), 4); g_camids = np.tile([1, 2, 3, 4], 20)
    gf = centres[g_pids] + rng.normal(size=(80, 16)) * 1.5
    q_pids, q_camids = np.arange(20), np.zeros(20, int)
    views = np.repeat(np.arange(20), 5)
    mq = centres[views] + rng.normal(size=(100, 16)) * 1.5
    single = evaluate_ranking(euclidean_distance(mq[::5], gf), q_pids, g_pids, q_camids, g_camids)
    multi = evaluate_ranking(euclidean_distance(pool_features(mq, views), gf), q_pids, g_pids, q_camids, g_camids)
    assert multi['mAP'] > single['mAP']


def sgs_brute_force(distmat, q_pids, g_pids, q_camids, g_camids, repeats, seed, max_rank):
    "Loop version: the same picks, then each query ranked among the picked images with the stable tie rule."
    ids = np.unique(g_pids)
    cmc, n = np.zeros(max_rank), 0
    for i in range(len(q_pids)):
        picks = single_gallery_shot_picks(g_pids, g_camids, int(q_camids[i]), repeats, seed).numpy()
        if q_pids[i] not in ids or q_pids[i] == -1: continue
        col = list(ids).index(q_pids[i])
        if picks[0, col] < 0: continue
        n += 1
        for p in picks:
            chosen = [j for j in p if j >= 0]
            order = sorted(chosen, key=lambda j: (distmat[i, j], j))
            r = order.index(p[col])
            cmc += np.arange(max_rank) >= r
    return cmc / (n * repeats), n


@pytest.mark.parametrize('seed', range(6))
def test_single_gallery_shot_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_ids = int(rng.integers(3, 12))
    g_pids = np.concatenate([rng.integers(1, n_ids + 1, 40), [-1, -1]]); g_camids = rng.integers(0, 2, 42)
    q_pids, q_camids = rng.integers(1, n_ids + 3, 15), rng.integers(0, 2, 15)  # some identities absent
    distmat = rng.integers(0, 5, (15, 42)).astype(float) if seed % 2 else rng.random((15, 42))
    cmc, n = sgs_brute_force(distmat, q_pids, g_pids, q_camids, g_camids, 5, seed, 10)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if n == 0:
            with pytest.raises(ValueError): evaluate_single_gallery_shot(distmat, q_pids, g_pids, q_camids, g_camids, 5, seed, 10)
            return
        res = evaluate_single_gallery_shot(distmat, q_pids, g_pids, q_camids, g_camids, repeats=5, seed=seed, max_rank=10)
    np.testing.assert_allclose(res['cmc'], cmc, atol=1e-12)
    assert res['num_valid_queries'] == n and res['num_skipped_queries'] == 15 - n


def test_single_gallery_shot_seeded_and_averaged():
    rng = np.random.default_rng(0)
    g_pids, g_camids = np.repeat(np.arange(1, 31), 6), np.tile([0, 0, 0, 1, 1, 1], 30)
    q_pids, q_camids = np.arange(1, 31), np.zeros(30, int)
    distmat = rng.random((30, 180))
    a = evaluate_single_gallery_shot(distmat, q_pids, g_pids, q_camids, g_camids, seed=1)
    b = evaluate_single_gallery_shot(distmat, q_pids, g_pids, q_camids, g_camids, seed=1)
    c = evaluate_single_gallery_shot(distmat, q_pids, g_pids, q_camids, g_camids, seed=2)
    assert np.array_equal(a['cmc'], b['cmc']) and not np.array_equal(a['cmc'], c['cmc'])
    # a random ranking among 30 single shots: expected rank-1 = 1/30
    assert a['rank1'] == pytest.approx(1 / 30, abs=0.05)
    m = mean_over_splits([a, c])
    np.testing.assert_allclose(m['cmc'], (a['cmc'] + c['cmc']) / 2); assert m['num_splits'] == 2


@pytest.mark.parametrize('case', range(4))
def test_single_gallery_shot_picks_property(case):
    """Independent of the library's sampler: one eligible pick per identity (camid != camera, pid != -1), -1 where the
    identity has none, and over many seeds every eligible image of an identity is picked with frequency ≈ 1/n_eligible."""
    from scipy.stats import chi2
    rng = np.random.default_rng(100 + case)
    n_g = int(rng.integers(20, 60))
    g_pids = rng.integers(1, int(rng.integers(3, 10)), n_g); g_pids[rng.random(n_g) < 0.1] = -1
    g_camids = rng.integers(0, int(rng.integers(2, 4)), n_g)
    camera = int(g_camids[0])
    ids = np.unique(g_pids)
    eligible = [np.flatnonzero((g_pids == pid) & (g_camids != camera) & (pid != -1)) for pid in ids]
    counts = [dict.fromkeys(e.tolist(), 0) for e in eligible]
    n_seeds, repeats = 300, 4
    for seed in range(n_seeds):
        picks = single_gallery_shot_picks(g_pids, g_camids, camera, repeats=repeats, seed=seed).numpy()
        assert picks.shape == (repeats, len(ids))
        for col, e in enumerate(eligible):
            if len(e) == 0:
                assert (picks[:, col] == -1).all()
                continue
            for p in picks[:, col]:
                assert p in counts[col]  # the identity's own image, another camera, not junk
                counts[col][p] += 1
    total = n_seeds * repeats
    for c in counts:
        if len(c) < 2: continue
        obs = np.array(list(c.values()), dtype=float)
        exp = total / len(c)
        stat = ((obs - exp) ** 2 / exp).sum()
        assert stat < chi2.ppf(0.9999, len(c) - 1), (obs, exp)  # uniform among the eligible images


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_single_gallery_shot_on_cuda():
    rng = np.random.default_rng(0)
    g_pids, g_camids = rng.integers(1, 8, 50), rng.integers(0, 3, 50)
    q_pids, q_camids = rng.integers(1, 8, 10), rng.integers(0, 3, 10)
    distmat = rng.random((10, 50))
    cpu = single_gallery_shot_picks(g_pids, g_camids, 1, repeats=5, seed=3)
    gpu = single_gallery_shot_picks(torch.tensor(g_pids).cuda(), torch.tensor(g_camids).cuda(), 1, repeats=5, seed=3)
    assert torch.equal(cpu, gpu.cpu())
    a = evaluate_single_gallery_shot(distmat, q_pids, g_pids, q_camids, g_camids, repeats=5, seed=3, max_rank=5)
    b = evaluate_single_gallery_shot(*[torch.tensor(x).cuda() for x in (distmat, q_pids, g_pids, q_camids, g_camids)],
                                     repeats=5, seed=3, max_rank=5)
    np.testing.assert_allclose(a['cmc'], b['cmc'])


def test_load_image_uses_the_pipeline_reader(tmp_path):
    "Paths go through `reid_nb.data.pipeline.read_image`: RGB arrays, and a missing file names itself."
    from PIL import Image
    from reid_nb.evaluation import _load_image
    Image.fromarray(np.full((4, 3), 7, np.uint8), 'L').save(tmp_path / 'a.png')
    a = _load_image(tmp_path / 'a.png')
    assert a.shape == (4, 3, 3) and (a == 7).all()
    with pytest.raises(FileNotFoundError, match='b.png'): _load_image(str(tmp_path / 'b.png'))


def brute_force_per_query(distmat, q_pids, g_pids, q_camids, g_camids):
    "Per scored query, in query order: rank of the first hit and AP (loops, stable argsort)."
    firsts, aps = [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind='stable')
        kept = [j for j in order if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        hits = [int(g_pids[j] == q_pids[i]) for j in kept]
        if sum(hits) == 0: continue
        ranks = [r for r, h in enumerate(hits, 1) if h]
        firsts.append(ranks[0]); aps.append(np.mean([n / r for n, r in enumerate(ranks, 1)]))
    return np.array(firsts), np.array(aps)


@pytest.mark.parametrize('seed', range(8))
def test_per_query_scores_match_brute_force_and_average_exactly(seed):
    rng = np.random.default_rng(seed)
    Q, G = int(rng.integers(5, 40)), int(rng.integers(20, 80))
    args = random_problem(rng, Q, G, n_ids=int(rng.integers(2, 8)), n_cams=3, ties=seed % 2 == 0)
    firsts, aps = brute_force_per_query(*args)
    if len(firsts) == 0: return
    max_rank = int(rng.integers(1, 30))  # rank-20 must not depend on it
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = evaluate_ranking(*args, max_rank=max_rank, chunk_size=int(rng.integers(1, 8)))
    pq = res['per_query']
    assert list(pq) == ['rank1', 'rank5', 'rank10', 'rank20', 'mAP']
    for k in (1, 5, 10, 20):
        assert pq[f'rank{k}'].dtype == np.float64 and pq[f'rank{k}'].shape == (res['num_valid_queries'],)
        np.testing.assert_array_equal(pq[f'rank{k}'], (firsts <= k).astype(float))
    np.testing.assert_allclose(pq['mAP'], aps, atol=1e-12)
    for k, v in pq.items(): assert v.mean() == res[k], k  # exactly, not approximately
    assert res['rank20'] == np.mean(firsts <= 20)
    if max_rank >= 20: assert res['rank20'] == res['cmc'][19]


def test_rank20_beyond_max_rank_and_gallery():
    "A first hit at rank 15 counts for rank-20 even with max_rank=10; a gallery of 3 repeats its last value."
    g_pids = np.r_[np.full(14, 2), 1]; g_camids = np.ones(15, int)
    d = np.arange(15, dtype=float)[None]
    res = evaluate_ranking(d, [1], g_pids, [0], g_camids, max_rank=10)
    assert (res['rank10'], res['rank20'], len(res['cmc'])) == (0.0, 1.0, 10)
    assert evaluate_ranking([[0.3, 0.1, 0.2]], [1], [2, 2, 1], [0], [1, 1, 1], max_rank=2)['rank20'] == 1.0


def sgs_brute_force_per_query(distmat, q_pids, g_pids, q_camids, g_camids, repeats, seed, max_rank):
    "Per valid query (query order): fraction of the samplings with the match within rank k (k cut at max_rank)."
    ids = list(np.unique(g_pids))
    out = []
    for i in range(len(q_pids)):
        picks = single_gallery_shot_picks(g_pids, g_camids, int(q_camids[i]), repeats, seed).numpy()
        if q_pids[i] not in ids or q_pids[i] == -1 or picks[0, ids.index(q_pids[i])] < 0: continue
        col = ids.index(q_pids[i])
        ranks = [sorted([j for j in p if j >= 0], key=lambda j: (distmat[i, j], j)).index(p[col]) + 1 for p in picks]
        out.append([np.mean([r <= min(k, max_rank) for r in ranks]) for k in (1, 5, 10, 20)])
    return np.array(out)


@pytest.mark.parametrize('seed,max_rank', [(0, 10), (1, 3), (2, 50), (3, 25)])
def test_single_gallery_shot_per_query(seed, max_rank):
    rng = np.random.default_rng(seed)
    g_pids = np.concatenate([rng.integers(1, 25, 120), [-1]]); g_camids = rng.integers(0, 2, 121)
    q_pids, q_camids = rng.integers(1, 27, 20), rng.integers(0, 2, 20)
    distmat = rng.integers(0, 5, (20, 121)).astype(float) if seed % 2 else rng.random((20, 121))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = evaluate_single_gallery_shot(distmat, q_pids, g_pids, q_camids, g_camids, repeats=7, seed=seed, max_rank=max_rank)
    expected = sgs_brute_force_per_query(distmat, q_pids, g_pids, q_camids, g_camids, 7, seed, max_rank)
    pq = res['per_query']
    assert list(pq) == ['rank1', 'rank5', 'rank10', 'rank20'] and len(pq['rank1']) == res['num_valid_queries']
    for j, k in enumerate((1, 5, 10, 20)):
        np.testing.assert_allclose(pq[f'rank{k}'], expected[:, j], atol=1e-12)
        assert pq[f'rank{k}'].mean() == pytest.approx(res[f'rank{k}'], abs=1e-12)
        assert res[f'rank{k}'] == res['cmc'][min(k, max_rank) - 1]
    assert mean_over_splits([res, res])['rank20'] == res['rank20']


def bootstrap_brute_force(per_query, n_boot, level, seed):
    "One draw at a time: n uniforms → indices floor(n·u), the mean of every metric on them, then percentiles."
    rng = np.random.default_rng(seed)
    n = len(next(iter(per_query.values())))
    means = {k: [] for k in per_query}
    for _ in range(n_boot):
        idx = [min(int(u * n), n - 1) for u in rng.random(n)]
        for k, v in per_query.items(): means[k].append(sum(v[i] for i in idx) / n)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {k: tuple(np.percentile(m, q)) for k, m in means.items()}


@pytest.mark.parametrize('n,n_boot,level,seed', [(7, 200, 0.95, 0), (13, 333, 0.9, 5), (1, 10, 0.5, 2)])
def test_bootstrap_matches_brute_force(n, n_boot, level, seed):
    rng = np.random.default_rng(seed)
    pq = {'rank1': (rng.random(n) < 0.5).astype(float), 'mAP': rng.random(n)}
    fast, slow = bootstrap_ci(pq, n_boot, level, seed), bootstrap_brute_force(pq, n_boot, level, seed)
    assert list(fast) == list(pq)
    for k in pq: np.testing.assert_allclose(fast[k], slow[k], atol=1e-12, rtol=0)


def test_bootstrap_chunks_do_not_change_the_draws():
    "Draws come in chunks of 2**22 // n: a problem needing several chunks equals the draw-by-draw loop."
    rng = np.random.default_rng(0)
    n = 2**22 // 3 + 1                          # chunks of 2 draws, the last one shorter
    pq = {'rank1': (rng.random(n) < 0.3).astype(float)}
    fast = bootstrap_ci(pq, n_boot=5, seed=3)
    gen = np.random.default_rng(3)
    means = [pq['rank1'][np.minimum((gen.random(n) * n).astype(np.int64), n - 1)].mean() for _ in range(5)]
    np.testing.assert_allclose(fast['rank1'], np.percentile(means, [2.5, 97.5]), atol=1e-12, rtol=0)


def test_bootstrap_contains_estimate_narrows_and_is_seeded():
    rng = np.random.default_rng(0)
    small, large = [{'rank1': (rng.random(n) < 0.4).astype(float), 'mAP': rng.beta(2, 3, n)} for n in (50, 5000)]
    for pq in (small, large):
        ci = bootstrap_ci(pq)
        for k, (lo, hi) in ci.items(): assert lo <= pq[k].mean() <= hi and lo < hi
    w = {n: {k: hi - lo for k, (lo, hi) in bootstrap_ci(pq).items()} for n, pq in ((50, small), (5000, large))}
    for k in ('rank1', 'mAP'): assert w[5000][k] < w[50][k] / 5   # ≈ 1/√100 = 1/10 as wide
    assert bootstrap_ci(small, seed=4) == bootstrap_ci(small, seed=4) != bootstrap_ci(small, seed=5)
    assert bootstrap_ci(small, level=0.5)['rank1'][1] - bootstrap_ci(small, level=0.5)['rank1'][0] < w[50]['rank1']


def test_bootstrap_on_an_evaluation():
    "The per_query of a real evaluation goes straight in; every interval holds its point estimate."
    rng = np.random.default_rng(3)
    args = random_problem(rng, 60, 200, n_ids=10, n_cams=3, ties=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = evaluate_ranking(*args)
    ci = bootstrap_ci(res['per_query'], n_boot=300)
    assert list(ci) == ['rank1', 'rank5', 'rank10', 'rank20', 'mAP']
    for k, (lo, hi) in ci.items(): assert lo <= res[k] <= hi


@pytest.mark.parametrize('bad,match', [
    ({}, 'non-empty dict'), ([0.5, 1.0], 'non-empty dict'),
    ({'rank1': []}, "per_query\\['rank1'\\] has shape \\(0,\\); expected a 1-D array of one or more scores"),
    ({'rank1': [1., 0., 1.], 'mAP': [0.2, 0.3]}, "per_query\\['mAP'\\] has shape \\(2,\\); expected a 1-D array of 3 scores"),
    ({'rank1': [[1., 0.]]}, 'has shape \\(1, 2\\); expected a 1-D array of 1 scores'),
    ({'mAP': [0.1, np.nan]}, 'NaN/inf')])
def test_bootstrap_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match): bootstrap_ci(bad)


def test_bootstrap_bad_settings():
    with pytest.raises(ValueError, match='n_boot must be a positive int'): bootstrap_ci({'a': [1.]}, n_boot=0)
    with pytest.raises(ValueError, match='level must lie strictly between 0 and 1'): bootstrap_ci({'a': [1.]}, level=95)
