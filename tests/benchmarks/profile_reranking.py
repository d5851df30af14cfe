"""Where re_ranking_distances spends its time on the Market-sized problem of bench_evaluation.py, stage by stage
(the stages of reid_nb.reranking._re_ranking, called one after another), next to the floor: one max pass and one
top-22 pass over the three distance matrices, and half the N^2 Gram matrix from features.

    python tests/benchmarks/profile_reranking.py
"""
import sys, time, numpy as np, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluation import market_like
from reid_nb.evaluation import euclidean_distance
import reid_nb.reranking as R
qf, gf, *_ = market_like()
q_g, q_q, g_g = [euclidean_distance(a, b) for a, b in [(qf, gf), (qf, qf), (gf, gf)]]
x = torch.from_numpy(np.concatenate([qf, gf]))
Q = len(q_q); G = len(g_g); N = Q + G
def tm(f):
    t = time.perf_counter(); r = f(); return r, time.perf_counter() - t
print('load', open('/proc/loadavg').read().split()[:3])
_, f1 = tm(lambda: [m.amax(1) for m in (q_q, q_g, g_g)])
_, f2 = tm(lambda: [torch.topk(m[s:s + 435], 22, dim=1, largest=False) for m in (q_q, q_g, g_g) for s in range(0, len(m), 435)])
_, f3 = tm(lambda: [x[s:s + 435] @ x[s:].T for s in range(0, N, 435)])
print(f'floor: one max pass over the three matrices {f1:.2f} s; one top-22 pass {f2:.2f} s; half the N^2 Gram matrix {f3:.2f} s')
_, tot = tm(lambda: R.re_ranking_distances(q_g, q_q, g_g))
print(f're_ranking_distances whole: {tot:.2f} s')
T = {}
dist = R._MatrixDistances(q_g, q_q, g_g)
_, T['transposes + symmetry check'] = tm(dist.columns)
(nn, rowmax), T['neighbour search (top-k, max)'] = tm(lambda: R._neighbours(dist, 21, max(1, R._MatrixDistances.block // N), False))
rowmax = rowmax.clamp(min=torch.finfo(rowmax.dtype).tiny)
rc, T['reciprocal sets + expansion'] = tm(lambda: R._expanded_sets(nn, 20))
(rows, cols, vals), T['encoding V'] = tm(lambda: R._encode(dist, *rc, rowmax))
(rows, cols, vals), T['query expansion'] = tm(lambda: R._query_expansion(nn, 6, rows, cols, vals))
def inv():
    v = vals.float(); g = rows >= Q
    order = torch.sort(cols[g], stable=True).indices
    inv_pos, inv_vals = rows[g][order] - Q, v[g][order]
    inv_start, inv_cnt = R._segments(cols[g][order], N)
    return v, inv_pos, inv_vals, inv_start, inv_cnt
(v, inv_pos, inv_vals, inv_start, inv_cnt), T['inverted index'] = tm(inv)
out, T['λ-term (dense Q x G)'] = tm(lambda: dist.query_gallery().mul_((0.3 / rowmax[:Q]).float()[:, None]).add_(0.7))
per_query = int((R._segments(rows, N)[1][:Q].double().mean() * inv_cnt.double().mean()).ceil()) + 1
step = max(1, min(2**19 // per_query, 2**22 // G)); buf = torch.zeros(min(step, Q) * G)
tp = tb = 0; npairs = 0
for s in range(0, Q, step):
    e = min(Q, s + step)
    (pos, m), t1 = tm(lambda: R._jaccard_pairs(torch.arange(s, e), rows, cols, v, inv_start, inv_cnt, inv_pos, inv_vals, G))
    _, t2 = tm(lambda: R._blend_block(out[s:e], pos, m, buf, 0.3)); tp += t1; tb += t2; npairs += len(pos)
T['Jaccard: pair lists'] = tp; T['Jaccard: scatter-add + blend'] = tb
S = sum(T.values())
for k, t in T.items(): print(f'  {k:32s} {t:6.2f} s  {100 * t / S:4.0f} %')
print(f'  {"sum of stages":32s} {S:6.2f} s; nnz V {len(rc[0]):,}, after expansion {len(rows):,}; (query, gallery, k) pairs {npairs:,}')
