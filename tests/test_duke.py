"DukeMTMC-reID reader: the published counts from a tree of real names, relabelling, cameras 1-8, and errors."
import time, warnings
from pathlib import Path
import numpy as np, pytest
from reid_nb.data.duke import read_dukemtmcreid, parse_duke_name
from reid_nb.data.market import CountMismatchWarning, ReIDDataset

def _touch(folder:Path, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names: open(folder/n, 'wb').close()

def _duke_tree(root:Path, n_train=16522, n_query=2228, n_gallery=17661):
    "Zero-byte files with DukeMTMC-reID names: 702 train ids, 702 test ids + 408 gallery-only ids, 8 cameras."
    ids = np.random.default_rng(0).choice(np.arange(1, 7141), 702 + 702 + 408, replace=False)
    train_ids, test_ids, extra_ids = ids[:702], ids[702:1404], ids[1404:]
    frame = iter(range(10**7))
    name = lambda pid, cam: f'{int(pid):04d}_c{cam}_f{next(frame):07d}.jpg'
    train = [name(train_ids[i % 702], 1 + i % 8) for i in range(n_train)]
    query = [name(test_ids[i % 702], 1 + (i // 702) % 8) for i in range(n_query)]
    gal_ids = np.concatenate([test_ids, extra_ids])
    gallery = [name(gal_ids[i % 1110], 1 + (i // 702 + 3) % 8) for i in range(n_gallery)]
    for folder, names in dict(bounding_box_train=train, query=query, bounding_box_test=gallery).items():
        _touch(root/folder, names)
    return root

def test_real_counts(tmp_path):
    root = _duke_tree(tmp_path/'DukeMTMC-reID')
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter('error', CountMismatchWarning)
        ds = read_dukemtmcreid(root)
    took = time.perf_counter() - t
    assert isinstance(ds, ReIDDataset) and ds.name == 'dukemtmcreid'
    s = ds.summary()
    assert (len(ds.train), ds.num_train_pids) == (16522, 702)
    assert (s.loc['query', 'images'], s.loc['query', 'ids']) == (2228, 702)
    assert (s.loc['gallery', 'images'], s.loc['gallery', 'ids']) == (17661, 1110)
    assert s.loc['train', 'cameras'] == 8 and {r.camid for r in ds.train} == set(range(8))
    assert sorted({r.pid for r in ds.train}) == list(range(702))
    assert ds.junk == [] and ds.mq_groups == [] and not ds.has_multi_query
    assert took < 10, f'listing 36k names took {took:.1f}s'

def test_count_mismatch_warns_with_both_numbers(tmp_path):
    root = _duke_tree(tmp_path/'duke', n_query=2200)
    with pytest.warns(CountMismatchWarning) as w: read_dukemtmcreid(root)
    msgs = [str(x.message) for x in w if x.category is CountMismatchWarning]
    assert len(msgs) == 1 and 'query' in msgs[0] and '2,228' in msgs[0] and '2,200' in msgs[0], msgs
    with warnings.catch_warnings():
        warnings.simplefilter('error', CountMismatchWarning)
        read_dukemtmcreid(root, name='synthreid-duke')       # analogs are not held to the real numbers

def test_relabel_and_fields(tmp_path):
    _touch(tmp_path/'bounding_box_train', ['7140_c8_f0000003.jpg', '0002_c1_f0000001.jpg', '0500_c3_f0000002.jpg'])
    _touch(tmp_path/'query', ['0007_c2_f0000010.jpg'])
    _touch(tmp_path/'bounding_box_test', ['0007_c5_f0000011.jpg', '0008_c6_f0000012.jpg'])
    ds = read_dukemtmcreid(tmp_path, check_counts=False)
    assert [(r.orig_pid, r.pid, r.camid, r.frame) for r in ds.train] == [(2, 0, 0, 1), (500, 1, 2, 2), (7140, 2, 7, 3)]
    assert [(r.pid, r.camid, r.split) for r in ds.gallery] == [(7, 4, 'gallery'), (8, 5, 'gallery')]

@pytest.mark.parametrize('bad', ['0002_c9_f0000001.jpg', '0002_c1s1_000001_01.jpg', '-1_c1_f0000001.jpg', 'IMG_0001.jpg'])
def test_unexpected_names_are_reported(tmp_path, bad):
    root = _duke_tree(tmp_path/'duke', 20, 5, 20)
    _touch(root/'bounding_box_test', [bad])
    with pytest.raises(ValueError, match='DukeMTMC-reID name convention') as e: read_dukemtmcreid(root, check_counts=False)
    assert bad in str(e.value) and 'bounding_box_test' in str(e.value)

def test_missing_folders(tmp_path):
    root = _duke_tree(tmp_path/'DukeMTMC-reID', 20, 5, 20)
    with pytest.raises(FileNotFoundError, match='pass that folder'): read_dukemtmcreid(tmp_path)
    import shutil; shutil.rmtree(root/'query')
    with pytest.raises(FileNotFoundError) as e: read_dukemtmcreid(root)
    assert 'query not found' in str(e.value) and 'Expected the DukeMTMC-reID layout' in str(e.value)
    with pytest.raises(FileNotFoundError, match='does not exist'): read_dukemtmcreid(tmp_path/'nowhere')

def test_parse():
    assert parse_duke_name('0005_c2_f0046985.jpg') == dict(pid=5, camid=1, seq=0, frame=46985)
    assert parse_duke_name('0005_c2_f0046985.png') is None
