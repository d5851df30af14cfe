"MMGA: shapes at 384×128, S ∈ [1, 2], Eq. 4 by hand, which variants' mask losses reach the attention convolutions, mask-free evaluation, bad input."
import math
import numpy as np
import pytest
import torch
from reid_nb.core import get_preset
from reid_nb.model import build_backbone
from reid_nb.losses import WeightedLoss
from reid_nb.data.pipeline import ReIDImages, ReIDTransform, eval_dataloader, apply_recipe
from reid_nb.data.registry import get_dataset
from reid_nb.evaluation import extract_features
from reid_nb.method import mask_extras, parse_options
from reid_nb.methods.mmga import MMGANet, MMGAOptions, VARIANTS, attention_loss, normalize_attention, build_mmga, mmga_terms, mmga_sample, mmga_targets, part_groups, attention_size, mmga_shapes, SMALL_DIMS, MMGA, mask_target_summary


def _cfg(**kw):
    return get_preset('smoke', **{**dict(method='mmga', device='cpu', height=64, width=32, P=2, K=2), **kw})


def _opts(variant, **kw): return MMGAOptions(variant, dims=(32, 16, 16), **kw)


def test_shapes_at_384x128_and_S_in_1_2():
    trunk, _ = build_backbone('resnet50', pretrained=False, last_stride=1)
    net = MMGANet(trunk, n_classes=10, variant='mmga').train()
    torch.manual_seed(0)
    out = net(torch.randn(2, 3, 384, 128))
    assert attention_size(384, 128) == (24, 8)
    assert {k: tuple(v.shape) for k, v in out.maps.items()} == {k: (2, 24, 8) for k in ('att1_whole', 'att2_whole', 'att2_upper', 'att2_bottom')}
    assert [tuple(out.feats[k].shape) for k in ('whole', 'upper', 'bottom', 'all')] == [(2, 1024), (2, 512), (2, 512), (2, 2048)]
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {'whole': (2, 10), 'local': (2, 10)}
    for s in out.maps.values(): assert s.min() >= 1 and s.max() <= 2
    sh = mmga_shapes(384, 128)
    assert (sh['layer2'], sh['layer3'], sh['layer4']) == ((512, 48, 16), (1024, 24, 8), (2048, 24, 8))
    # S stays in [1, 2] even for extreme inputs (the sigmoid saturates at its bounds)
    big = net.att2['whole'].spatial(torch.randn(1, 1024, 24, 8) * 1e4)
    assert big.min() >= 1 and big.max() <= 2


def test_attention_loss_by_hand():
    S = torch.tensor([[[1.0, 1.5], [2.0, 1.0]], [[1.2, 1.2], [1.8, 1.4]]])
    M = torch.tensor([[[0., 1.], [1., 0.]], [[1., 0.], [1., 1.]]])
    # S_norm = [[0, .5], [1, 0]] and [[0, 0], [1, 1/3]]; squared errors 0.25 and 1 + 4/9; summed over the maps, / n_batch = 2
    assert torch.allclose(normalize_attention(S), torch.tensor([[[0, .5], [1, 0]], [[0, 0], [1, 1/3]]]), atol=1e-6)
    assert attention_loss(S, M).item() == pytest.approx(math.sqrt((0.25 + 1 + 4/9) / 2), abs=1e-6)
    assert attention_loss(S, M, torch.tensor([0., 1.])).item() == pytest.approx(math.sqrt(13/9), abs=1e-6)
    # not a per-pixel mean: doubling the map size (same errors repeated) multiplies the loss by √2
    S2, M2 = S.repeat(1, 1, 2), M.repeat(1, 1, 2)
    assert attention_loss(S2, M2).item() == pytest.approx(math.sqrt(2) * attention_loss(S, M).item(), rel=1e-6)


def _batch(B=4, size=(64, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = attention_size(*size)
    x = torch.randn(B, 3, *size, generator=g)
    pids = torch.arange(B) // 2
    t = {k: (torch.rand(B, h, w, generator=g) > 0.5).float() for k in ('whole', 'upper', 'bottom')}
    t['has_mask'] = torch.ones(B)
    return x, pids, t


def _attention_conv_grads(variant, loss_terms='mask'):
    "Gradient norms of each spatial conv after backpropagating only the mask-loss terms (or, with 'all', everything) of `variant`."
    torch.manual_seed(0)
    cfg = _cfg(backbone='resnet_mini', pretrained=False)
    o = _opts(variant)
    net = build_mmga(cfg, o, n_classes=4).train()
    x, pids, t = _batch()
    terms = [tm for tm in mmga_terms(cfg, o) if loss_terms == 'all' or tm.name.startswith('att')]
    if not terms: return None
    WeightedLoss(terms)(net(x), pids, t).backward()
    out = {}
    for k in ('att1',) + tuple(f'att2.{b}' for b in ('whole', 'upper', 'bottom')):
        try: mod = net.get_submodule(k)
        except AttributeError: continue
        out[k] = sum(float(p.grad.abs().sum()) if p.grad is not None else 0. for p in mod.spatial.parameters())
        if loss_terms == 'mask' and k.startswith('att2'):   # the masks guide S: nothing reaches module 2's channel attention
            assert all(p.grad is None or not p.grad.any() for p in mod.channel.parameters()), k
    if loss_terms == 'mask': assert all(p.grad is None for p in net.reduce.parameters())   # ... or the heads
    return out


def test_mask_loss_gradients_reach_only_supervised_attention():
    assert _attention_conv_grads('baseline') is None and _attention_conv_grads('att') is None   # no mask-loss term at all
    g = _attention_conv_grads('wmga')
    assert set(g) == {'att1', 'att2.whole'} and all(v > 0 for v in g.values())
    for variant in ('dmga', 'mmga'):
        g = _attention_conv_grads(variant)
        assert set(g) == {'att1', 'att2.whole', 'att2.upper', 'att2.bottom'} and all(v > 0 for v in g.values()), (variant, g)
    # Baseline+Att's attention is trained, but by the identity losses only
    g = _attention_conv_grads('att', loss_terms='all')
    assert set(g) == {'att1', 'att2.whole'} and all(v > 0 for v in g.values())


def test_baseline_att_has_no_attention_loss_term():
    names = {v: [t.name for t in mmga_terms(_cfg(), MMGAOptions(v))] for v in VARIANTS}
    assert names['att'] == ['ce_whole', 'triplet'] and names['baseline'] == ['ce_whole', 'triplet']
    assert names['wmga'] == ['ce_whole', 'triplet', 'att1_whole', 'att2_whole']
    assert names['dmga'] == names['mmga'] == ['ce_whole', 'ce_local', 'triplet', 'att1_whole', 'att2_whole', 'att2_upper', 'att2_bottom']
    assert all(t.kwargs.get('label_smoothing', 0) == 0 for t in mmga_terms(_cfg(), MMGAOptions()) if t.name.startswith('ce'))
    assert mmga_sample(_cfg(), MMGAOptions('att')) is None and mmga_sample(_cfg(), MMGAOptions('baseline')) is None


@pytest.fixture(scope='module')
def smoke():
    return get_dataset('synthreid', size='smoke', progress=False)


def test_features_need_no_masks(smoke):
    cfg = _cfg(backbone='resnet_mini', pretrained=False, height=128, width=64)
    o = MMGAOptions('mmga', dims=SMALL_DIMS)
    assert MMGA.carries(cfg, o, train=False) == ('image',)
    assert set(MMGA.carries(cfg, o, train=True)) == {'image', 'part_map', 'keypoints'}
    recipe = mmga_sample(cfg, o)
    dl = eval_dataloader(smoke.query[:6], cfg, batch_size=3, extras=None, recipe=recipe)   # no extras: no masks anywhere
    net = build_mmga(cfg, o, n_classes=smoke.num_train_pids)
    f, p, c = extract_features(net, dl, flip=True, device='cpu', progress=False)
    assert f.shape == (6, sum(SMALL_DIMS)) and torch.isfinite(f).all()
    # the training items of the same recipe do carry the targets, at the attention maps' size
    ds = ReIDImages(smoke.train[:2], ReIDTransform(cfg.img_size, train=True), extras=mask_extras(smoke, 'ground_truth'),
                    recipe=recipe, with_targets=True)
    x, pid, t = ds[0]
    assert x.shape == (3, 128, 64) and t['whole'].shape == attention_size(128, 64) and t['has_mask'] == 1
    assert 0 < t['upper'].sum() < t['whole'].sum() + 1e-5


def test_empty_mask_is_a_counted_fallback(smoke):
    cfg = _cfg(backbone='resnet_mini', height=128, width=64, mask_source='torchvision')
    o = MMGAOptions('mmga')
    recipe = mmga_sample(cfg, o)
    assert recipe.target_needs == ('mask', 'keypoints')
    whole_crop = lambda r: dict(mask=np.ones((128, 64), np.uint8), keypoints=np.zeros((17, 3), np.float32))  # a masker's no-person fallback
    from PIL import Image
    _, t = apply_recipe(recipe, ReIDTransform(cfg.img_size, train=True), Image.new('RGB', (64, 128)), whole_crop(None), with_targets=True)
    assert t['has_mask'] == 0 and t['whole'].sum() == 0
    records = smoke.train[:5]
    gt = mask_extras(smoke, 'ground_truth')
    mixed = lambda r: whole_crop(r) if r is records[1] else dict(mask=gt(r)['mask'], keypoints=gt(r)['keypoints'])
    summary = mask_target_summary(records, mixed, cfg, o)
    assert summary['splits'] == 5 and summary['no_person'] == 1


def test_bad_part_label_set_names_missing_parts():
    labels = ['background', 'hat', 'hair', 'upper_clothes', 'pants']
    with pytest.raises(ValueError, match=r"lacks \['face', 'arms', 'lower_clothes', 'legs', 'shoes'\]"):
        part_groups(labels)
    with pytest.raises(ValueError, match="lacks"):
        parse_options(MMGAOptions, {'part_labels': labels}, 'mmga')
    o = parse_options(MMGAOptions, {'part_labels': labels, 'upper_parts': ['hat', 'hair', 'upper_clothes'], 'bottom_parts': ['pants']}, 'mmga')
    pm = torch.tensor([[0, 1, 3], [4, 4, 0]], dtype=torch.uint8)
    t = mmga_targets(dict(part_map=pm), size=(2, 3), groups=o.groups)
    assert t['upper'].sum() == 2 and t['bottom'].sum() == 2 and t['whole'].sum() == 4


def test_mask_of_wrong_size_names_the_image(smoke):
    cfg = _cfg(backbone='resnet_mini', height=128, width=64)
    r = smoke.train[0]
    bad = lambda rec: dict(part_map=np.zeros((10, 10), np.uint8), keypoints=np.zeros((17, 3), np.float32))
    ds = ReIDImages([r], ReIDTransform(cfg.img_size, train=True), extras=bad, recipe=mmga_sample(cfg, MMGAOptions()), with_targets=True)
    with pytest.raises(ValueError, match=r.path.name):
        ds[0]


def test_mask_of_wrong_size_is_refused(smoke):
    cfg = _cfg(backbone='resnet_mini', height=128, width=64)
    bad = lambda rec: dict(part_map=np.zeros((10, 10), np.uint8), keypoints=np.zeros((17, 3), np.float32))
    ds = ReIDImages(smoke.train[:1], ReIDTransform(cfg.img_size, train=True), extras=bad, recipe=mmga_sample(cfg, MMGAOptions()), with_targets=True)
    with pytest.raises(ValueError, match='does not match its image'):
        ds[0]


def test_runs_and_options():
    names = sorted(MMGA.runs)
    assert names == sorted(f'{s}-{t}' for s in ('mmga-baseline', 'mmga-att', 'mmga-wmga', 'mmga-dmga', 'mmga') for t in ('market', 'duke'))
    paper = MMGA.runs['mmga-market']['per_preset']['paper']
    assert (paper['P'], paper['K'], paper['height'], paper['width'], paper['opt'], paper['lr'], paper['backbone_lr_mult'], paper['epochs']) == \
        (24, 4, 384, 128, 'sgd', 0.1, 0.5, 900)
    with pytest.raises(ValueError, match='last stride 1'):
        build_mmga(_cfg(last_stride=2), MMGAOptions(), 4)
