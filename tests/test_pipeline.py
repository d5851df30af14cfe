"Data pipeline: PK batches, determinism, joint image/mask/keypoint alignment, loaders and a fastai Learner on them."
from collections import Counter
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from reid_nb.core import ExperimentConfig
from reid_nb.data.market import read_market1501
from reid_nb.data.pipeline import (IMAGENET_MEAN, IMAGENET_STD, COCO_FLIP_INDEX, PKSampler, ReIDTransform, ReIDImages,
                                   build_dataloaders, eval_dataloader, denormalize)
from reid_nb.train import SamplerEpoch

# ---------------------------------------------------------------- PK sampler
def _chunks(sampler, P, K): return np.array(list(sampler)).reshape(-1, P*K)

@pytest.mark.parametrize('P,K,seed', [(4, 4, 0), (3, 2, 1), (5, 3, 7)])
def test_pk_batches_are_P_ids_by_K_images(P, K, seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 12, 20)                          # some ids with fewer than K images
    pids = np.repeat(np.arange(20)*3 + 100, sizes)           # non-contiguous ids
    rng.shuffle(pids)
    s = PKSampler(pids.tolist(), P, K, seed=seed)
    assert len(s) == max(1, len(pids) // (P*K)) * P*K
    for epoch in range(3):
        batches = _chunks(s, P, K)
        assert batches.shape[0] == len(s) // (P*K)
        for b in batches:
            grid = pids[b].reshape(P, K)
            assert (grid == grid[:, :1]).all()                # identity-major rows
            assert len(set(grid[:, 0])) == P                  # P distinct ids
            for row_idx, pid in zip(b.reshape(P, K), grid[:, 0]):
                if (pids == pid).sum() >= K: assert len(set(row_idx)) == K   # no repeats unless needed
                else: assert set(row_idx) <= set(np.flatnonzero(pids == pid))

def test_pk_sampler_deterministic_and_reseeded():
    pids = [p for p in range(15) for _ in range(2 + p % 5)]
    a, b = PKSampler(pids, 4, 2, seed=3), PKSampler(pids, 4, 2, seed=3)
    ea = [list(a) for _ in range(3)]
    assert ea == [list(b) for _ in range(3)]                 # same seed → same epochs
    assert ea[0] != ea[1] != ea[2]                            # reshuffled each epoch
    a.set_epoch(1); assert list(a) == ea[1]                  # set_epoch reproduces an epoch
    assert list(PKSampler(pids, 4, 2, seed=4)) != ea[0]

def test_pk_sampler_covers_images_and_errors():
    pids = [p for p in range(8) for _ in range(4)]           # 32 images, P*K = 8: an epoch is one full pass
    s = PKSampler(pids, 2, 4, seed=0)
    assert sorted(s) == list(range(32))
    with pytest.raises(ValueError, match='at least P=9'): PKSampler(pids, 9, 2)
    with pytest.raises(ValueError): PKSampler(pids, 0, 2)

# ---------------------------------------------------------------- joint transform
H, W = 64, 32
def _square(box=(3, 10, 10, 21)):
    "White square at box (x0,y0,x1,y1 incl.) on black, the same mask, left wrist at its centre, right wrist elsewhere."
    img = np.zeros((H, W, 3), np.uint8); x0, y0, x1, y1 = box
    img[y0:y1+1, x0:x1+1] = 255
    kp = np.zeros((17, 3), np.float32)
    kp[9] = ((x0+x1)//2, (y0+y1)//2, 2)
    kp[10] = (25, 50, 1)
    kp[5] = (x0, y0, 2)                                       # left shoulder on the square's corner
    return Image.fromarray(img), (img[..., 0] > 0).astype(np.uint8), kp

def _white(out): return denormalize(out['image']).mean(0) > 0.5

def test_flip_crop_keep_mask_and_keypoints_aligned():
    img, mask, kp = _square()
    torch.manual_seed(0)
    flips = 0
    for flip_p in (1.0, 0.0, 0.5):
        tfm = ReIDTransform((H, W), train=True, flip_p=flip_p, pad=6, erase_p=0.)
        for _ in range(15):
            out = tfm(img, mask, kp)
            white = _white(out)
            assert torch.equal(white, out['mask'].bool())
            k = out['keypoints']
            flipped = torch.nonzero(white)[:, 1].float().mean() > W/2    # the square sits left of the centre before a flip
            if flip_p != 0.5: assert bool(flipped) == (flip_p == 1.0)
            if flip_p == 0.5: flips += int(flipped)
            wrist = k[10] if flipped else k[9]                # the left wrist becomes the right wrist on a flip
            other = k[9] if flipped else k[10]
            assert wrist[2] in (0, 2) and other[2] in (0, 1)  # visibility travels with its keypoint
            if wrist[2] > 0: assert white[int(wrist[1]), int(wrist[0])]
            # the shoulder sat on the square's top-left corner: after a flip it is the top-right corner
            sh = k[6] if flipped else k[5]
            if sh[2] > 0:
                ys, xs = torch.nonzero(white, as_tuple=True)
                assert (int(sh[1]), int(sh[0])) == (int(ys.min()), int(xs.max() if flipped else xs.min()))
    assert 0 < flips < 15                                     # p=0.5 flips some, not all

def test_flip_exact_positions_and_swap():
    img, mask, kp = _square()
    out = ReIDTransform((H, W), flip_p=1., pad=0, erase_p=0.)(img, mask, kp)
    k = out['keypoints']
    for i, j in enumerate(COCO_FLIP_INDEX):
        assert k[i].tolist() == [W - 1 - kp[j, 0], kp[j, 1], kp[j, 2]]
    assert torch.equal(out['mask'], torch.from_numpy(mask[:, ::-1].copy()))
    assert ReIDTransform((H, W), flip_p=1., pad=0, flip_index=None)(img, mask, kp)['keypoints'][9, 0] == W - 1 - kp[9, 0]

def test_keypoints_pushed_off_the_image_become_invisible():
    img, mask, _ = _square()
    kp = np.array([[0, 0, 2], [W-1, H-1, 2]] + [[10, 10, 2]]*15, np.float32)
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        k = ReIDTransform((H, W), flip_p=0., pad=8, erase_p=0.)(img, mask, kp)['keypoints']
        inside = (k[:, 0] >= 0) & (k[:, 0] <= W-1) & (k[:, 1] >= 0) & (k[:, 1] <= H-1)
        assert torch.equal(k[:, 2] > 0, inside)
        seen |= set(k[:2, 2].tolist())
    assert seen == {0., 2.}

def test_resize_keeps_alignment_approximately():
    img, mask, kp = _square()
    out = ReIDTransform((2*H, 2*W), train=False)(img, mask, kp)
    white = _white(out)
    assert (white != out['mask'].bool()).float().mean() < 0.01
    x, y, v = out['keypoints'][9].tolist()
    assert white[int(y), int(x)] and v == 2

def test_erasing_touches_image_only():
    img, mask, kp = _square()
    torch.manual_seed(5); a = ReIDTransform((H, W), pad=6, erase_p=0.)(img, mask, kp)
    torch.manual_seed(5); b = ReIDTransform((H, W), pad=6, erase_p=1.)(img, mask, kp)
    assert not torch.equal(a['image'], b['image'])
    assert torch.equal(a['mask'], b['mask']) and torch.equal(a['keypoints'], b['keypoints'])
    erased = (a['image'] != b['image']).any(0)
    assert torch.allclose(b['image'][:, erased], torch.zeros(1))   # erased to 0 = the ImageNet mean colour

def test_eval_transform_normalises_without_augmenting():
    img, mask, kp = _square()
    t = ReIDTransform((H, W), train=False)
    a, b = t(img), t(img)
    assert torch.equal(a['image'], b['image']) and a['image'].dtype == torch.float32 and a['image'].shape == (3, H, W)
    black = (torch.zeros(3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(a['image'][:, 0, 0], black)
    with pytest.raises(ValueError, match='does not match'): t(img, mask=mask[:10])
    with pytest.raises(ValueError, match='Keypoints must be'): t(img, keypoints=np.zeros((17, 4)))
    with pytest.raises(ValueError, match='flip_index'): ReIDTransform((H, W), flip_p=1.)(img, keypoints=np.zeros((5, 3)))

# ---------------------------------------------------------------- datasets and loaders
@pytest.fixture(scope='module')
def market(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp('pipe')/'market', np.random.default_rng(0)
    def save(folder, pid, cam, i):
        (root/folder).mkdir(parents=True, exist_ok=True)
        colour = np.array([pid*37 % 200, pid*91 % 200, pid*53 % 200]) + 30
        arr = np.clip(colour + rng.normal(0, 10, (16, 8, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root/folder/f"{'-1' if pid < 0 else f'{pid:04d}'}_c{cam}s1_{i:06d}_01.jpg")
    for p in range(1, 11):
        for i in range(2 + p % 4): save('bounding_box_train', p, 1 + i % 3, i)
    for p in range(50, 54): save('query', p, 1, 0); save('bounding_box_test', p, 2, 1)
    save('bounding_box_test', 0, 3, 2); save('bounding_box_test', -1, 3, 3)
    return read_market1501(root, check_counts=False)   # a tiny tree: not the published counts

def _cfg(**kw): return ExperimentConfig(**{**dict(height=16, width=8, P=3, K=2, num_workers=0, seed=0, device='cpu'), **kw})

def test_reid_images_items(market):
    x, y = ReIDImages(market.train, ReIDTransform((16, 8)))[0]
    assert x.shape == (3, 16, 8) and y == market.train[0].pid
    item = ReIDImages(market.query, ReIDTransform((16, 8), train=False), with_camid=True,
                      extras=lambda r: dict(mask=np.ones((16, 8)), keypoints=np.zeros((17, 3))))[1]
    assert len(item) == 5 and item[1:3] == (market.query[1].pid, market.query[1].camid)
    assert item[3].shape == (16, 8) and item[4].shape == (17, 3)
    with pytest.raises(ValueError, match='unknown key'):
        ReIDImages(market.train, extras=lambda r: dict(masks=1))[0]

def test_build_dataloaders_batches(market):
    cfg = _cfg()
    dls = build_dataloaders(market, cfg)
    assert len(dls.train) == len(market.train) // 6 and dls.n_inp == 1 and dls.c == 10 and dls.num_query == 4
    assert dls.device == torch.device('cpu')
    for xb, yb in dls.train:
        assert xb.shape == (6, 3, 16, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
        grid = yb.view(3, 2)
        assert (grid == grid[:, :1]).all() and len(set(grid[:, 0].tolist())) == 3
    batches = list(dls.valid)
    assert all(len(b) == 3 for b in batches)
    pids = torch.cat([b[1] for b in batches]); cams = torch.cat([b[2] for b in batches])
    recs = market.query + market.gallery
    assert pids.tolist() == [r.pid for r in recs] and cams.tolist() == [r.camid for r in recs]
    assert pids.dtype == cams.dtype == torch.int64

def test_loaders_deterministic_for_a_seed(market):
    def first_epoch(seed):
        torch.manual_seed(123)
        return [(x, y) for x, y in build_dataloaders(market, _cfg(seed=seed)).train]
    a, b, c = first_epoch(0), first_epoch(0), first_epoch(1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert [y.tolist() for _, y in a] != [y.tolist() for _, y in c]

def test_eval_dataloader(market):
    dl = eval_dataloader(market.gallery, _cfg(), batch_size=2)
    x, p, c = next(iter(dl))
    assert x.shape == (2, 3, 16, 8) and p.tolist() == [r.pid for r in market.gallery[:2]]
    x2, _, _ = next(iter(dl))
    assert torch.equal(x, x2)                                  # no augmentation, no shuffling
    assert sum(len(b[0]) for b in dl) == len(market.gallery)

def test_fastai_learner_trains_one_epoch(market):
    from fastai.learner import Learner
    from fastai.callback.core import Callback, CancelValidException
    class SkipValidation(Callback):
        def before_validate(self): raise CancelValidException()
    dls = build_dataloaders(market, _cfg(P=4, K=2))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3*16*8, dls.c))
    w0 = model[1].weight.detach().clone()
    learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), cbs=[SkipValidation(), SamplerEpoch()], lr=1e-2)
    with learn.no_logging(): learn.fit(1)
    assert len(learn.recorder.losses) == len(dls.train) > 0
    assert np.isfinite(float(learn.recorder.losses[-1]))
    assert not torch.equal(w0, model[1].weight.detach())
    assert dls.train.sampler.epoch == 1                       # SamplerEpoch set epoch 0, the iteration advanced it

def test_figures_from_the_library():
    import matplotlib; matplotlib.use('Agg')
    from reid_nb.data.pipeline import show_sample, show_pk_batch
    img, mask, kp = _square()
    out = ReIDTransform((H, W))(img, mask, kp)
    ax = show_sample(out['image'], out['mask'], out['keypoints'], title='t')
    assert ax.get_title() == 't' and len(ax.collections) == 1
    show_sample(None, out['mask'], out['keypoints'])
    fig = show_pk_batch(torch.zeros(6, 3, H, W), torch.tensor([1, 1, 2, 2, 3, 3]), P=3, K=2)
    assert len(fig.axes) == 6 and fig.axes[2].get_title(loc='left') == 'pid 2'
    import matplotlib.pyplot as plt; plt.close('all')
