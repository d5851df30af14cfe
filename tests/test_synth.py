"SynthReID: determinism, Market layout and names, ground-truth consistency, bad input, interrupted writes."
import json, re, collections
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
import reid_nb.data.synth as synth
import reid_nb.data.synth.export as synth_export   # where _write_tree looks _save_sample up
from reid_nb.data.synth import (generate_synthreid, synth_params, load_synth_annotations, load_part_map,
                                pedestrian_mask, rle_decode, MARKET_FOLDERS, MARKET_NAME, PART_LABELS, COCO_KEYPOINTS)

TINY = dict(n_train_ids=8, n_test_ids=8, n_distractors=6, n_junk=6, p_occluder=0.4, p_crowd=0.4, p_misalign=0.4)

def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob('*')) if p.is_file()}

@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    return generate_synthreid(tmp_path_factory.mktemp('a')/'s0', 'smoke', seed=0, progress=False, **TINY)

def parse(name):
    m = re.match(MARKET_NAME, name); assert m, name
    return int(m.group(1)), int(m.group(2))

def test_deterministic_and_seed_dependent(tree, tmp_path):
    again = generate_synthreid(tmp_path/'again', 'smoke', seed=0, progress=False, **TINY)
    a, b = files(tree), files(again)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    other = files(generate_synthreid(tmp_path/'s1', 'smoke', seed=1, progress=False, **TINY))
    jpgs = lambda fs: [v for k, v in sorted(fs.items()) if k.endswith('.jpg')]
    assert jpgs(a) != jpgs(other)

def test_order_independent(tree, tmp_path):
    "Adding junk images changes no other image: each image has its own generator."
    more = files(generate_synthreid(tmp_path/'more', 'smoke', seed=0, progress=False, **{**TINY, 'n_junk': 12}))
    a = files(tree)
    same = [k for k in a if k.endswith('.jpg') and '/-1_' not in k]
    assert same and all(more[k] == a[k] for k in same)
    assert sum('/-1_' in k for k in more) > sum('/-1_' in k for k in a)

def test_layout_and_names(tree):
    assert {p.name for p in tree.iterdir()} == set(MARKET_FOLDERS) | {'annotations', 'synthreid.json'}
    ids = {}
    for f in MARKET_FOLDERS:
        names = [p.name for p in (tree/f).iterdir()]
        assert names and all(re.match(MARKET_NAME, n) for n in names), f
        ids[f] = [parse(n) for n in names]
    q = ids['query']
    assert len(q) == len(set(q))                                             # one query per id and camera
    gallery = set(ids['bounding_box_test'])
    for pid, cam in q: assert any(gp == pid and gc != cam for gp, gc in gallery), (pid, cam)
    assert set(ids['gt_bbox']) <= set(q)                                     # gt_bbox: same id and camera as a query
    assert {p for p, _ in ids['bounding_box_train']}.isdisjoint({p for p, _ in q})
    test_pids = {p for p, _ in ids['bounding_box_test']}
    assert 0 in test_pids and -1 in test_pids                                # distractors and junk
    meta = json.loads((tree/'synthreid.json').read_text())
    assert meta['counts'] == {f: len(ids[f]) for f in MARKET_FOLDERS}
    assert all(1 <= c <= meta['params']['n_cams'] for v in ids.values() for _, c in v)

def test_annotations_consistent(tree):
    for f in MARKET_FOLDERS:
        ann = load_synth_annotations(tree, f)
        stems = {p.stem for p in (tree/f).iterdir()}
        assert set(ann) == stems
        coco = json.loads((tree/'annotations'/f'coco_person_{f}.json').read_text())
        assert len(coco['images']) == len(stems)
        assert coco['categories'][0]['name'] == 'person' and coco['categories'][0]['keypoints'] == COCO_KEYPOINTS
        assert len(coco['categories'][0]['skeleton']) == 19
        n_people = 0
        for stem, a in ann.items():
            pid, cam = parse(stem + '.jpg')
            assert a['pid'] == pid and a['camid'] == cam - 1
            pm = load_part_map(tree, f, stem)
            img = Image.open(tree/f/f'{stem}.jpg')
            assert pm.shape == (img.height, img.width) and pm.max() < len(PART_LABELS)
            m = pedestrian_mask(pm)
            assert (m == (pm > 0)).all()
            kp = np.array(a['keypoints']); assert kp.shape == (17, 3) and set(kp[:, 2]) <= {0, 1, 2}
            if m.any():
                n_people += 1
                ys, xs = np.nonzero(m)
                x0, y0, x1, y1 = a['box']
                assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                vis = kp[kp[:, 2] == 2]
                assert ((vis[:, 0] >= x0 - 1) & (vis[:, 0] <= x1 + 1) & (vis[:, 1] >= y0 - 1) & (vis[:, 1] <= y1 + 1)).all(), stem
            else: assert a['box'] == [0, 0, 0, 0] and not (kp[:, 2] == 2).any()
            inside = kp[kp[:, 2] > 0]
            assert ((inside[:, 0] >= 0) & (inside[:, 0] <= img.width) & (inside[:, 1] >= 0) & (inside[:, 1] <= img.height)).all()
            if pid > 0: assert m.any(), stem                                  # a real identity is always visible
        assert len(coco['annotations']) == n_people
        by_img = {im['id']: im for im in coco['images']}
        for an in coco['annotations'][:25]:
            stem = Path(by_img[an['image_id']]['file_name']).stem
            mask = rle_decode(an['segmentation'])
            assert (mask == pedestrian_mask(load_part_map(tree, f, stem))).all() and an['area'] == mask.sum()
            assert an['num_keypoints'] == sum(v > 0 for v in an['keypoints'][2::3])

def test_body_parts_where_keypoints_say(tree):
    "Visible hips, knees and ankles lie on legs or lower clothes or shoes; visible eyes on the face."
    ok = total = 0
    for stem, a in load_synth_annotations(tree, 'bounding_box_train').items():
        pm = load_part_map(tree, 'bounding_box_train', stem)
        for name, (x, y, v) in zip(COCO_KEYPOINTS, a['keypoints']):
            if v != 2 or not name.endswith(('knee', 'eye')): continue
            lab = PART_LABELS[pm[min(int(y), pm.shape[0] - 1), min(int(x), pm.shape[1] - 1)]]
            total += 1; ok += lab in (('legs', 'lower_clothes') if name.endswith('knee') else ('face', 'hair', 'hat'))
    assert total > 50 and ok/total > 0.9, (ok, total)

def test_reuse_and_mismatch(tree):
    marker = tree/'synthreid.json'; t = marker.stat().st_mtime_ns
    assert generate_synthreid(tree, 'smoke', seed=0, progress=False, **TINY) == tree
    assert marker.stat().st_mtime_ns == t
    with pytest.raises(FileExistsError, match='overwrite=True'):
        generate_synthreid(tree, 'smoke', seed=0, progress=False, **{**TINY, 'n_junk': 2})

def test_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv('REID_NB_DATA', str(tmp_path))
    root = generate_synthreid(size='smoke', seed=3, progress=False, **{**TINY, 'n_train_ids': 2, 'n_test_ids': 2})
    assert root.parent == tmp_path/'synthreid' and root.name.startswith('smoke-seed3-')

@pytest.mark.parametrize('kw, msg', [
    (dict(size='huge'), "'smoke', 'default', 'market'"),
    (dict(n_cams=1), '2 to 9 cameras'),
    (dict(n_junk=-1), 'non-negative'),
    (dict(n_train_ids=0), 'at least one train'),
    (dict(cams_per_id=(1, 2)), 'cams_per_id'),
    (dict(imgs_per_cam=(3, 2)), 'imgs_per_cam'),
    (dict(p_occluder=1.5), 'p_occluder'),
    (dict(n_cameras=3), 'Valid parameters'),
    (dict(seed=-1), 'seed'),
])
def test_bad_input(tmp_path, kw, msg):
    kw = {'size': 'smoke', **kw}
    with pytest.raises(ValueError, match=re.escape(msg)): generate_synthreid(tmp_path/'x', progress=False, **kw)
    assert not (tmp_path/'x').exists()

def test_not_a_synthreid_tree(tmp_path):
    (tmp_path/'x').mkdir(); (tmp_path/'x'/'mine.txt').write_text('user data')
    with pytest.raises(FileExistsError, match='not a complete SynthReID tree'):
        generate_synthreid(tmp_path/'x', 'smoke', progress=False, **TINY)
    assert (tmp_path/'x'/'mine.txt').read_text() == 'user data'

def _interrupt_after(monkeypatch, n):
    real, calls = synth_export._save_sample, collections.Counter()
    def flaky(*a, **k):
        calls['n'] += 1
        if calls['n'] > n: raise KeyboardInterrupt('simulated interruption')
        return real(*a, **k)
    monkeypatch.setattr(synth_export, '_save_sample', flaky)
    return calls

def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = _interrupt_after(monkeypatch, 30)
    with pytest.raises(KeyboardInterrupt): generate_synthreid(tmp_path/'t', 'smoke', progress=False, **TINY)
    assert calls['n'] == 31
    assert list(tmp_path.iterdir()) == []                                   # no target, no temporary directory

def test_interrupted_overwrite_keeps_old_tree(tree, tmp_path, monkeypatch):
    old = generate_synthreid(tmp_path/'t', 'smoke', seed=0, progress=False, **{**TINY, 'n_train_ids': 3, 'n_test_ids': 3})
    before = files(old)
    _interrupt_after(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt): generate_synthreid(old, 'smoke', seed=5, overwrite=True, progress=False, **TINY)
    assert files(old) == before and [p.name for p in tmp_path.iterdir()] == ['t']

def test_quick_size_plan():
    "The quick reproduction preset: about 100 train and 100 test ids, few images, Market's distractors, junk and multi-query."
    p = synth_params('quick')
    assert (p['n_train_ids'], p['n_test_ids']) == (100, 100) and p['gt_per_query'] >= 2
    assert list(synth.SYNTH_SIZES)[:3] == ['smoke', 'default', 'market']   # appended: older presets keep their order
    plan = synth.synth_plan(p, 0)
    assert len(plan) < 3500                                                  # small enough to generate in seconds
    test_pids = {e['pid'] for e in plan if e['folder'] == 'bounding_box_test'}
    assert 0 in test_pids and -1 in test_pids
    groups = collections.Counter((e['pid'], e['cam']) for e in plan if e['folder'] == 'gt_bbox')
    assert set(groups) == {(e['pid'], e['cam']) for e in plan if e['folder'] == 'query'} and set(groups.values()) == {2}

@pytest.mark.slow
def test_quick_size_through_the_registry(reid_nb_data):
    "Generated into the session's data folder and read back by name, with the intended identities and protocol features."
    import time
    from reid_nb.data.registry import get_dataset
    t = time.perf_counter()
    ds = get_dataset('synthreid', size='quick', progress=False)
    print(f'synthreid quick: {time.perf_counter() - t:.1f}s')
    assert ds.root == reid_nb_data/'synthreid'/'quick-seed0'
    s = ds.summary()
    assert ds.num_train_pids == 100 and s.loc['query', 'ids'] == 100
    assert s.loc['gallery', 'ids'] == 101                                    # the 100 test ids and the distractor id 0000
    assert any(r.pid == 0 for r in ds.gallery) and ds.junk and all(r.pid == -1 for r in ds.junk)
    assert ds.has_multi_query and all(len(g) == 2 for g in ds.mq_groups)     # pooling 2 gt_bbox crops ≠ the single query
    meta = json.loads((ds.root/'synthreid.json').read_text())
    assert meta['size'] == 'quick' and meta['counts'] == dict(bounding_box_train=len(ds.train), query=len(ds.query),
                                                              bounding_box_test=len(ds.gallery) + len(ds.junk), gt_bbox=len(ds.gt_bbox))


def _generate_and_report(root, queue):
    "In a child process: generate (or reuse) the tiny tree at `root`; report the inode of the tree it returned."
    out = generate_synthreid(root, 'smoke', seed=0, progress=False, **TINY)
    queue.put(out.stat().st_ino)

def test_two_processes_asking_for_one_tree_generate_it_once(tmp_path):
    """Two processes asking at once (two chapters under nbdev_test, two terminals): one generates, the other waits on the
    tree's lock and reuses it — the tree each was handed is the final one (a second generation would have replaced it),
    and no temporary, old or lock file is left beside it."""
    import multiprocessing as mp
    ctx = mp.get_context('fork')
    root, queue = tmp_path/'t', ctx.Queue()
    procs = [ctx.Process(target=_generate_and_report, args=(root, queue)) for _ in range(2)]
    for p in procs: p.start()
    for p in procs: p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(queue.get(timeout=5) for _ in procs) == [root.stat().st_ino] * 2
    assert [p.name for p in tmp_path.iterdir()] == ['t'] and (root/'synthreid.json').is_file()
