"Market-1501 reader: counts, relabelling, junk/distractor protocol, multi-query groups, published counts and errors on fake trees with real names."
from pathlib import Path
import time, warnings
import numpy as np, pytest
from PIL import Image
from reid_nb.data.market import (read_market1501, parse_market_name, Record, ReIDDataset, CountMismatchWarning,
                                  PUBLISHED_COUNTS, multi_query_groups, check_published_counts)
from reid_nb.data.pipeline import ReIDImages, ReIDTransform, read_image

def _name(pid, cam, seq, frame, idx=1):
    return f"{'-1' if pid == -1 else f'{pid:04d}'}_c{cam}s{seq}_{frame:06d}_{idx:02d}.jpg"

def _write(folder:Path, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names: Image.new('RGB', (4, 8), (10, 20, 30)).save(folder/n)

@pytest.fixture
def market(tmp_path):
    "Train ids 1500, 2, 43 (unsorted on purpose); test ids 5, 6; 3 distractors, 4 junk boxes; gt_bbox; stray files."
    root = tmp_path/'Market-1501-v15.09.15'
    train = [(1500, 1), (1500, 2), (2, 1), (2, 3), (2, 3), (43, 6), (43, 5)]
    _write(root/'bounding_box_train', [_name(p, c, 1, i) for i,(p,c) in enumerate(train)])
    _write(root/'query', [_name(5, 1, 1, 100), _name(6, 2, 3, 101)])
    gal = [(5, 2), (5, 3), (6, 1), (6, 4), (6, 4), (0, 1), (0, 2), (0, 6), (-1, 1), (-1, 2), (-1, 3), (-1, 4)]
    _write(root/'bounding_box_test', [_name(p, c, 2, 200+i) for i,(p,c) in enumerate(gal)])
    _write(root/'gt_bbox', [_name(5, 1, 1, 100, 0), _name(5, 1, 1, 100, 2), _name(6, 2, 3, 101, 0)])
    (root/'bounding_box_train'/'Thumbs.db').write_bytes(b'junk')
    (root/'query'/'._0005_c1s1_000100_01.jpg').write_bytes(b'apple double')
    return root

def test_parse_name():
    assert parse_market_name('1501_c6s4_001234_07.jpg') == dict(pid=1501, camid=5, seq=4, frame=1234, idx=7)
    assert parse_market_name('-1_c1s1_000000_00.jpg')['pid'] == -1
    for bad in ['0001_c1_f0012345.jpg', '001_c1s1_000001_01.jpg', '0001_c0s1_000001_01.jpg', '0001_c1s1_000001_01.JPG']:
        assert parse_market_name(bad) is None, bad

def test_counts_relabel_and_protocol(market):
    ds = read_market1501(market, check_counts=False)
    assert isinstance(ds, ReIDDataset) and ds.name == 'market1501'
    assert (len(ds.train), len(ds.query), len(ds.gallery), len(ds.junk), len(ds.gt_bbox)) == (7, 2, 8, 4, 3)
    # relabelled in sorted order of the original ids: 2 → 0, 43 → 1, 1500 → 2
    assert ds.num_train_pids == 3
    assert {(r.orig_pid, r.pid) for r in ds.train} == {(2, 0), (43, 1), (1500, 2)}
    assert sorted({r.pid for r in ds.train}) == [0, 1, 2]
    # query / gallery keep the original ids; junk dropped, distractors kept
    assert sorted(r.pid for r in ds.query) == [5, 6]
    assert sorted(r.pid for r in ds.gallery) == [0, 0, 0, 5, 5, 6, 6, 6]
    assert all(r.pid != -1 for r in ds.train + ds.query + ds.gallery)
    assert all(r.orig_pid == -1 and r.split == 'junk' for r in ds.junk)
    assert all(r.pid == r.orig_pid for r in ds.query + ds.gallery)
    # cameras 0-based, seq/frame parsed, paths exist
    q = {r.pid: r for r in ds.query}
    assert (q[5].camid, q[6].camid, q[6].seq, q[6].frame) == (0, 1, 3, 101)
    assert {r.camid for r in ds.train} == {0, 1, 2, 4, 5}
    assert all(Path(r.path).is_file() for r in ds.train + ds.query + ds.gallery + ds.gt_bbox)
    assert {(r.pid, r.camid) for r in ds.gt_bbox} == {(5, 0), (6, 1)}

def test_summary(market):
    s = read_market1501(market, check_counts=False).summary()
    assert list(s.columns) == ['ids', 'images', 'cameras']
    assert s.loc['train'].tolist() == [3, 7, 5]
    assert s.loc['query'].tolist() == [2, 2, 2]
    assert s.loc['gallery'].tolist() == [3, 8, 5]     # ids 5, 6 and the distractor id 0
    assert s.loc['gt_bbox'].tolist() == [2, 3, 2]

def test_without_gt_bbox(market):
    import shutil; shutil.rmtree(market/'gt_bbox')
    ds = read_market1501(market, check_counts=False)
    assert ds.gt_bbox == [] and 'gt_bbox' not in ds.summary().index

@pytest.mark.parametrize('folder', ['bounding_box_train', 'bounding_box_test', 'query'])
def test_missing_folder_is_named(market, folder):
    import shutil; shutil.rmtree(market/folder)
    with pytest.raises(FileNotFoundError) as e: read_market1501(market, check_counts=False)
    first = str(e.value).split('\n')[0]
    assert folder in first and 'Expected the Market-1501 layout' in str(e.value)

def test_parent_folder_hint_and_missing_root(market, tmp_path):
    with pytest.raises(FileNotFoundError, match='pass that folder') as e: read_market1501(tmp_path)
    assert 'Market-1501-v15.09.15' in str(e.value)
    with pytest.raises(FileNotFoundError, match='does not exist'): read_market1501(tmp_path/'nope')

def test_bad_names_reported(market):
    bad = ['0002_c1s1_00045_03.jpg', 'person.jpg', '0002-c1s1-000451-03.jpg', 'a.jpg', 'b.jpg', 'c.jpg', 'd.jpg']
    _write(market/'bounding_box_train', bad)
    with pytest.raises(ValueError) as e: read_market1501(market, check_counts=False)
    msg = str(e.value)
    assert 'bounding_box_train' in msg and '7 file(s)' in msg and '(7 in all)' in msg
    assert sum(n in msg for n in bad) == 5           # the first five (sorted) are listed

def test_distractor_outside_gallery_is_an_error(market):
    _write(market/'query', [_name(0, 1, 1, 999)])
    with pytest.raises(ValueError, match='0000_c1s1_000999_01.jpg'): read_market1501(market, check_counts=False)

def test_empty_split_is_an_error(market):
    for f in (market/'query').iterdir(): f.unlink()
    with pytest.raises(ValueError, match='No images found'): read_market1501(market, check_counts=False)

def test_corrupt_image_is_named(market):
    ds = read_market1501(market, check_counts=False)
    r = ds.gallery[2]
    Path(r.path).write_bytes(Path(ds.gallery[0].path).read_bytes()[:30])   # truncated JPEG
    items = ReIDImages(ds.gallery, ReIDTransform((8, 4), train=False), with_camid=True)
    items[0]
    with pytest.raises(OSError, match=Path(r.path).name): items[2]
    Path(r.path).write_bytes(b'')
    with pytest.raises(OSError, match=Path(r.path).name): read_image(r.path)


def test_multi_query_groups(market):
    _write(market/'gt_bbox', [_name(5, 2, 1, 300, 0), _name(7, 1, 1, 301, 0)])   # other camera / other id: not in groups
    ds = read_market1501(market, check_counts=False)
    assert len(ds.mq_groups) == len(ds.query) and ds.has_multi_query
    for q, g in zip(ds.query, ds.mq_groups):
        assert g.dtype == np.int64 and len(g) and list(g) == sorted(g)
        members = [ds.gt_bbox[i] for i in g]
        assert all((m.pid, m.camid) == (q.pid, q.camid) for m in members)
        # every gt_bbox box of that id and camera is in the group
        assert len(g) == sum((r.pid, r.camid) == (q.pid, q.camid) for r in ds.gt_bbox)
    assert [len(g) for g in ds.mq_groups] == [2, 1]
    assert ds.protocol['multi_query'] is True

def test_multi_query_missing_group_warns(market):
    for f in (market/'gt_bbox').glob('0006_*'): f.unlink()
    with pytest.warns(UserWarning, match='0006_c2s3_000101_01.jpg') as w:
        ds = read_market1501(market, check_counts=False)
    assert '1 of 2 queries' in str(w[0].message)
    # one query without boxes does not turn multi-query off: that query falls back to its own image
    assert [len(g) for g in ds.mq_groups] == [2, 0] and ds.has_multi_query and ds.protocol['multi_query']
    recs, owner = ds.multi_query_items()
    assert owner.tolist() == [0, 0, 1] and recs[2] == ds.query[1]
    assert [r.split for r in recs] == ['gt_bbox', 'gt_bbox', 'query']

def test_no_multi_query_when_every_group_is_empty(market):
    for f in (market/'gt_bbox').glob('000[56]_*'): f.unlink()
    _write(market/'gt_bbox', [_name(7, 1, 1, 301, 0)])                 # an id without a query
    with pytest.warns(UserWarning, match='2 of 2 queries'): ds = read_market1501(market, check_counts=False)
    assert [len(g) for g in ds.mq_groups] == [0, 0] and not ds.has_multi_query and not ds.protocol['multi_query']

def _touch(folder:Path, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names: open(folder/n, 'wb').close()

def _real_market_tree(root:Path):
    "Zero-byte files with real Market-1501 names and the published counts of every folder."
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(np.arange(1, 1502), 1501, replace=False))
    train_ids, test_ids = ids[::2], ids[1::2]                # 751 train ids, 750 test ids
    assert (len(train_ids), len(test_ids)) == (751, 750)
    frame = iter(range(10**6))
    train = [_name(int(train_ids[i % 751]), 1 + i % 6, 1, next(frame)) for i in range(12936)]
    ncams = [5 if i < 368 else 4 for i in range(750)]        # 3,368 queries: one per id and camera
    query = [_name(int(p), c, 1, next(frame)) for p, k in zip(test_ids, ncams) for c in range(1, k + 1)]
    gt = [_name(int(p), c, 1, next(frame), 0) for p, k in zip(test_ids, ncams) for c in range(1, k + 1)]
    n_distr = 2793
    gallery = [_name(int(test_ids[i % 750]), 1 + (i + 1) % 6, 2, next(frame)) for i in range(15913 - n_distr)]
    gallery += [_name(0, 1 + i % 6, 3, next(frame)) for i in range(n_distr)]
    gallery += [_name(-1, 1 + i % 6, 4, next(frame)) for i in range(3819)]
    for folder, names in dict(bounding_box_train=train, query=query, bounding_box_test=gallery, gt_bbox=gt).items():
        _touch(root/folder, names)
    return root

def test_real_counts(tmp_path):
    "The published Market-1501 numbers, read from a tree of 40k zero-byte files with real names, without a warning."
    root = _real_market_tree(tmp_path/'Market-1501-v15.09.15')
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter('error', CountMismatchWarning)
        ds = read_market1501(root)
    took = time.perf_counter() - t
    s = ds.summary()
    assert (len(ds.train), ds.num_train_pids) == (12936, 751)
    assert (len(ds.query), s.loc['query', 'ids']) == (3368, 750)
    assert (len(ds.gallery), len(ds.junk), s.loc['gallery', 'ids']) == (15913, 3819, 751)
    assert sum(r.pid == 0 for r in ds.gallery) == 2793
    assert ds.has_multi_query and sum(map(len, ds.mq_groups)) == 3368
    assert PUBLISHED_COUNTS['market1501']['gallery'] == dict(images=15913, ids=751)
    assert took < 10, f'listing 40k names took {took:.1f}s'   # the reader never opens an image

def test_count_mismatch_names_both_numbers(tmp_path):
    root = _real_market_tree(tmp_path/'market')
    victims = sorted((root/'bounding_box_train').iterdir())[:5]
    for f in victims: f.unlink()
    with pytest.warns(CountMismatchWarning) as w: ds = read_market1501(root)
    msgs = [str(x.message) for x in w if x.category is CountMismatchWarning]
    assert len(msgs) == 1 and 'train' in msgs[0] and '12,936' in msgs[0] and '12,931' in msgs[0]
    # the same tree under another name (a synthetic analog, a subset) is not checked
    with warnings.catch_warnings():
        warnings.simplefilter('error', CountMismatchWarning)
        read_market1501(root, name='my-market-subset')
    assert check_published_counts(ds, 'market1501', published={'train': {'images': 12931, 'ids': None}}) == []
