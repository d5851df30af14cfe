"""Training health: every method's loss terms are alive, and the checks flag a run that cannot learn.

- Per method (the baseline, MMGA's full model and its unsupervised Baseline+Att, MGRAN, FMN): every stage of the
  method trains N steps on one fixed smoke batch; each loss term the stage computes must fall by the health check's
  margin (a term that is detached, unweighted or unreachable stays where it started and fails the test).
  The same runs have no health finding at all (nothing frozen moved, every trained module moved, no zero learning rate).
- A deliberately broken run (learning rate 0 for the new layers, classifier included) is flagged by the checks:
  the zero learning rate, the cross-entropy that did not fall and the modules that did not move, each named.
"""
import warnings
from dataclasses import replace
import pytest
import torch
from reid_nb.core import get_preset, Stage, seed_everything
from reid_nb.health import loss_findings, health_findings, LOSS_MARGIN
from reid_nb.methods.registry import run_overrides
from reid_nb.runner import Run
from reid_nb.train import fit_stages, training_history

STEPS = 30   # steps per stage on one fixed batch


class _OneBatch:
    "A train loader serving one fixed batch `n` times (what fastai's loop needs of a loader: iteration and a length)."
    def __init__(self, b, n): self.b, self.n = b, n
    def __iter__(self): return iter([self.b] * self.n)
    def __len__(self): return self.n


def _built_run(name, tmp_path, **over):
    "The smoke-preset run `name` with data, loaders, model, loss and learner built (nothing trained)."
    o = run_overrides(name, 'smoke'); o.pop('name')
    cfg = get_preset('smoke', **{**o, **over, 'name': name, 'pretrained': False})
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        run = Run(cfg, tmp_path/name, progress=False)
        run.load_data(); run.build()
    return run


def _fit_one_batch(run, stages, steps=STEPS):
    "Train `run` through `stages` (each `steps` steps) on one fixed batch of its training loader; its history."
    seed_everything(0)
    learn = run.learn
    learn.remove_cb(run.eval_cb)                     # no evaluation between stages: the loss terms are the point
    learn.dls.loaders[0] = _OneBatch(learn.dls.train.one_batch(), steps)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fit_stages(learn, run.cfg, stages)
    return training_history(learn)


def _terms_by_stage(history):
    "Per stage (by the order the history records them), the per-batch values of each loss term computed there."
    b = history['batches']
    terms = [k for k in b if k not in ('epoch', 'loss') and not k.startswith('lr')]
    return {t: [v for v in b[t] if v == v] for t in terms}


@pytest.mark.parametrize('name, over', [
    ('baseline', {}),
    ('mmga-market', {}),                                                  # CE whole + CE local + triplet + four mask losses
    ('mmga-att-market', dict(method_options=dict(variant='att', dims=[256, 128, 128], lr_step=None))),  # attention, no masks
    ('mgran-market', {}),
    ('fmn-market', {}),
])
def test_every_loss_term_of_every_method_falls(name, over, tmp_path):
    run = _built_run(name, tmp_path, **over)
    stages = [replace(s, epochs=1) for s in run.stages]
    hist = _fit_one_batch(run, stages)
    terms = _terms_by_stage(hist)
    assert terms, f'{name}: no loss term was recorded'
    found = loss_findings({'epoch': hist['batches']['epoch'], **terms})
    assert not found, f'{name}: loss terms that did not fall in {STEPS} steps per stage on one batch:\n' + \
        '\n'.join(f['message'] for f in found)
    # every term of the method's loss was computed in some stage, and the whole health check has nothing to say
    assert set(t.name for t in run.learn.loss_func.terms) <= set(terms), (sorted(terms), run.learn.loss_func)
    recipe = [dict(name=t.name, fn=getattr(t.fn, '__name__', '')) for t in run.learn.loss_func.terms]
    found = health_findings(hist, recipe, run.ds.num_train_pids)
    assert not found, [f['message'] for f in found]


def test_health_flags_a_run_whose_new_layers_cannot_learn(tmp_path):
    run = _built_run('baseline', tmp_path)
    broken = [Stage('train', epochs=1, lr_mults={'new': 0.0})]
    hist = _fit_one_batch(run, broken, steps=12)
    found = health_findings(hist, [dict(name='ce', fn='cross_entropy')], run.ds.num_train_pids)
    checks = {(f['check'], f['subject']) for f in found}
    assert ('zero_lr', 'new') in checks, found
    assert ('did_not_fall', 'ce') in checks, found
    assert {('did_not_move', m) for m in ('embedding', 'classifier')} <= checks, found
    assert ('did_not_move', 'backbone') not in checks                # the backbone still trains
    msg = next(f['message'] for f in found if f['subject'] == 'ce')
    assert 'ln C' in msg and f'{100*LOSS_MARGIN:.0f} % required' in msg


# ------------------------------------------------------------------ where the findings reach a reader (the shared smoke reproduction)
def test_findings_reach_the_log_the_record_results_json_the_index_and_the_tables(smoke_reproduction):
    import json, html
    out = smoke_reproduction.out
    results = json.loads((out/'results.json').read_text())
    runs = sorted({r['run'] for r in results['runs']})
    assert sorted(results['health']) == runs                               # every run was checked
    index = (out/'index.html').read_text()
    assert '<h2>Training health</h2>' in index
    for name in runs:
        rec = json.loads((out/'runs'/name/'metrics.json').read_text())
        assert rec['health'] == results['health'][name]                     # the record and results.json agree
        log = (out/'runs'/name/'progress.log').read_text() if (out/'runs'/name/'progress.log').exists() else None
        page = (out/'runs'/name/f'{name}.html').read_text()
        assert 'training health' in page, name                              # the run page prints the checks
        for f in rec['health']:
            assert f['check'] in ('did_not_fall', 'not_finite', 'never_trained', 'zero_lr', 'frozen_moved', 'did_not_move', 'at_chance')
            assert html.escape(f['message']) in index, (name, f['message'])  # the index lists each finding
            if log is not None: assert f['message'] in log
        health_col = {r['health'] for r in results['runs'] if r['run'] == name}
        assert health_col == {'ok' if not rec['health'] else f"{len(rec['health'])} finding{'s' * (len(rec['health']) > 1)}"}
    for tid, tab in results['tables'].items():                             # a row fed by a run with findings: † and a footnote
        for r in tab['rows']:
            fed = set((r.get('runs') or {}).values())
            bad = {n for n in fed if results['health'].get(n)}
            assert set(r.get('health') or {}) == bad, (tid, r['row'])
            if bad:
                assert any(n.startswith(f"† {r['row']}:") and all(b in n for b in bad) for n in tab['footnotes']), (tid, r['row'])
                assert '<span class="health"' in (out/'tables'/f"{tid.replace('/', '_')}.html").read_text()
