"""Scale-out: the distributed P×K sampler, and two gloo processes launched by torchrun that train, evaluate and resume as one.

What is compared, and why no tolerance is tuned to a machine. Two processes compute the same function as one, but add the
same numbers in another order (each its share's partial sums, BatchNorm statistics over two all-reduces, gradients
summed by DDP). Those order differences are rounding: at most about n·ε relative for a sum of n terms, and training then
amplifies them step by step (batch-hard mining picks another negative once two distances swap) by a factor no argument
bounds. So the torchrun runs train in float64 (ε = 1.1e-16) and the tests compare what is exact:
- the first step — loss and every parameter's gradient (its sum and norm) after DDP's all-reduce — of one process and of
  two: equal to 1e-9 relative. The longest sums here have under 10⁵ terms, so rounding is below 10⁵·1.1e-16 ≈ 1e-11; a
  real difference of data, sampling, BatchNorm statistics or loss scaling (a wrongly sharded batch, a loss averaged
  per process) moves the first loss by more than 1e-3;
- a killed-and-resumed two-process run against an uninterrupted two-process run: the same arithmetic in the same
  order, so every loss bit-identical;
- the evaluation of the same weights by one and by two processes (float64 features): identical rank-k and mAP to 1e-9.
These are slow-tier tests (each torchrun launch costs a start-up and an evaluation); the sampler tests run by default."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from reid_nb.data.pipeline import PKSampler

SCRIPT = Path(__file__).parent/'distributed_run.py'


def test_sampler_shares_are_whole_disjoint_identity_groups_whose_union_is_the_single_process_batch():
    rng = np.random.default_rng(0)
    pids = [int(p) for p in rng.integers(0, 40, 600)]
    for P, K, W in ((8, 4, 2), (12, 2, 3), (16, 4, 4)):
        one = list(PKSampler(pids, P, K, seed=3))
        shares = [list(PKSampler(pids, P, K, seed=3, rank=r, world_size=W)) for r in range(W)]
        B, b = P * K, P * K // W
        assert all(len(s) == len(one) // W for s in shares)
        for n in range(len(one) // B):
            local = [s[n*b:(n+1)*b] for s in shares]
            ids = [[pids[i] for i in loc] for loc in local]
            for loc_ids in ids:   # whole groups: P/W identities, K images each, identity-major
                assert len(set(loc_ids)) == P // W
                assert all(len(set(loc_ids[g*K:(g+1)*K])) == 1 for g in range(P // W))
            assert sum(len(set(x)) for x in ids) == len(set().union(*map(set, ids)))   # no identity on two processes
            union = [(int(i), i.seed) for loc in local for i in loc]
            assert union == [(int(i), i.seed) for i in one[n*B:(n+1)*B]]             # the single-process batch, seeds too


def test_sampler_refuses_a_batch_that_cannot_be_shared_out():
    with pytest.raises(ValueError, match=r'P=6 identities per batch cannot be shared out over 4 processes.*multiple of 4'):
        PKSampler(list(range(30)) * 4, P=6, K=4, world_size=4)


def _run(tmp, name, method, nproc=1, expect_fail=False, **kw):
    "Run tests/distributed_run.py alone or as `nproc` torchrun processes; its JSON (None when it was killed)."
    out = tmp/f'{name}.json'
    args = [str(SCRIPT), method, str(out)] + [x for k, v in kw.items()
                                               for x in (f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, list) else [v] if v != '' else []))]
    cmd = [sys.executable] + (['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc)] if nproc > 1 else []) + args
    env = {k: v for k, v in os.environ.items() if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK')} | {'OMP_NUM_THREADS': '1'}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if expect_fail:
        assert p.returncode != 0 and not out.exists(), p.stdout[-2000:] + p.stderr[-3000:]
        return None
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return json.loads(out.read_text())


def _first_step_agrees(one, two, rtol=1e-9):
    "The first step's loss and gradients of one and of two processes: equal up to float64 rounding (see the docstring)."
    a, b = one['loss64'][0], two['loss64'][0]
    assert abs(a - b) <= rtol * abs(a), (a, b)
    assert one['first_grads'].keys() == two['first_grads'].keys() and len(one['first_grads']) > 10
    # each gradient entry is a sum of products no larger than the network's gradients, so its rounding is bounded relative
    # to their scale (the largest tensor's norm), not to its own value: a gradient that is zero analytically (a bias
    # before BatchNorm) comes out as ~1e-16 of rounding noise on both sides
    scale = max(n for _, n, _ in one['first_grads'].values())
    worst = 0.
    for name, (s1, n1, m) in one['first_grads'].items():
        s2, n2, _ = two['first_grads'][name]
        worst = max(worst, abs(n1 - n2) / scale, abs(s1 - s2) / (m**0.5 * scale))
        assert abs(n1 - n2) <= rtol * scale, (name, n1, n2, scale)
        assert abs(s1 - s2) <= rtol * m**0.5 * scale, (name, s1, s2, scale)   # |Σδ| ≤ √m·‖δ‖ for m entries
    print(f'first step: loss {abs(a - b) / abs(a):.1e} relative, gradients {worst:.1e} of their scale')


def _same_metrics(a, b):
    for name in a:
        for k in ('rank1', 'rank5', 'rank10'): assert a[name][k] == b[name][k], (name, k)
        assert abs(a[name]['mAP'] - b[name]['mAP']) < 1e-9, name


COMMON = dict(set=['lr=1e-4', 'flip_test=false'], float64='')


@pytest.mark.slow
def test_two_processes_train_evaluate_and_resume_the_baseline_as_one_process(tmp_path):
    one = _run(tmp_path, 'one', 'baseline', ckpt=tmp_path/'ck-one', epochs=2, **COMMON)
    whole = _run(tmp_path, 'whole', 'baseline', nproc=2, ckpt=tmp_path/'ck-whole', epochs=2, **COMMON)
    assert (one['world'], whole['world']) == (1, 2)
    _first_step_agrees(one, whole)
    # two processes, every one of them killed right after epoch 1 is checkpointed …
    _run(tmp_path, 'killed', 'baseline', nproc=2, ckpt=tmp_path/'ck-two', die_after=1, expect_fail=True, epochs=2, **COMMON)
    assert json.loads((tmp_path/'ck-two'/'train'/'checkpoint.json').read_text())['epoch'] == 0
    # … then started again: they resume from that checkpoint, train epoch 2 only, and score one's final weights too
    two = _run(tmp_path, 'two', 'baseline', nproc=2, ckpt=tmp_path/'ck-two', then_evaluate=tmp_path/'ck-one'/'train', epochs=2, **COMMON)
    assert two['trained_epochs'] == [1] and whole['trained_epochs'] == one['trained_epochs'] == [0, 1]
    assert two['loss'] == whole['loss'] and len(two['loss']) >= 18   # 9 steps restored from the checkpoint, 9 trained after the resume
    _same_metrics(two['results'], whole['results'])
    _same_metrics(one['results'], two['other'])          # the same weights, scored by one and by two processes


@pytest.mark.slow
def test_two_processes_train_mmga_as_one_process(tmp_path):
    one = _run(tmp_path, 'one', 'mmga', ckpt=tmp_path/'ck-one', epochs=1, **COMMON)
    two = _run(tmp_path, 'two', 'mmga', nproc=2, epochs=1, then_evaluate=tmp_path/'ck-one'/'train', **COMMON)
    _first_step_agrees(one, two)
    _same_metrics(one['results'], two['other'])
