"CUHK03 reader: the published new-protocol counts and the classic 1,367/100 splits from files shaped like the real ones, extraction, errors."
import json, warnings
from pathlib import Path
import numpy as np, pytest
from reid_nb.data.market import CountMismatchWarning
from reid_nb.data.cuhk03 import (read_cuhk03, extract_cuhk03, write_cuhk03_mat, write_new_protocol_config, load_new_protocol,
                                 open_cuhk03_mat, cuhk03_persons, cuhk03_testsets, cuhk03_image_name, CUHK03_DEFAULT,
                                 NEW_PROTOCOL_CONFIG, EXTRACT_VERSION, mat_fingerprint)

PERSONS = (843, 440, 77, 58, 49)                     # the real camera pairs: 1,467 identities
NEW = dict(labeled=dict(train=7368, query=1400, gallery=5328), detected=dict(train=7365, query=1400, gallery=5332))

def _people():
    return [(pair, person) for pair, n in enumerate(PERSONS, 1) for person in range(1, n + 1)]

def _new_protocol_tree(root:Path, variants=('labeled', 'detected'), drop_gallery:int=0):
    "Zero-byte PNGs in images_<variant>/ and configs with exactly the published new-protocol counts."
    people = _people(); gids = np.arange(1, len(people) + 1)
    train = set(np.random.default_rng(0).permutation(gids)[:767].tolist())
    for v in variants:
        want = NEW[v]; rows = []
        short_train = 767*10 - want['train']; short_test = 700*10 - want['query'] - want['gallery']
        n_tr = n_te = 0
        for gid, (pair, person) in zip(gids, people):
            cols = list(range(10))
            if gid in train:
                if n_tr < short_train: cols.remove(9)
                n_tr += 1
            else:
                if n_te < short_test: cols.remove(9)
                n_te += 1
            rows += [(cuhk03_image_name(pair, person, k), int(gid), k) for k in cols]
        rows.sort()
        (root/f'images_{v}').mkdir(parents=True)
        for n, _, _ in rows: open(root/f'images_{v}'/n, 'wb').close()
        names, labels = [n for n, _, _ in rows], [g for _, g, _ in rows]
        tr = [i for i, (_, g, _) in enumerate(rows) if g in train]
        q = [i for i, (_, g, k) in enumerate(rows) if g not in train and k in (0, 5)]
        ga = [i for i, (_, g, k) in enumerate(rows) if g not in train and k not in (0, 5)][drop_gallery:]
        write_new_protocol_config(root/NEW_PROTOCOL_CONFIG.format(variant=v), names, labels, [1 + (k >= 5) for *_, k in rows], tr, q, ga)
    return root

@pytest.fixture(scope='module')
def new_root(tmp_path_factory):
    return _new_protocol_tree(tmp_path_factory.mktemp('cuhk03new')/'cuhk03')

@pytest.mark.parametrize('variant', ['labeled', 'detected'])
def test_new_protocol_published_counts(new_root, variant):
    with warnings.catch_warnings():
        warnings.simplefilter('error', CountMismatchWarning)
        ds = read_cuhk03(new_root, variant=variant, protocol='new', progress=False)
    s = ds.summary(); want = NEW[variant]
    assert (len(ds.train), ds.num_train_pids) == (want['train'], 767)
    assert (len(ds.query), s.loc['query', 'ids']) == (1400, 700)
    assert (len(ds.gallery), s.loc['gallery', 'ids']) == (want['gallery'], 700)
    assert s.loc['train', 'cameras'] == 2 and {r.camid for r in ds.query} == {0, 1}
    assert not {r.pid for r in ds.query} & {r.orig_pid for r in ds.train}     # disjoint identities
    assert sorted({r.pid for r in ds.train}) == list(range(767))
    assert ds.protocol['protocol'] == 'new' and ds.protocol['variant'] == variant
    assert all(Path(r.path).parent.name == f'images_{variant}' for r in ds.train[:5])
    r = ds.query[0]; assert (r.seq, r.frame) == (int(r.path.name[0]), int(r.path.name[8:10]))

def test_default_variant_is_documented_choice(new_root):
    ds = read_cuhk03(new_root, progress=False)
    assert CUHK03_DEFAULT == dict(protocol='new', variant='detected')
    assert (ds.protocol['protocol'], ds.protocol['variant'], len(ds.gallery)) == ('new', 'detected', 5332)

def test_new_protocol_count_mismatch_names_both_numbers(tmp_path):
    root = _new_protocol_tree(tmp_path/'cuhk03', variants=('labeled',), drop_gallery=3)
    with pytest.warns(CountMismatchWarning) as w: read_cuhk03(root, 'labeled', progress=False)
    msgs = [str(x.message) for x in w if x.category is CountMismatchWarning]
    assert len(msgs) == 1 and 'gallery' in msgs[0] and '5,328' in msgs[0] and '5,325' in msgs[0], msgs
    with warnings.catch_warnings():
        warnings.simplefilter('error', CountMismatchWarning)
        read_cuhk03(root, 'labeled', name='synthreid-cuhk03', progress=False)

def test_new_protocol_bad_inputs(tmp_path):
    root = _new_protocol_tree(tmp_path/'cuhk03', variants=('labeled',))
    with pytest.raises(FileNotFoundError, match='cuhk03_new_protocol_config_detected.mat'): read_cuhk03(root, 'detected')
    with pytest.raises(ValueError, match="protocol='classic'"): read_cuhk03(root, 'labeled', split=1)
    with pytest.raises(ValueError, match="Valid choices: 'labeled', 'detected'"): read_cuhk03(root, 'hand-drawn')
    with pytest.raises(ValueError, match="Valid choices: 'new', 'classic'"): read_cuhk03(root, protocol='old')
    (root/'images_labeled'/'IMG_0001.png').write_bytes(b'')
    with pytest.raises(ValueError, match='IMG_0001.png'): read_cuhk03(root, 'labeled', check_counts=False)
    (root/'images_labeled'/'IMG_0001.png').unlink()
    (root/'images_labeled'/'1_001_1_01.png').unlink()
    with pytest.raises(FileNotFoundError, match='1_001_1_01.png'): read_cuhk03(root, 'labeled', check_counts=False)
    write_new_protocol_config(root/'broken.mat', ['1_001_1_01.png'], [1], [1], [0], [0], [5])
    with pytest.raises(ValueError, match=r'gallery_idx holds 1 index\(es\) outside 1..1'): load_new_protocol(root/'broken.mat')
    from scipy.io import savemat
    savemat(root/'keys.mat', dict(labels=np.ones((3, 1)), filelist=np.array([['a']], dtype=object)))
    with pytest.raises(ValueError, match="has no train_idx, query_idx, gallery_idx") as e: load_new_protocol(root/'keys.mat')
    assert "found ['filelist', 'labels']" in str(e.value)

# ---------------------------------------------------------------- classic protocol, from a cuhk-03.mat shaped like the real one
def _img(c, p, k): return np.full((2, 2, 3), (c, p % 256, k), np.uint8)

def _classic_mat(path:Path, n_splits=20, seed=0):
    "1,467 persons in 5 camera pairs (one image per view, the other 8 cells empty), both variants, 20 test sets of 100."
    images = {v: [[[_img(c, p, k) if k in (0, 5) else None for k in range(10)] for p in range(1, n + 1)]
                  for c, n in enumerate(PERSONS, 1)] for v in ('labeled', 'detected')}
    people = _people(); rng = np.random.default_rng(seed)
    testsets = [np.array(sorted(people[i] for i in rng.choice(len(people), 100, replace=False))) for _ in range(n_splits)]
    return write_cuhk03_mat(path, images, testsets), testsets

@pytest.fixture(scope='module')
def classic(tmp_path_factory):
    root = tmp_path_factory.mktemp('cuhk03classic')/'cuhk03'
    mat, testsets = _classic_mat(root/'cuhk03_release'/'cuhk-03.mat')
    return root, mat, testsets

def test_mat_structure_like_matlab(classic):
    root, mat, testsets = classic
    assert mat.read_bytes()[:19] == b'MATLAB 7.3 MAT-file'
    with open_cuhk03_mat(mat) as f:
        assert f['labeled'].shape == (1, 5) and f[f['labeled'][0, 0]].shape == (10, 843)
        assert f[f[f['labeled'][0, 0]][5, 0]].shape == (3, 2, 2)             # image (H, W, 3) stored as (3, W, H)
        assert f[f[f['labeled'][0, 0]][1, 0]][()].tolist() == [0, 0]      # an empty cell
        assert f['testsets'].shape == (1, 20) and f[f['testsets'][0, 0]].shape == (2, 100)
        assert cuhk03_persons(f) == list(PERSONS)
        assert [t.tolist() for t in cuhk03_testsets(f)] == [t.tolist() for t in testsets]

@pytest.mark.parametrize('variant,split', [('labeled', 0), ('detected', 19)])
def test_classic_splits(classic, variant, split):
    root, mat, testsets = classic
    with warnings.catch_warnings():
        warnings.simplefilter('error', CountMismatchWarning)
        ds = read_cuhk03(root, variant=variant, protocol='classic', split=split, progress=False)
    s = ds.summary()
    assert (ds.num_train_pids, s.loc['query', 'ids'], s.loc['gallery', 'ids']) == (1367, 100, 100)
    assert (len(ds.train), len(ds.query)) == (1367*2, 200)                 # empty cells skipped
    offset = np.concatenate([[0], np.cumsum(PERSONS)])
    assert {r.pid for r in ds.query} == {int(offset[c - 1] + p) for c, p in testsets[split]}
    assert [r.path for r in ds.query] == [r.path for r in ds.gallery]
    assert ds.protocol == dict(ds.protocol, protocol='classic', variant=variant, split=split, n_splits=20,
                               eval='single_gallery_shot', repeats=10, query_is_gallery=True)
    assert all(r.camid == (r.frame > 5) for r in ds.train)

def test_extracted_once_into_the_cache(classic, reid_nb_data):
    root, mat, _ = classic
    out = extract_cuhk03(mat, progress=False)                                 # the cache read_cuhk03 used
    assert reid_nb_data in out.parents and root not in out.parents           # the dataset folder is not written to
    marker = json.loads((out/'cuhk03_extracted.json').read_text())
    assert marker['counts'] == dict(labeled=2*1467, detected=2*1467) and marker['persons'] == list(PERSONS)
    t = (out/'cuhk03_extracted.json').stat().st_mtime_ns
    read_cuhk03(root, 'labeled', protocol='classic', split=3, progress=False)
    assert (out/'cuhk03_extracted.json').stat().st_mtime_ns == t
    from PIL import Image
    assert np.asarray(Image.open(out/'images_detected'/'2_017_2_06.png')).tolist() == _img(2, 17, 5).tolist()

def test_classic_bad_inputs(classic, tmp_path):
    root, mat, _ = classic
    with pytest.raises(ValueError, match=r'split=0..19'): read_cuhk03(root, protocol='classic', split=20, progress=False)
    with pytest.raises(FileNotFoundError, match='cuhk-03.mat') as e: read_cuhk03(tmp_path, protocol='classic')
    assert 'Expected the CUHK03 layout' in str(e.value)
    (tmp_path/'a').mkdir(); (tmp_path/'a'/'cuhk-03.mat').write_bytes(b'MATLAB 5.0 MAT-file' + bytes(200))
    with pytest.raises(ValueError, match='MATLAB v5'): read_cuhk03(tmp_path/'a', protocol='classic')
    with pytest.raises(FileNotFoundError, match='pass that folder'): read_cuhk03(tmp_path, protocol='classic')
    import h5py
    with h5py.File(tmp_path/'b.mat', 'w') as f: f['labeled'] = np.zeros(3)
    with pytest.raises(ValueError, match=r"has no detected, testsets.*found \['labeled'\]"): open_cuhk03_mat(tmp_path/'b.mat')
    with pytest.raises(FileNotFoundError, match='images_labeled/ nor cuhk-03.mat'):
        write_new_protocol_config(tmp_path/'c'/NEW_PROTOCOL_CONFIG.format(variant='labeled'), ['1_001_1_01.png'], [1], [1], [0], [], [])
        read_cuhk03(tmp_path/'c', 'labeled')


# ---------------------------------------------------------------- the extraction cache: cache_dir is a parent folder
def _tiny_mat(path:Path, shade:int=0) -> Path:
    "One camera pair, two persons, one image per view; `shade` makes a different file."
    images = {v: [[[np.full((4, 2, 3), (shade, p, k), np.uint8) if k in (0, 5) else None for k in range(10)] for p in (1, 2)]]
              for v in ('labeled', 'detected')}
    return write_cuhk03_mat(path, images, [np.array([[1, 1]])])

def test_cache_dir_is_a_parent_shared_by_several_mats(tmp_path):
    cache = tmp_path/'cache'; cache.mkdir(); (cache/'other.txt').write_text('keep me')   # an existing, used folder
    a, b = _tiny_mat(tmp_path/'a'/'cuhk-03.mat'), _tiny_mat(tmp_path/'b'/'cuhk-03.mat', shade=9)
    out_a, out_b = extract_cuhk03(a, cache, progress=False), extract_cuhk03(b, cache, progress=False)
    assert out_a == cache/'cuhk03-images'/mat_fingerprint(a) and out_b == cache/'cuhk03-images'/mat_fingerprint(b)
    assert out_a != out_b and len(list((out_a/'images_labeled').iterdir())) == 4
    assert extract_cuhk03(a, cache, progress=False) == out_a                  # reused, both still there
    # overwrite re-extracts this file's folder only
    (out_a/'stray.txt').write_text('x')
    assert extract_cuhk03(a, cache, progress=False, overwrite=True) == out_a
    assert not (out_a/'stray.txt').exists() and (out_b/'cuhk03_extracted.json').is_file()
    assert (cache/'other.txt').read_text() == 'keep me'
    # read_cuhk03 with the same cache_dir for both files
    for root in (tmp_path/'a', tmp_path/'b'):
        ds = read_cuhk03(root, 'labeled', protocol='classic', cache_dir=cache, progress=False, check_counts=False)   # a tiny .mat
        assert Path(ds.protocol['images']).parent.parent == cache/'cuhk03-images' and len(ds.query) == 2
    with pytest.raises(NotADirectoryError, match='is a file'): extract_cuhk03(a, cache/'other.txt', progress=False)

def test_other_extract_version_or_damaged_marker_re_extracts(tmp_path):
    mat = _tiny_mat(tmp_path/'cuhk-03.mat')
    out = extract_cuhk03(mat, tmp_path/'cache', progress=False)
    marker = out/'cuhk03_extracted.json'
    m = json.loads(marker.read_text()); assert m['version'] == EXTRACT_VERSION
    m['version'] = EXTRACT_VERSION - 1; marker.write_text(json.dumps(m))
    (out/'images_labeled'/'1_001_1_01.png').unlink()                           # an older extraction, different content
    assert extract_cuhk03(mat, tmp_path/'cache', progress=False) == out
    assert json.loads(marker.read_text())['version'] == EXTRACT_VERSION and (out/'images_labeled'/'1_001_1_01.png').is_file()
    marker.write_text('{not json')
    assert extract_cuhk03(mat, tmp_path/'cache', progress=False) == out
    assert json.loads(marker.read_text())['fingerprint'] == mat_fingerprint(mat)

def test_new_protocol_without_camid(tmp_path):
    "camId is optional: cameras come from the file names (as torchreid)."
    root = tmp_path/'cuhk03'; (root/'images_labeled').mkdir(parents=True)
    names = [cuhk03_image_name(1, p, k) for p in (1, 2, 3) for k in (0, 5)]
    for n in names: (root/'images_labeled'/n).write_bytes(b'')
    cfg_path = write_new_protocol_config(root/NEW_PROTOCOL_CONFIG.format(variant='labeled'), names, [1, 1, 2, 2, 3, 3],
                                         None, [0, 1], [2, 4], [3, 5])
    from scipy.io import loadmat
    assert 'camId' not in loadmat(cfg_path)
    cfg = load_new_protocol(cfg_path)
    assert cfg['camids'] is None and cfg['filelist'] == names and cfg['query_idx'].tolist() == [2, 4]
    ds = read_cuhk03(root, 'labeled', check_counts=False, progress=False)
    assert [r.camid for r in ds.query] == [0, 0] and [r.camid for r in ds.gallery] == [1, 1]
    assert [r.camid for r in ds.train] == [0, 1] and ds.num_train_pids == 1
    # with camId the values are returned as stored, and a wrong length is still an error
    write_new_protocol_config(tmp_path/'c.mat', names, [1]*6, [1, 2]*3, [0], [1], [2])
    assert load_new_protocol(tmp_path/'c.mat')['camids'].tolist() == [1, 2]*3
    write_new_protocol_config(tmp_path/'d.mat', names, [1]*6, [1, 2], [0], [1], [2])
    with pytest.raises(ValueError, match='camId has 2 entries, filelist 6'): load_new_protocol(tmp_path/'d.mat')
