"SynthReID-Duke and SynthReID-CUHK03: real formats read by the real readers, determinism, caching, scaling, parameter errors."
import json, warnings
from pathlib import Path
import numpy as np, pytest
from reid_nb.data.synth.layouts import (generate_synthreid_duke, generate_synthreid_cuhk03, duke_params, cuhk03_params,
                                        duke_plan, cuhk03_plan, SYNTH_DUKE_SIZES, SYNTH_CUHK03_SIZES)
from reid_nb.data.duke import read_dukemtmcreid, parse_duke_name
from reid_nb.data.cuhk03 import read_cuhk03, open_cuhk03_mat, cuhk03_persons, cuhk03_testsets, load_new_protocol
from reid_nb.data.market import CountMismatchWarning

DUKE_SMALL = dict(n_train_ids=8, n_test_ids=8, n_distractor_ids=4, imgs_per_cam=(1, 2))
CUHK_SMALL = dict(persons=(7, 5), imgs_per_view=(1, 3), n_train_new=6, n_test_classic=4)

@pytest.fixture(scope='module')
def duke(tmp_path_factory):
    return generate_synthreid_duke(tmp_path_factory.mktemp('d')/'duke', size='smoke', seed=3, progress=False, **DUKE_SMALL)

@pytest.fixture(scope='module')
def cuhk(tmp_path_factory):
    return generate_synthreid_cuhk03(tmp_path_factory.mktemp('c')/'cuhk', size='smoke', seed=3, progress=False, **CUHK_SMALL)

def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter('error', CountMismatchWarning)
        return fn(*a, **k)

def test_duke_analog_in_the_real_format(duke):
    ds = _quiet(read_dukemtmcreid, duke, name='synthreid-duke')
    marker = json.loads((duke/'synthreid.json').read_text())
    assert marker['layout'] == 'duke' and marker['counts'] == dict(bounding_box_train=len(ds.train), query=len(ds.query),
                                                                   bounding_box_test=len(ds.gallery))
    assert all(parse_duke_name(Path(r.path).name) for r in ds.train + ds.query + ds.gallery)
    assert ds.num_train_pids == 8 and ds.summary().loc['gallery', 'ids'] == 12
    q = {(r.pid, r.camid) for r in ds.query}
    assert len(q) == len(ds.query)                                                # one query per test id and camera
    test_ids = {r.pid for r in ds.query}
    assert q == {(r.pid, r.camid) for r in ds.gallery if r.pid in test_ids}       # and gallery images in each of them
    extra = {r.pid for r in ds.gallery} - test_ids
    assert len(extra) == 4 and all(len({r.camid for r in ds.gallery if r.pid == p}) == 1 for p in extra)
    ann = json.loads((duke/'annotations'/'bounding_box_train.json').read_text())
    assert set(ann) == {Path(r.path).stem for r in ds.train}
    assert (duke/'annotations'/'parts'/'query'/f'{Path(ds.query[0].path).stem}.png').is_file()

def test_duke_occlusion_and_cameras():
    p = duke_params('default'); plan = duke_plan(p, 0)
    assert {e['cam'] for e in plan} == set(range(1, 9))
    assert p['p_occluder'] > 0.25 and p['p_crowd'] > 0.3 and p['p_misalign'] < 0.3   # vs Market-layout SynthReID
    sizes = [len(duke_plan(duke_params(s), 0)) for s in ('smoke', 'default')]
    assert sizes[0] < 600 < sizes[1]

def test_cuhk03_analog_in_the_real_format(cuhk, tmp_path):
    mat = cuhk/'cuhk03_release'/'cuhk-03.mat'
    assert mat.read_bytes()[:10] == b'MATLAB 7.3'
    plan = cuhk03_plan(cuhk03_params('smoke', **CUHK_SMALL), 3)
    with open_cuhk03_mat(mat) as f:
        assert cuhk03_persons(f) == [7, 5] and len(cuhk03_testsets(f)) == 20
        assert all(t.shape == (4, 2) for t in cuhk03_testsets(f))
    for v in ('labeled', 'detected'):
        cfg = load_new_protocol(cuhk/f'cuhk03_new_protocol_config_{v}.mat')
        assert len(cfg['filelist']) == sum(len(e['cols']) for e in plan['persons'])
        ds = _quiet(read_cuhk03, cuhk, v, name='synthreid-cuhk03', cache_dir=tmp_path/'cache', progress=False)
        assert ds.num_train_pids == 6 and len(ds.query) == 2*6 and {r.pid for r in ds.query} == {r.pid for r in ds.gallery}
        assert len(ds.train) + len(ds.query) + len(ds.gallery) == len(cfg['filelist'])
        for split in (0, 19):
            c = _quiet(read_cuhk03, cuhk, v, protocol='classic', split=split, name='synthreid-cuhk03', cache_dir=tmp_path/'cache', progress=False)
            assert c.num_train_pids == 8 and len({r.pid for r in c.query}) == 4
    ann = {v: json.loads((cuhk/'annotations'/f'{v}.json').read_text()) for v in ('labeled', 'detected')}
    assert set(ann['labeled']) == set(ann['detected'])
    assert not any(a['misaligned'] for a in ann['labeled'].values())               # labeled = tight boxes
    assert np.mean([a['misaligned'] for a in ann['detected'].values()]) > 0.5      # detected = detector-style boxes
    # a detected image that happens not to be misaligned is its labeled twin, pixel for pixel
    from PIL import Image
    extracted = Path(ds.protocol['images']).parent                               # <cache_dir>/cuhk03-images/<fingerprint>
    assert extracted.parent == tmp_path/'cache'/'cuhk03-images'
    img = lambda v, s: np.asarray(Image.open(extracted/f'images_{v}'/f'{s}.png'))
    twins = [s for s, a in ann['detected'].items() if not a['misaligned']]
    if twins: assert (img('labeled', twins[0]) == img('detected', twins[0])).all()
    moved = [s for s, a in ann['detected'].items() if a['misaligned']][0]
    assert (img('labeled', moved) != img('detected', moved)).any()

def test_deterministic_and_cached(duke, cuhk, tmp_path):
    again = generate_synthreid_duke(tmp_path/'duke', size='smoke', seed=3, progress=False, **DUKE_SMALL)
    names = sorted(p.name for p in (duke/'query').iterdir())
    assert names == sorted(p.name for p in (again/'query').iterdir())
    assert all((duke/'query'/n).read_bytes() == (again/'query'/n).read_bytes() for n in names)
    other = generate_synthreid_duke(tmp_path/'duke2', size='smoke', seed=4, progress=False, **DUKE_SMALL)
    assert sorted(p.name for p in (other/'query').iterdir()) != names
    # reused, not regenerated; other settings at the same place are refused
    t = (duke/'synthreid.json').stat().st_mtime_ns
    assert generate_synthreid_duke(duke, size='smoke', seed=3, progress=False, **DUKE_SMALL) == duke
    assert (duke/'synthreid.json').stat().st_mtime_ns == t
    with pytest.raises(FileExistsError, match='other settings'): generate_synthreid_duke(duke, size='smoke', seed=5, progress=False)
    (tmp_path/'full').mkdir(); (tmp_path/'full'/'x').write_text('x')
    with pytest.raises(FileExistsError, match='not a complete SynthReID tree'): generate_synthreid_cuhk03(tmp_path/'full', size='smoke')
    c2 = generate_synthreid_cuhk03(tmp_path/'cuhk', size='smoke', seed=3, progress=False, **CUHK_SMALL)
    for rel in ('cuhk03_release/cuhk-03.mat', 'cuhk03_new_protocol_config_detected.mat'):
        assert (c2/rel).read_bytes() == (cuhk/rel).read_bytes(), rel
    assert not [p for p in tmp_path.iterdir() if '.tmp-' in p.name]              # nothing half-written left behind

def test_default_root_in_data_dir(reid_nb_data):
    root = generate_synthreid_cuhk03(size='smoke', seed=1, progress=False, **CUHK_SMALL)
    assert root.parent == reid_nb_data/'synthreid-cuhk03' and root.name.startswith('smoke-seed1-')

def test_parameter_errors():
    with pytest.raises(ValueError, match='Unknown SynthReID-Duke parameter'): duke_params('smoke', n_ids=3)
    with pytest.raises(ValueError, match="'smoke', 'default', 'cuhk03'"): cuhk03_params('huge')
    with pytest.raises(ValueError, match='n_train_new must be in 1..11'): cuhk03_params('smoke', persons=(7, 5), n_train_new=12)
    with pytest.raises(ValueError, match='probability p_occluder'): duke_params('smoke', p_occluder=1.5)
    with pytest.raises(ValueError, match='cams_per_id must satisfy'): duke_params('smoke', cams_per_id=(1, 3))
    with pytest.raises(ValueError, match='seed'): generate_synthreid_duke(size='smoke', seed=-1)
    assert sum(SYNTH_CUHK03_SIZES['cuhk03']['persons']) == 1467 and SYNTH_DUKE_SIZES['duke']['n_distractor_ids'] == 408

def test_quick_sizes():
    "The quick reproduction presets: about 100 train / 100 test ids, appended after the older presets."
    assert list(SYNTH_DUKE_SIZES)[:3] == ['smoke', 'default', 'duke'] and list(SYNTH_CUHK03_SIZES)[:3] == ['smoke', 'default', 'cuhk03']
    d = duke_params('quick')
    assert (d['n_train_ids'], d['n_test_ids'], d['n_cams']) == (100, 100, 8) and d['n_distractor_ids'] > 0
    c = cuhk03_params('quick'); n = sum(c['persons'])
    assert c['n_train_new'] == 100 and n - c['n_train_new'] == 100 and c['n_splits'] == 20
    assert 50 <= c['n_test_classic'] <= 100 and n - c['n_test_classic'] >= 100

@pytest.mark.slow
def test_quick_duke_through_the_registry(reid_nb_data):
    import time
    from reid_nb.data.registry import get_dataset
    t = time.perf_counter()
    ds = _quiet(get_dataset, 'synthreid-duke', size='quick', progress=False)
    print(f'synthreid-duke quick: {time.perf_counter() - t:.1f}s')
    assert ds.root == reid_nb_data/'synthreid-duke'/'quick-seed0'
    s = ds.summary()
    assert ds.num_train_pids == 100 and s.loc['query', 'ids'] == 100 and s.loc['gallery', 'ids'] == 150
    assert s.loc['train', 'cameras'] == s.loc['gallery', 'cameras'] == 8
    extra = {r.pid for r in ds.gallery} - {r.pid for r in ds.query}             # Duke's gallery-only distractor ids
    assert len(extra) == 50 and all(len({r.camid for r in ds.gallery if r.pid == p}) == 1 for p in extra)

@pytest.mark.slow
def test_quick_cuhk03_through_the_registry(reid_nb_data):
    "One generated set serves both protocols and both variants."
    import time
    from reid_nb.data.registry import get_dataset
    t = time.perf_counter()
    get_dataset('synthreid-cuhk03', size='quick', progress=False)
    print(f'synthreid-cuhk03 quick: {time.perf_counter() - t:.1f}s')
    for v in ('labeled', 'detected'):
        new = _quiet(get_dataset, 'synthreid-cuhk03', size='quick', progress=False, variant=v, protocol='new')
        assert reid_nb_data/'synthreid-cuhk03' in Path(new.root).parents
        assert new.num_train_pids == 100 and new.protocol['variant'] == v
        assert len({r.pid for r in new.query}) == 100 and len(new.query) == 2*100 and {r.pid for r in new.query} == {r.pid for r in new.gallery}
        for split in (0, 19):
            c = _quiet(get_dataset, 'synthreid-cuhk03', size='quick', progress=False, variant=v, protocol='classic', split=split)
            assert c.num_train_pids == 100 and len({r.pid for r in c.query}) == 100 and c.protocol['split'] == split
