"""MGRAN (reid_nb.methods.mgran): view geometry with known answers, one shared trunk, the −GF and PL variants, masks at test
time, fallbacks, bad input, and a run through the shared runner."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF
from reid_nb.core import get_preset
from reid_nb.data.pipeline import ReIDTransform, apply_recipe
from reid_nb.regions import PARTS, SHOULDER_FRAC, HIP_FRAC
from reid_nb.masking import MaskResult, GroundTruthMasker, extract_masks, fallback_result
from reid_nb.methods.registry import METHODS, get_method
from reid_nb.methods.mgran import MGRAN, MGRANOptions, MGRANNet, SpaceAlignment, mgran_recipe, build_mgran, mgran_terms, mgran_descriptors, view_names, region_view, require_masks, store_extras, alignment_fallbacks, mask_results, MGRAN_RUNS, SMOKE_RECIPE

COLOURS = {'head': (250, 0, 0), 'upper': (0, 250, 0), 'lower': (0, 0, 250)}


@pytest.fixture(autouse=True)
def mgran_registered():
    added = 'mgran' not in METHODS
    if added: METHODS['mgran'] = 'reid_nb.methods.mgran:MGRAN'
    yield
    if added: del METHODS['mgran']


def person(scale=1, background=90):
    "A body in a (128·s)×(64·s) frame: head rows 10–29, upper 30–69, lower 70–119 (×s), columns 16–47 (×s); shoulders row 30, hips row 70."
    s = scale
    img = torch.full((3, 128*s, 64*s), background, dtype=torch.uint8)
    for (r0, r1), c in zip(((10, 30), (30, 70), (70, 120)), COLOURS.values()):
        img[:, r0*s:r1*s, 16*s:48*s] = torch.tensor(c, dtype=torch.uint8)[:, None, None]
    mask = torch.zeros(128*s, 64*s, dtype=torch.uint8); mask[10*s:120*s, 16*s:48*s] = 1
    k = torch.zeros(17, 3)
    for i, (x, y) in zip((5, 6, 11, 12), ((44, 30), (20, 30), (40, 70), (24, 70))): k[i] = torch.tensor([x*s, y*s, 2.])
    return img, mask, k


def views(opts, img, mask, k, size=(128, 64), train=False, **tkw):
    x, t = apply_recipe(mgran_recipe(None, opts), ReIDTransform(size, train=train, **tkw), img, dict(mask=mask, keypoints=k))
    assert t is None
    return x


def solid(c, size=(128, 64)): return torch.tensor(c, dtype=torch.uint8)[:, None, None].expand(3, *size)


# ---------------------------------------------------------------- geometry with known answers
@pytest.mark.parametrize('scale', [1, 2])
def test_region_views_of_a_known_person(scale):
    "From an original of the input size and of twice it: each region view is its region's colour, the global view is masked."
    tr = ReIDTransform((128, 64), train=False)
    img, mask, k = person(scale)
    x = views(MGRANOptions(), img, mask, k)
    assert x.shape == (4, 3, 128, 64)
    for i, c in enumerate(COLOURS.values(), 1):
        same = torch.isclose(x[i], tr.normalise(solid(c)), atol=1e-5).all(0).float().mean().item()
        # at the input size: exactly; from twice the size, the resize blends the row along each cut and the columns along
        # the silhouette, and the crop magnifies them (the head's 20 rows become 128): its own colour still dominates
        assert same == 1.0 if scale == 1 else same > 0.7, (i, same)
    torch.testing.assert_close(x[0], tr.normalise(TF.resize(img*mask, [128, 64], antialias=True)))
    black = tr.normalise(torch.zeros(3, 1, 1, dtype=torch.uint8))
    torch.testing.assert_close(x[0][:, :4], black.expand(3, 4, 64))                   # above the person: masked out


def test_full_frame_and_keep_aspect_views():
    tr = ReIDTransform((128, 64), train=False)
    img, mask, k = person()
    x = views(MGRANOptions(region_view='full_frame'), img, mask, k)
    for i, ((r0, r1), c) in enumerate(zip(((10, 30), (30, 70), (70, 120)), COLOURS.values()), 1):
        want = torch.zeros(3, 128, 64, dtype=torch.uint8); want[:, r0:r1, 16:48] = solid(c, (r1 - r0, 32))
        torch.testing.assert_close(x[i], tr.normalise(want))
    x = views(MGRANOptions(crop_fit='keep_aspect'), img, mask, k)
    # head box 20×32 → ×2 = 40×64 centred (rows 44–83); upper 40×32 → 80×64 (rows 24–103); lower 50×32 → 100×64 (rows 14–113)
    for i, (h, c) in enumerate(zip((40, 80, 100), COLOURS.values()), 1):
        t = (128 - h)//2
        want = torch.zeros(3, 128, 64, dtype=torch.uint8); want[:, t:t + h] = solid(c, (h, 64))
        torch.testing.assert_close(x[i], tr.normalise(want))


def test_pedestrian_view_is_masked_before_resizing():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(1, 256, (3, 256, 128), dtype=torch.uint8, generator=g)
    mask = torch.zeros(256, 128, dtype=torch.uint8); mask[21:237, 33:97] = 1
    tr = ReIDTransform((128, 64), train=False)
    x = views(MGRANOptions(), img, mask, torch.zeros(17, 3))
    torch.testing.assert_close(x[0], tr.normalise(TF.resize(img*mask, [128, 64], antialias=True)))
    after = TF.resize(img, [128, 64], antialias=True)*TF.resize(mask[None], [128, 64], interpolation=TF.InterpolationMode.NEAREST)
    assert not torch.allclose(x[0], tr.normalise(after))


def test_flipped_training_sample_gives_flipped_views():
    "The cut follows the augmented image: with a certain flip (keypoints swapped), every view is the mirror image of the unflipped one."
    img, mask, k = person()
    plain = views(MGRANOptions(), img, mask, k)
    torch.manual_seed(0)
    flipped = views(MGRANOptions(), img, mask, k, train=True, flip_p=1.0, pad=0, erase_p=0.0)
    torch.testing.assert_close(flipped, torch.flip(plain, dims=[-1]))


def test_part_level_views():
    "MGRAN-PL: seven views in order; on a stick figure each part's view is dominated by that part's colour."
    colours = dict(head=(250, 0, 0), torso=(0, 250, 0), left_arm=(250, 250, 0), right_arm=(0, 250, 250),
                   left_leg=(0, 0, 250), right_leg=(250, 0, 250))
    boxes = dict(head=(8, 24, 26, 38), torso=(24, 70, 20, 44), left_arm=(26, 66, 45, 52), right_arm=(26, 66, 12, 19),
                 left_leg=(70, 120, 33, 44), right_leg=(70, 120, 20, 31))
    img = torch.zeros(3, 128, 64, dtype=torch.uint8); mask = torch.zeros(128, 64, dtype=torch.uint8)
    for n, (r0, r1, c0, c1) in boxes.items(): img[:, r0:r1, c0:c1] = solid(colours[n], (r1 - r0, c1 - c0)); mask[r0:r1, c0:c1] = 1
    k = torch.zeros(17, 3)
    for i, xy in {0: (32, 14), 5: (42, 24), 6: (22, 24), 7: (48, 45), 8: (15, 45), 9: (48, 64), 10: (15, 64), 11: (40, 70),
                  12: (24, 70), 13: (38, 95), 14: (26, 95), 15: (38, 118), 16: (26, 118)}.items(): k[i] = torch.tensor([*xy, 2.])
    opts = MGRANOptions(alignment='part')
    assert view_names(opts) == ('global',) + PARTS
    x = views(opts, img, mask, k)
    assert x.shape == (7, 3, 128, 64)
    v = SpaceAlignment(alignment='part')(dict(image=img, mask=mask, keypoints=k))
    palette = torch.tensor(list(colours.values()), dtype=torch.uint8)
    for n in PARTS:
        hits = (v[n][None] == palette[:, :, None, None]).all(1).sum((1, 2))
        assert list(colours)[int(hits.argmax())] == n, (n, hits)
    assert views(MGRANOptions(alignment='part', global_feature=False), img, mask, k).shape == (6, 3, 128, 64)


# ---------------------------------------------------------------- one trunk
def _cfg(**kw): return get_preset('smoke', **{**dict(method='mgran', device='cpu', pretrained=False), **kw})


def test_one_set_of_weights_run_as_one_batch_and_gradients_from_all_views_accumulate():
    torch.manual_seed(0)
    net = build_mgran(_cfg(), MGRANOptions(), 10)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in net.backbone.parameters())
    calls = []
    net.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    x = torch.randn(3, 4, 3, 64, 32)
    net.train(); out = net(x)
    assert calls == [(12, 3, 64, 32)], 'the views must go through the trunk as one batch of B·V images'
    assert out.feats['F'].shape == (3, 4*512)
    torch.testing.assert_close(out.feats['F'].view(3, 4, 512)[:, 2], out.feats['upper'])
    # every view alone moves the shared weights; together, by exactly the sum (BatchNorm in eval: images independent)
    net.eval()
    sep = torch.stack([F.normalize(net.backbone(x[:, v]).mean((2, 3)), dim=-1) for v in range(4)], 1)
    torch.testing.assert_close(net(x), sep.flatten(1), rtol=1e-4, atol=1e-5)
    grads = {}
    for v in range(4):
        net.zero_grad(); (net.view_features(x)[:, v]*torch.linspace(-1, 1, 512)).sum().backward()
        grads[v] = {n: p.grad.clone() for n, p in net.named_parameters()}
        assert grads[v]['backbone.conv1.weight'].abs().sum() > 0
    net.zero_grad(); (net.view_features(x)*torch.linspace(-1, 1, 512)).sum().backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.grad, sum(g[n] for g in grads.values()), rtol=1e-3, atol=1e-5)


def test_gf_descriptor_dimension_and_test_time_drop():
    cfg = _cfg()
    x = lambda v: torch.randn(2, v, 3, 64, 32)
    full, gf = build_mgran(cfg, MGRANOptions(), 10).eval(), build_mgran(cfg, MGRANOptions(global_feature=False), 10).eval()
    f, g = full(x(4)), gf(x(3))
    assert f.shape == (2, 4*512) and g.shape == (2, 3*512)
    drop = mgran_descriptors(cfg, MGRANOptions())['without f_g']
    assert drop(f).shape == g.shape
    torch.testing.assert_close(drop(f), f[:, 512:])
    assert mgran_descriptors(cfg, MGRANOptions(global_feature=False)) == {}
    assert build_mgran(cfg, MGRANOptions(alignment='part'), 10).eval()(x(7)).shape == (2, 7*512)


def test_loss_is_msml_only_unless_asked():
    cfg = _cfg()
    assert [(t.name, t.reads, t.kwargs) for t in mgran_terms(cfg, MGRANOptions())] == [('msml', ('feats.F', 'pids'), {'margin': 0.6})]
    assert [t.name for t in mgran_terms(cfg, MGRANOptions(msml_on='branches', global_feature=False))] == ['msml_head', 'msml_upper', 'msml_lower']
    net = build_mgran(cfg, MGRANOptions(id_loss=True), 7).train()
    assert net(torch.randn(6, 4, 3, 64, 32)).logits['id'].shape == (6, 7)


# ---------------------------------------------------------------- bad input and fallbacks
def test_unknown_region_option_lists_the_valid_ones():
    from reid_nb.runner import validate_config
    with pytest.raises(ValueError, match="region_view must be one of 'crop', 'full_frame'; got 'box'"):
        validate_config(_cfg(method_options={'region_view': 'box'}))
    with pytest.raises(ValueError, match="alignment must be one of 'region', 'part'; got 'pixel'"):
        validate_config(_cfg(method_options={'alignment': 'pixel'}))
    with pytest.raises(ValueError, match="crop_fit must be one of 'stretch', 'keep_aspect'"):
        validate_config(_cfg(method_options={'crop_fit': 'pad'}))
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['region'\] for method 'mgran'. Valid options: alignment"):
        validate_config(_cfg(method_options={'region': 'crop'}))
    with pytest.raises(ValueError, match=r'expects views \(B, V=4, 3, H, W\)'):
        build_mgran(_cfg(), MGRANOptions(), 5)(torch.randn(2, 3, 64, 32))


def test_crossed_and_degenerate_lines_fall_back_and_are_counted():
    img, mask, k = person()
    crossed = k.clone(); crossed[[11, 12], 1] = 20.                        # hips above the shoulders
    coincident = k.clone(); coincident[6, :2] = coincident[5, :2]           # both shoulders on one point
    split = SpaceAlignment().split(mask, crossed)
    assert 'crossed_lines' in split.fallbacks
    top, height = 10, 110                                                  # the proportional lines of the mask's extent
    assert split.lines['shoulders'].y0 == pytest.approx(top + SHOULDER_FRAC*height)
    assert split.lines['hips'].y0 == pytest.approx(top + HIP_FRAC*height)
    x = views(MGRANOptions(), img, mask, crossed)                           # still four views, none empty
    assert x.shape == (4, 3, 128, 64) and all((x[i] != x[i].min()).any() for i in range(4))
    m = mask.numpy() > 0
    res = [MaskResult(m, k.numpy(), np.ones(17), 1, None, True, 1), MaskResult(m, crossed.numpy(), np.ones(17), 1, None, True, 1),
           MaskResult(m, coincident.numpy(), np.ones(17), 1, None, True, 3, ('several_persons',)), fallback_result(128, 64)]
    fb = alignment_fallbacks(res)
    assert (fb['images'], fb['crossed_lines'], fb['shoulders_coincident'], fb['several_persons'], fb['no_person']) == (4, 1, 1, 1, 1)
    assert fb['no_fallback'] == 1 and fb['hips_proportion'] == 1 and fb['empty_head'] == 0


@pytest.fixture(scope='module')
def smoke_ds():
    from reid_nb.data.registry import get_dataset
    return get_dataset('synthreid', size='smoke', progress=False)


def test_a_store_missing_test_images_is_refused_with_the_count_and_the_command(smoke_ds, tmp_path):
    ds = smoke_ds
    have = ds.train + ds.query[3:] + ds.gallery + ds.gt_bbox
    store = extract_masks(GroundTruthMasker(), [r.path for r in have], ds.name, root=tmp_path/'store', progress=False)
    n = len(ds.query + ds.gallery + ds.gt_bbox)
    with pytest.raises(ValueError, match=rf"lacks 3 of the {n} query and gallery images.*never runs them unmasked(.|\n)*"
                                         r"extract_masks\(build_masker\('torchvision'\)"):
        store_extras(store, ds, 'torchvision')
    with pytest.raises(ValueError, match='lacks 3 of the'):
        mask_results(ds, store)
    extras = store_extras(extract_masks(GroundTruthMasker(), [r.path for r in ds.query[:3]], ds.name, root=tmp_path/'store',
                                        progress=False), ds)
    e = extras(ds.query[0])
    assert e['mask'].shape == (128, 64) and e['keypoints'].shape == (17, 3)


def test_ground_truth_fallback_counts_on_synthreid(smoke_ds):
    res = mask_results(smoke_ds, 'ground_truth', smoke_ds.query)
    fb = alignment_fallbacks(res)
    assert fb['images'] == len(smoke_ds.query) and fb['found'] + fb['no_person'] == fb['images']
    assert 0 < fb['no_fallback'] <= fb['images']


# ---------------------------------------------------------------- the method and its runs
def test_runs_are_what_the_tables_need():
    from reid_nb.tables import runs_for_tables
    ids = ['MGRAN/table2_market', 'MGRAN/table3_duke', 'MGRAN/table4_cuhk03', 'MGRAN/table5_multi_feature_fusion',
           'MGRAN/table6_region_level_alignment']
    assert runs_for_tables(ids) == sorted(MGRAN_RUNS)
    assert all(s['K'] == 3 and s['method'] == 'mgran' for s in MGRAN_RUNS.values())
    assert MGRAN_RUNS['mgran-pl-cuhk03-detected']['method_options'] == {'alignment': 'part'}
    assert get_method('mgran') is MGRAN and MGRAN.flip_test is False


def test_a_smoke_run_masks_train_query_and_gallery(tmp_path):
    from reid_nb.runner import Run
    tiny = dict(overrides=dict(n_train_ids=12, n_test_ids=12, n_distractors=10, n_junk=5))   # a smaller smoke analog
    run = Run(_cfg(**{**SMOKE_RECIPE, 'epochs': 1, 'height': 32, 'width': 16, 'dataset_options': tiny}), tmp_path, preset='smoke',
              progress=False)
    run.load_data(); learn = run.build()
    assert run.mask_source == 'ground_truth' and run.test_extras is not None
    assert MGRAN.carries(run.cfg, run.options, train=False) == ('image', 'mask', 'keypoints')
    xb, yb = learn.dls.train.one_batch()
    assert xb.shape == (12, 4, 3, 32, 16) and len(set(yb.tolist())) == 4
    qb = next(iter(run.query_dl))[0]
    assert qb.shape[1:] == (4, 3, 32, 16)
    run.train(); run.evaluate(); rec = run.record()
    assert list(rec.results) == ['single query', 'multi query', 'without f_g']
    assert [t['name'] for t in rec.recipe['terms']] == ['msml'] and rec.recipe['flip_test'] is False
    assert 'msml' in learn.loss_parts.history
