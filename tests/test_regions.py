"""Region splitting (reid_nb.regions): known geometry, brute-force comparisons, fallbacks, SynthReID ground truth."""
import numpy as np
import pytest
import torch
from reid_nb.data.synth import generate_synthreid, load_synth_annotations, load_part_map, PART
from reid_nb.masking import GroundTruthMasker
from reid_nb.regions import (region_masks, part_masks, body_part_masks, middle_line_masks, resize_mask, pedestrian_region,
                             space_alignment, region_summary, body_line, CutLine, SHOULDERS, HIPS, SHOULDER_FRAC, HIP_FRAC,
                             UPPER_PARTS, BOTTOM_PARTS, PARTS, middle_line_error, show_middle_vs_parts)


def person(h=128, w=64, top=10, bottom=120, left=16, right=48):
    m = np.zeros((h, w), bool); m[top:bottom, left:right] = True
    return m


def kps(ls, rs, lh, rh, v=2):
    k = np.zeros((17, 3), np.float32)
    for i, p in zip((5, 6, 11, 12), (ls, rs, lh, rh)): k[i] = (*p, v)
    return k


def brute_regions(mask, k):
    "Per-pixel reference: the two-point form of each line, no slopes shared with the implementation."
    h, w = mask.shape; out = {n: np.zeros_like(mask) for n in ('head', 'upper', 'lower')}
    (xa, ya), (xb, yb) = k[5, :2], k[6, :2]; (xc, yc), (xd, yd) = k[11, :2], k[12, :2]
    for r in range(h):
        for c in range(w):
            if not mask[r, c]: continue
            ys = (ya*(xb - c) + yb*(c - xa))/(xb - xa)      # y of the shoulder line at column c
            yh = (yc*(xd - c) + yd*(c - xc))/(xd - xc)
            if r < ys: out['head'][r, c] = True
            elif r < yh: out['upper'][r, c] = True
            else: out['lower'][r, c] = True
    return out


def test_known_areas_horizontal_lines():
    m = person()                                         # rows 10..119, columns 16..47: 110 x 32
    s = region_masks(m, kps((16, 30), (47, 30), (20, 70), (44, 70)))
    assert s.areas() == dict(head=20*32, upper=40*32, lower=50*32) and s.fallbacks == ()
    assert s['head'][29].sum() == 32 and s['upper'][30].sum() == 32 and s['lower'][70].sum() == 32


def test_tilted_lines_match_brute_force():
    rng = np.random.default_rng(0)
    m = person(); checked = 0
    for _ in range(40):
        k = kps((rng.uniform(10, 25), rng.uniform(20, 40)), (rng.uniform(40, 55), rng.uniform(20, 40)),
                (rng.uniform(10, 25), rng.uniform(60, 80)), (rng.uniform(40, 55), rng.uniform(60, 80)))
        s = region_masks(m, k)
        if s.fallbacks: continue                         # tilt beyond 30 degrees: tested elsewhere
        ref = brute_regions(m, k)
        for n in ref: np.testing.assert_array_equal(s[n], ref[n], err_msg=n)
        checked += 1
    assert checked >= 30


def test_regions_partition_the_mask():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = rng.random((64, 32)) > 0.4
        k = np.concatenate([rng.uniform(0, 32, (17, 1)), rng.uniform(0, 64, (17, 1)), rng.integers(0, 3, (17, 1))], 1)
        s = region_masks(m, k)
        np.testing.assert_array_equal(s.stack().sum(0), m.astype(int))
        p = part_masks(m, k)
        np.testing.assert_array_equal(p.stack().sum(0), m.astype(int))
        assert p.names == PARTS


def test_low_visibility_fallbacks():
    m = person()
    s = region_masks(m, kps((16, 30), (47, 30), (20, 70), (44, 70), v=0))
    assert s.fallbacks == ('shoulders_proportion', 'hips_proportion')
    assert s.lines['shoulders'].y0 == pytest.approx(10 + SHOULDER_FRAC*110) and s.lines['hips'].y0 == pytest.approx(10 + HIP_FRAC*110)
    k = kps((16, 30), (47, 30), (20, 70), (44, 70)); k[6, 2] = 0; k[11, 2] = 1      # v=1 (occluded, annotated) is usable
    s = region_masks(m, k)
    assert s.fallbacks == ('shoulders_one_keypoint',) and s.areas()['head'] == 20*32
    assert region_masks(m, k, min_visibility=2).fallbacks == ('shoulders_one_keypoint', 'hips_one_keypoint')
    side = kps((30, 28), (32, 34), (30, 70), (31, 72))  # side view: the pairs nearly coincide -> steep "lines"
    s = region_masks(m, side)
    assert s.fallbacks == ('shoulders_tilt', 'hips_tilt') and s.lines['shoulders'] == CutLine(31, 31, 0.0, 'tilt')
    summ = region_summary([region_masks(m, side), region_masks(m, kps((16, 30), (47, 30), (20, 70), (44, 70)))])
    assert summ == dict(splits=2, no_fallback=1, shoulders_tilt=1, hips_tilt=1)


def test_coincident_keypoints_give_a_finite_horizontal_line():
    "Keypoint R-CNN quantises keypoints to a 56x56 grid: both shoulders (or hips) can land on the same point."
    m = person()                                         # rows 10..119, columns 16..47
    k = kps((31, 30), (31, 30), (20, 70), (44, 70))
    line = body_line(k, SHOULDERS, m, SHOULDER_FRAC)
    assert line == CutLine(31, 30, 0.0, 'coincident') and np.isfinite(line.y_at(np.arange(64))).all()
    s = region_masks(m, k)
    assert s.fallbacks == ('shoulders_coincident',)
    assert s.areas() == dict(head=20*32, upper=40*32, lower=50*32)       # not every pixel "head"
    s = region_masks(m, kps((16, 30), (47, 30), (30, 70), (30, 70)))     # coincident hips
    assert s.fallbacks == ('hips_coincident',) and s.areas()['lower'] == 50*32
    assert region_summary([s])['hips_coincident'] == 1
    nan = kps((np.nan, 30), (47, 30), (20, 70), (44, 70))                # a non-finite keypoint is unusable
    assert region_masks(m, nan).lines['shoulders'] == CutLine(47, 30, 0.0, 'one_keypoint')


def test_bad_inputs_do_not_crash():
    empty = np.zeros((128, 64), bool)
    s = region_masks(empty, np.zeros((17, 3)))
    assert all(v.sum() == 0 for v in s.masks.values()) and s.lines['hips'].y0 == pytest.approx(64)
    assert part_masks(empty, np.zeros((17, 3))).stack().sum() == 0
    m = person()
    out = region_masks(m, kps((16, 30), (47, 30), (20, 300), (44, 300)))     # hips below the crop
    assert out.areas()['lower'] == 0 and out.areas()['upper'] == 90*32
    crossed = region_masks(m, kps((16, 80), (47, 80), (20, 30), (44, 30)))   # hips above shoulders
    assert 'crossed_lines' in crossed.fallbacks
    assert body_part_masks(mask=empty).areas() == dict(whole=0, upper=0, bottom=0)
    with pytest.raises(ValueError, match='neither'): body_part_masks()


def test_middle_line_and_mask_middle():
    m = person(top=40, bottom=128)
    assert middle_line_masks(m).areas()['upper'] == 24*32
    assert middle_line_masks(m, of='mask').areas()['upper'] == 44*32
    with pytest.raises(ValueError, match='image'): middle_line_masks(m, of='crop')


def test_middle_line_error_against_pixel_count():
    "A person shifted down: DMGA's middle row cuts the torso; the error is the hip line's distance and the wrongly cut share."
    pm = np.zeros((128, 64), np.uint8); pm[40:80, 20:44] = PART['upper_clothes']; pm[80:126, 20:44] = PART['lower_clothes']
    k = kps((20, 42), (43, 42), (24, 80), (40, 80))
    gap, wrong = middle_line_error(pm, k)
    rows = np.arange(128)[:, None]
    upper_by_middle, upper_by_parts = (pm > 0) & (rows < 64), pm == PART['upper_clothes']
    assert gap == 80 - 64 and wrong == pytest.approx((upper_by_middle ^ upper_by_parts).sum()/(pm > 0).sum())
    assert wrong == pytest.approx(16*24/(86*24))                 # rows 64-79 of the torso fall below the middle
    assert middle_line_error(np.zeros((128, 64), np.uint8), k) == (0.0, 0.0)
    import matplotlib; matplotlib.use('Agg')
    fig = show_middle_vs_parts([np.zeros((128, 64, 3), np.uint8)], [pm], [k])
    assert 'hips 16 px' in fig.axes[0].get_title() and len(fig.legends) == 1


def test_resize_mask_is_block_average_when_divisible():
    rng = np.random.default_rng(2)
    m = rng.random((384, 128)) > 0.5
    ref = m.reshape(24, 16, 8, 16).mean((1, 3))
    np.testing.assert_allclose(resize_mask(m).numpy(), ref, atol=1e-6)
    np.testing.assert_array_equal(resize_mask(m, binary=True).numpy(), (ref >= 0.5).astype(np.float32))
    b = torch.from_numpy(np.stack([m, ~m]))[None]                            # (1, 2, H, W)
    r = resize_mask(b, (12, 4)); assert r.shape == (1, 2, 12, 4)
    np.testing.assert_allclose((r[0, 0] + r[0, 1]).numpy(), 1, atol=1e-6)


def test_pedestrian_region_on_original_image():
    img = np.arange(128*64*3, dtype=np.int64).reshape(128, 64, 3).astype(np.uint8)
    m = person()
    out = pedestrian_region(img, m)
    np.testing.assert_array_equal(out[m], img[m]); assert (out[~m] == 0).all()
    t = torch.rand(3, 128, 64); np.testing.assert_allclose(pedestrian_region(t, m).numpy(), t.numpy()*m, rtol=0)
    sa = space_alignment(img, m, kps((16, 30), (47, 30), (20, 70), (44, 70)))
    np.testing.assert_array_equal(sa['head'] + sa['upper'] + sa['lower'], sa['global'])


@pytest.fixture(scope='module')
def synth():
    return generate_synthreid(size='smoke', seed=0, progress=False)   # under the session's $REID_NB_DATA: shared by test files


def test_on_synthreid_ground_truth(synth):
    ann = load_synth_annotations(synth, 'query'); stems = sorted(ann)[:40]
    res = GroundTruthMasker()(None, [synth/'query'/f'{s}.jpg' for s in stems])
    fall = []
    for s, r in zip(stems, res):
        pm = load_part_map(synth, 'query', s)
        if not r.found: continue
        reg = region_masks(r.mask, r.keypoints); fall.append(reg)
        np.testing.assert_array_equal(reg.stack().sum(0), r.mask.astype(int))
        bp = body_part_masks(part_map=pm, keypoints=r.keypoints)
        np.testing.assert_array_equal(bp['upper'] | bp['bottom'], pm > 0)
        assert not (bp['upper'] & bp['bottom']).any()
        assert bp['upper'][np.isin(pm, [PART[p] for p in UPPER_PARTS])].all()
        assert bp['bottom'][np.isin(pm, [PART[p] for p in BOTTOM_PARTS])].all()
        # faces lie in the head region, shoes in the lower region, for un-occluded front/back views
        if r.keypoints[[5, 6, 11, 12], 2].min() == 2 and ann[s]['facing'] in ('front', 'back'):
            face, shoes = pm == PART['face'], pm == PART['shoes']
            if face.sum() > 5: assert reg['head'][face].mean() > 0.9
            if shoes.sum() > 5: assert reg['lower'][shoes].mean() > 0.9
    assert region_summary(fall)['splits'] == len(fall) >= 30
