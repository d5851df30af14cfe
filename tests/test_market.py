"Market-1501 reader: counts, relabelling, junk/distractor protocol and errors on a fake tree with real names."
from pathlib import Path
import numpy as np, pytest
from PIL import Image
from reid_nb.data.market import read_market1501, parse_market_name, Record, ReIDDataset
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
    ds = read_market1501(market)
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
    s = read_market1501(market).summary()
    assert list(s.columns) == ['ids', 'images', 'cameras']
    assert s.loc['train'].tolist() == [3, 7, 5]
    assert s.loc['query'].tolist() == [2, 2, 2]
    assert s.loc['gallery'].tolist() == [3, 8, 5]     # ids 5, 6 and the distractor id 0
    assert s.loc['gt_bbox'].tolist() == [2, 3, 2]

def test_without_gt_bbox(market):
    import shutil; shutil.rmtree(market/'gt_bbox')
    ds = read_market1501(market)
    assert ds.gt_bbox == [] and 'gt_bbox' not in ds.summary().index

@pytest.mark.parametrize('folder', ['bounding_box_train', 'bounding_box_test', 'query'])
def test_missing_folder_is_named(market, folder):
    import shutil; shutil.rmtree(market/folder)
    with pytest.raises(FileNotFoundError) as e: read_market1501(market)
    first = str(e.value).split('\n')[0]
    assert folder in first and 'Expected the Market-1501 layout' in str(e.value)

def test_parent_folder_hint_and_missing_root(market, tmp_path):
    with pytest.raises(FileNotFoundError, match='pass that folder') as e: read_market1501(tmp_path)
    assert 'Market-1501-v15.09.15' in str(e.value)
    with pytest.raises(FileNotFoundError, match='does not exist'): read_market1501(tmp_path/'nope')

def test_bad_names_reported(market):
    bad = ['0002_c1s1_00045_03.jpg', 'person.jpg', '0002-c1s1-000451-03.jpg', 'a.jpg', 'b.jpg', 'c.jpg', 'd.jpg']
    _write(market/'bounding_box_train', bad)
    with pytest.raises(ValueError) as e: read_market1501(market)
    msg = str(e.value)
    assert 'bounding_box_train' in msg and '7 file(s)' in msg and '(7 in all)' in msg
    assert sum(n in msg for n in bad) == 5           # the first five (sorted) are listed

def test_distractor_outside_gallery_is_an_error(market):
    _write(market/'query', [_name(0, 1, 1, 999)])
    with pytest.raises(ValueError, match='0000_c1s1_000999_01.jpg'): read_market1501(market)

def test_empty_split_is_an_error(market):
    for f in (market/'query').iterdir(): f.unlink()
    with pytest.raises(ValueError, match='No images found'): read_market1501(market)

def test_corrupt_image_is_named(market):
    ds = read_market1501(market)
    r = ds.gallery[2]
    Path(r.path).write_bytes(Path(ds.gallery[0].path).read_bytes()[:30])   # truncated JPEG
    items = ReIDImages(ds.gallery, ReIDTransform((8, 4), train=False), with_camid=True)
    items[0]
    with pytest.raises(OSError, match=Path(r.path).name): items[2]
    Path(r.path).write_bytes(b'')
    with pytest.raises(OSError, match=Path(r.path).name): read_image(r.path)
