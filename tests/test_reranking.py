"""k-reciprocal re-ranking against an independent NumPy reference (the published algorithm's structure)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from reid_nb.evaluation import euclidean_distance, evaluate_ranking
from reid_nb.reranking import re_ranking, re_ranking_distances


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3, v_dtype=np.float32, kind=None):
    """Zhong et al.'s re-ranking as published (torchreid's port of the authors' code): Euclidean distances in,
    squared inside, column-max normalisation, dense V. The authors' code stores V in float16; we default to
    float32 (as torchreid does) because float16 is a storage choice that moves results by ~1e-3. `kind` is
    np.argsort's: None is torchreid's (quicksort, unstable: exact ties in any order); 'stable' puts the
    smaller index first, which is reid_nb's rule."""
    original_dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                                    np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1. * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(v_dtype)
    initial_rank = np.argsort(original_dist, kind=kind).astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = original_dist.shape[0]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate, :int(np.around(k1 / 2.)) + 1]
            candidate_backward_k_neigh_index = initial_rank[candidate_forward_k_neigh_index, :int(np.around(k1 / 2.)) + 1]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2. / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1. * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=v_dtype)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(V[i, indNonZero[j]], V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2. - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def clustered(seed, n_ids, per_id, dim, noise, Q):
    "Features with identity structure; the first Q rows are queries."
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_ids, dim)).repeat(per_id, 0) + noise * rng.normal(size=(n_ids * per_id, dim))
    x = x[rng.permutation(len(x))]
    return torch.tensor(x[:Q]), torch.tensor(x[Q:])


def blocks(qf, gf):
    "The three Euclidean distance matrices the reference takes, as float32 NumPy arrays."
    return [euclidean_distance(a, b, dtype=torch.float64).float().numpy() for a, b in [(qf, gf), (qf, qf), (gf, gf)]]


@pytest.mark.parametrize('seed, k1, k2, lam, n_ids, per_id, Q', [
    (0, 20, 6, 0.3, 30, 8, 40),      # the paper's parameters
    (1, 20, 6, 0.3, 12, 25, 60),     # many images per identity: large expanded sets
    (2, 5, 3, 0.5, 20, 6, 25),       # odd k1: round(2.5) = 2 (halves to even, as NumPy)
    (3, 7, 1, 0.0, 15, 5, 10),       # k2 = 1 skips query expansion; λ = 0: pure Jaccard
    (4, 30, 10, 1.0, 10, 4, 5),      # k1 + 1 close to N
])
def test_matches_reference_from_distances(seed, k1, k2, lam, n_ids, per_id, Q):
    qf, gf = clustered(seed, n_ids, per_id, 16, 0.7, Q)
    q_g, q_q, g_g = blocks(qf, gf)
    ref = reference_re_ranking(q_g, q_q, g_g, k1, k2, lam)
    ours = re_ranking_distances(q_g, q_q, g_g, k1, k2, lam, chunk_size=17)
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize('seed, k1, k2, lam, n_ids, per_id, Q', [
    (8, 3, 6, 0.3, 10, 6, 15),       # k2 > k1 + 1: expansion needs more neighbours than the reciprocal sets
    (9, 2, 8, 0.3, 8, 5, 10),        # k2 ≫ k1 + 1
    (10, 20, 6, 0.3, 1, 5, 2),       # tiny N = 5 < k2 < k1 + 1: every table holds all N images
    (11, 2, 6, 0.5, 2, 2, 1),        # k1 + 1 < N = 4 < k2
    (12, 1, 3, 0.3, 1, 2, 1),        # N = 2
])
def test_matches_reference_large_k2_and_tiny_n(seed, k1, k2, lam, n_ids, per_id, Q):
    "Regression: neighbours were computed to k1 + 1 only, so k2 > k1 + 1 (or N < k2) averaged the wrong rows."
    qf, gf = clustered(seed, n_ids, per_id, 16, 0.7, Q)
    ref = reference_re_ranking(*blocks(qf, gf), k1, k2, lam)
    np.testing.assert_allclose(re_ranking_distances(*blocks(qf, gf), k1, k2, lam, chunk_size=3).numpy(), ref, atol=1e-5, rtol=0)
    for chunk in [None, 3]:
        np.testing.assert_allclose(re_ranking(qf, gf, k1, k2, lam, chunk_size=chunk, dtype=torch.float64).numpy(), ref,
                                   atol=1e-5, rtol=0)


def test_matches_reference_from_features():
    qf, gf = clustered(5, 40, 7, 32, 0.8, 50)
    ref = reference_re_ranking(*blocks(qf, gf))
    for chunk in [None, 13]:
        np.testing.assert_allclose(re_ranking(qf, gf, chunk_size=chunk, dtype=torch.float64).numpy(), ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(re_ranking(qf.float(), gf.float()).numpy(), ref, atol=1e-5, rtol=0)


def test_float16_reference_differs_by_about_1e3():
    "Why the reference test uses float32: the authors' float16 V moves the result by far more than 1e-5."
    qf, gf = clustered(6, 20, 6, 16, 0.7, 20)
    b = blocks(qf, gf)
    diff = np.abs(reference_re_ranking(*b, v_dtype=np.float16) - reference_re_ranking(*b)).max()
    assert 1e-5 < diff < 1e-2


def test_squared_input_is_a_different_answer():
    "Feeding already-squared distances (the classic mistake) changes the result."
    qf, gf = clustered(7, 20, 6, 16, 0.7, 20)
    q_g, q_q, g_g = blocks(qf, gf)
    good = re_ranking_distances(q_g, q_q, g_g)
    bad = re_ranking_distances(q_g ** 2, q_q ** 2, g_g ** 2)
    assert (good - bad).abs().max() > 1e-3


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6))
def test_gallery_permutation_equivariance(seed):
    "Permuting the gallery permutes the columns of the result and changes nothing else."
    qf, gf = clustered(seed, 8, 5, 8, 0.6, 6)
    perm = torch.as_tensor(np.random.default_rng(seed).permutation(len(gf)))
    a, b = re_ranking(qf, gf, k1=6, k2=3, dtype=torch.float64), re_ranking(qf, gf[perm], k1=6, k2=3, dtype=torch.float64)
    torch.testing.assert_close(a[:, perm], b, atol=1e-6, rtol=0)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10**6))
def test_separated_identities_rank_perfectly(seed):
    "Identities far apart: re-ranked distances keep every true match first (rank-1 = mAP = 1)."
    rng = np.random.default_rng(seed)
    n_ids, per = 6, 6
    pids = np.repeat(np.arange(1, n_ids + 1), per)
    x = rng.normal(size=(n_ids, 8)).repeat(per, 0) * 50 + rng.normal(size=(n_ids * per, 8))
    cams = np.tile(np.arange(per), n_ids)
    q = np.arange(0, n_ids * per, per)
    g = np.setdiff1d(np.arange(n_ids * per), q)
    d = re_ranking(torch.tensor(x[q]), torch.tensor(x[g]), k1=4, k2=2)
    res = evaluate_ranking(d, pids[q], pids[g], cams[q], cams[g])
    assert res['rank1'] == 1.0 and res['mAP'] == pytest.approx(1.0)


@pytest.mark.parametrize('call, match', [
    (lambda q, g: re_ranking(q, g[:, :3]), 'same D'),
    (lambda q, g: re_ranking(q[:0], g), r'found \(0, 8\)'),
    (lambda q, g: re_ranking(q, g, k2=0), 'k2 must be a positive int'),
    (lambda q, g: re_ranking(q, g, lambda_value=1.5), r'lambda_value must lie in \[0, 1\]'),
    (lambda q, g: re_ranking(q * float('inf'), g), 'NaN/inf'),
    (lambda q, g: re_ranking_distances(np.ones((2, 5)), np.ones((2, 2)), np.ones((4, 4))), r'g_g \(G, G\)'),
    (lambda q, g: re_ranking_distances(np.ones((2, 5)) * np.nan, np.ones((2, 2)), np.ones((5, 5))), 'q_g_dist must be finite'),
    (lambda q, g: re_ranking_distances(-np.ones((2, 5)), np.ones((2, 2)), np.ones((5, 5))), 'negative'),
])
def test_bad_inputs(call, match):
    q, g = torch.randn(3, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match=match): call(q, g)


@pytest.mark.parametrize('order', [[0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 4, 5]])
def test_exact_tie_goes_to_the_image_listed_first(order):
    """The query at 0 has two gallery images at exactly the same distance (+1 and -1); with k1 = 1 only one of them
    fits in its neighbour list. reid_nb keeps the one with the smaller index (queries first, then gallery order),
    as NumPy's argsort(kind='stable'); torchreid's quicksort may keep either. Everything else follows from that."""
    q = torch.tensor([[0.]], dtype=torch.float64)
    g = torch.tensor([[1.], [-1.], [20.], [21.], [-20.], [-21.]], dtype=torch.float64)[order]
    ref = reference_re_ranking(*blocks(q, g), k1=1, k2=1, lambda_value=0.3, kind='stable')
    for ours in [re_ranking_distances(*blocks(q, g), k1=1, k2=1, lambda_value=0.3),
                 re_ranking(q, g, k1=1, k2=1, lambda_value=0.3, dtype=torch.float64)]:
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)
        assert ours[0, 0] < 0.01 < 0.7 < ours[0, 1]  # whichever of +1 / -1 is listed first is the reciprocal neighbour


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_same_result_on_gpu():
    qf, gf = clustered(5, 40, 7, 32, 0.8, 50)
    b = blocks(qf, gf)
    cpu = re_ranking_distances(*b)
    gpu = re_ranking_distances(*[torch.from_numpy(m).cuda() for m in b])
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    torch.testing.assert_close(re_ranking(qf.float().cuda(), gf.float().cuda()).cpu(), re_ranking(qf.float(), gf.float()), atol=1e-5, rtol=0)
