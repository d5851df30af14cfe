"The method contract: a toy two-view, two-stage, two-term method composed from shared parts (tests/toy_method.py); stages, resume, its table row and claim, and bad input."
import json, os, sys
from dataclasses import replace
from pathlib import Path
import pytest
import torch
from reid_nb.core import get_preset, Stage
from reid_nb.train import fit_stages
from reid_nb.methods import registry
from reid_nb.methods.registry import get_method, register, unregister
from reid_nb.method import method_runs
from reid_nb.runner import Run, validate_config
from conftest import cli


from toy_method import TOY   # the toy method: a module of its own, as a user would keep one


@pytest.fixture
def toy_registered():
    register(TOY)
    yield
    unregister('toy')


def _cfg(**kw):
    return get_preset('smoke', **{**dict(method='toy', height=64, width=32, P=4, K=2, device='cpu'), **kw})


def test_toy_method_trains_in_two_stages_with_a_frozen_trunk(toy_registered, tmp_path):
    run = Run(_cfg(), tmp_path/'out', preset='smoke', progress=False)
    run.load_data(); learn = run.build()
    assert run.mask_source == 'ground_truth'
    x, y = learn.dls.train.one_batch()
    assert x.shape == (8, 2, 3, 64, 32) and y.shape == (8,)
    assert (x[:, 1] == run.dls.train.dataset.transform.normalise(torch.zeros(3, 1, 1, dtype=torch.uint8))[:, 0, 0][None, :, None, None]).any()
    stages = run.stages
    fit_stages(learn, run.cfg, stages[:1])
    trunk = {k: v.clone() for k, v in learn.model.trunk.state_dict().items()}       # weights and BatchNorm buffers
    head = {k: v.clone() for k, v in learn.model.head.state_dict().items()}
    assert any('running_mean' in k for k in trunk)
    fit_stages(learn, run.cfg, stages[1:])
    after = learn.model.trunk.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in trunk.items()), 'the frozen trunk moved'
    assert not torch.equal(head['0.weight'], learn.model.head[0].weight)
    assert not torch.equal(head['1.running_mean'], learn.model.head[1].running_mean)   # unfrozen BN statistics do move
    parts = learn.loss_parts.history
    assert {'ce', 'triplet'} <= set(parts) and max(parts['epoch']) == 1.0
    run.evaluate()
    assert list(run.results) == ['single query', 'multi query', 'single query + re-ranking'] and 0 <= run.results['single query']['rank1'] <= 1
    rec = run.record()
    assert [s['name'] for s in rec.recipe['stages']] == ['all', 'head'] and rec.recipe['options'] == {'margin': 0.3}
    assert rec.recipe['mask_source'] == 'ground_truth'


def test_stages_resume_mid_stage_and_refuse_a_changed_method_option(toy_registered, tmp_path):
    class Crash(Exception): pass
    run = Run(_cfg(), tmp_path/'out', progress=False, ckpt_dir=tmp_path/'ckpt')
    run.load_data(); learn = run.build()
    stages = [Stage('all', epochs=1), Stage('head', epochs=2, freeze=('trunk',))]
    from fastai.callback.core import Callback
    class CrashInSecondEpochOfHead(Callback):
        def before_epoch(self):
            if getattr(self.learn, 'stage_name', None) == 'head' and self.epoch == 1: raise Crash('simulated crash')
    learn.add_cb(CrashInSecondEpochOfHead())
    with pytest.raises(Crash): fit_stages(learn, run.cfg, stages, ckpt_dir=tmp_path/'ckpt')
    assert json.loads((tmp_path/'ckpt'/'head'/'checkpoint.json').read_text())['epoch'] == 0
    trained = []
    class Trained(Callback):
        def after_train(self): trained.append((self.learn.stage_name, self.epoch))
    run2 = Run(_cfg(), tmp_path/'out2', progress=False); run2.load_data(); l2 = run2.build(); l2.add_cb(Trained())
    fit_stages(l2, run2.cfg, stages, ckpt_dir=tmp_path/'ckpt')
    assert trained == [('head', 1)]                              # 'all' loaded, 'head' continues at its second epoch
    run3 = Run(_cfg(method_options={'margin': 0.5}), tmp_path/'out3', progress=False); run3.load_data(); l3 = run3.build()
    with pytest.raises(ValueError, match='different configuration.*method_options'):
        fit_stages(l3, run3.cfg, stages, ckpt_dir=tmp_path/'ckpt')


def test_bad_method_input_is_named(toy_registered):
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['margn'\] for method 'toy'. Valid options: margin"):
        validate_config(_cfg(method_options={'margn': 1}))
    with pytest.raises(ValueError, match='margin must be ≥ 0'): validate_config(_cfg(method_options={'margin': -1}))
    with pytest.raises(ValueError, match="no ground-truth masks.*Available mask sources for it: 'torchvision'"):
        validate_config(_cfg(dataset='market1501'))
    with pytest.raises(ValueError, match="Valid choices: 'baseline'"): validate_config(_cfg(method='nope'))
    model = TOY.model(_cfg(), None, 5)
    from reid_nb.train import reid_learner, toy_reid_dls
    learn = reid_learner(toy_reid_dls(n_train_ids=4, n_imgs=2)[0], model, _cfg())
    with pytest.raises(ValueError, match="names module 'grn'.*Its modules: trunk, head, classifier"):
        fit_stages(learn, _cfg(), [Stage('one'), Stage('two', freeze=('grn',))])
    assert get_method('toy') is TOY


@pytest.fixture
def toy_plugin(monkeypatch):
    "The toy method as a user's plugin: named in $REID_NB_METHODS, importable through PYTHONPATH (papermill kernels inherit both)."
    here = str(Path(__file__).parent)
    monkeypatch.setenv('REID_NB_METHODS', 'toy_plugin')
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [here, os.environ.get('PYTHONPATH')])))
    yield
    if 'toy' in registry.METHODS: unregister('toy')
    registry._PLUGINS.discard('toy_plugin'); sys.modules.pop('toy_plugin', None)


def test_a_method_outside_the_package_fills_its_table_row_and_claim(toy_plugin, tmp_path):
    "One module and one registry line: `reproduce --tables` trains its run and fills its rows and its claim; tables.py and claims.py know nothing of it."
    res = cli('reproduce', '--preset', 'smoke', '--tables', 'MGRAN/table3_duke', '--out', tmp_path/'r', '--quiet')
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((tmp_path/'r'/'results.json').read_text())
    assert {r['run'] for r in results['runs']} == {'toy-duke'}             # MGRAN's Duke run is not a smoke run
    rows = {r['row']: r for r in results['tables']['MGRAN/table3_duke']['rows']}
    for row in ('OIM', 'PAN'):
        assert rows[row]['ours'] and rows[row]['runs'] == {'duke_r1': 'toy-duke', 'duke_map': 'toy-duke'}
        assert all(0 <= rows[row]['measured'][c] <= 100 for c in ('duke_r1', 'duke_map')), rows[row]['measured']
    assert rows['OIM']['measured'] != rows['PAN']['measured']          # plain and re-ranked: two evaluations of one run
    assert rows['MGRAN']['ours'] and rows['MGRAN']['measured']['duke_r1'] is None
    claim = results['claims']['toy: re-ranking helps']
    assert claim['verdict'] in ('holds', 'does not hold', 'cannot tell') and claim['paper'] == 'MGRAN'
    assert [c['column'] for c in claim['columns']] == ['duke_r1', 'duke_map'] and all(None not in c['values'] for c in claim['columns'])
    assert 'toy: re-ranking helps' in (tmp_path/'r'/'index.html').read_text()


def test_bad_declarations_are_named():
    "A method registered twice, a run feeding a row or a table the papers do not have, a claim on a row no run feeds."
    from reid_nb.tables import row_sources
    from reid_nb.claims import claims
    with pytest.raises(ValueError, match="Method 'mmga' is registered twice"):
        register(replace(get_method('mmga'), summary='a second MMGA'))
    bad_row = replace(TOY, name='badrow', claims={}, runs=method_runs('badrow', ['duke'], method='toy', rows={'MGRAN/table3_duke': 'OIMM'}))
    register(bad_row)
    try:
        with pytest.raises(ValueError, match=r"Method 'badrow': run 'badrow' feeds row 'OIMM' of MGRAN/table3_duke, which that table does not have. Its rows: 'SVDNet'"):
            row_sources()
    finally: unregister('badrow')
    register(replace(TOY, name='badtable', claims={}, runs=method_runs('badtable', ['duke'], method='toy', rows={'MGRAN/table9': 'OIM'})))
    try:
        with pytest.raises(ValueError, match=r"Method 'badtable': run 'badtable' feeds table 'MGRAN/table9', which is not one of the papers' tables"):
            row_sources()
    finally: unregister('badtable')
    register(replace(TOY, name='badclaim', runs={}, claims={'toy beats SVDNet': (['MGRAN/table3_duke'], ['SVDNet', 'MGRAN'], '>')}))
    try:
        with pytest.raises(ValueError, match=r"Method 'badclaim': claim 'toy beats SVDNet' names row\(s\) \['SVDNet'\] of MGRAN/table3_duke, which no run feeds"):
            claims()
    finally: unregister('badclaim')
    register(replace(TOY, name='twice', runs={'mmga-market': {}}))
    try:
        with pytest.raises(ValueError, match="Run 'mmga-market' is declared twice, by method 'mmga' and by method 'twice'"):
            registry.all_runs()
    finally: unregister('twice')
    with pytest.raises(ImportError, match=r"\$REID_NB_METHODS names module 'no_such_plugin'"):
        os.environ['REID_NB_METHODS'] = 'no_such_plugin'
        try: get_method('baseline')
        finally: del os.environ['REID_NB_METHODS']
