"""Masking backends, bad-input fallbacks and the resumable mask store (reid_nb.masking)."""
import copy, json, pickle, shutil, sys, types, warnings
from collections import namedtuple
from pathlib import Path
import numpy as np
import pytest
import torch
from torch import nn
from reid_nb.data.synth import generate_synthreid, load_synth_annotations
from reid_nb.data.pipeline import read_image, ReIDImages, ReIDTransform
from reid_nb.data.market import Record
from reid_nb.masking import (ISSUES, MaskResult, GroundTruthMasker, TorchvisionMasker, Detectron2Masker, MaskStore,
                             detections_from_torchvision, detections_from_detectron2, combine_detections, detectron2_inputs,
                             extract_masks, mask_summary, light_mra_model, native_size, select_pedestrian, item_key,
                             import_detectron2, Masker, fallback_result, state_dict_digest, D2_MASK_CONFIG,
                             D2_KEYPOINT_CONFIG)

torch.set_num_threads(1)
H, W = 128, 64


@pytest.fixture(scope='module')
def synth():
    return generate_synthreid(size='smoke', seed=0, progress=False)   # under the session's $REID_NB_DATA: shared by test files


@pytest.fixture(scope='module')
def paths(synth):
    return [synth/'query'/f'{s}.jpg' for s in sorted(load_synth_annotations(synth, 'query'))[:12]]


@pytest.fixture(scope='module')
def light(paths):
    return TorchvisionMasker(light_mra_model(seed=0), None, 'random-seed0')


# ---- one scene, described in each backend's output format --------------------------------------------------------
def scene():
    "Three person detections (a centred one, an edge neighbour with a higher score, a weak one) and a dog."
    masks = np.zeros((4, H, W), bool)
    masks[0, 10:120, 12:52] = True; masks[1, 0:40, 0:10] = True; masks[2, 60:80, 20:40] = True; masks[3, 5:15, 5:15] = True
    boxes = np.array([[12, 10, 52, 120], [0, 0, 10, 40], [20, 60, 40, 80], [5, 5, 15, 15]], np.float32)
    scores = np.array([0.8, 0.95, 0.3, 0.99], np.float32)
    kps = np.zeros((4, 17, 2), np.float32); kps[..., 0] = np.linspace(15, 50, 17); kps[..., 1] = np.linspace(15, 115, 17)
    kps[0, 16] = (70, 110)                          # outside the crop
    kp_prob = np.full((4, 17), 0.3, np.float32); kp_prob[0, 3] = 0.01   # detectron2: spatial-softmax probabilities
    return masks, boxes, scores, kps, kp_prob


def as_torchvision(masks, boxes, scores, kps, kp_prob, person_rows=(0, 1, 2)):
    labels = torch.tensor([1 if i in person_rows else 18 for i in range(len(boxes))])
    probs = torch.from_numpy(masks.astype(np.float32)*0.9)[:, None]
    logits = torch.from_numpy(np.log(kp_prob/(1 - kp_prob)))       # keypoint scores are logits in torchvision
    kp = torch.cat([torch.from_numpy(kps), torch.ones(len(boxes), 17, 1)], -1)   # third column always 1
    return dict(boxes=torch.from_numpy(boxes), labels=labels, scores=torch.from_numpy(scores), masks=probs,
                keypoints=kp, keypoints_scores=logits)


class FakeBoxes:
    def __init__(self, t): self.tensor = t


class FakeInstances:
    "Shaped like detectron2's Instances: pred_boxes.tensor, scores, pred_classes, pred_masks (N,H,W) bool, pred_keypoints (N,17,3)."
    def __init__(self, **fields): self.__dict__.update(fields)


def as_detectron2(masks, boxes, scores, kps, kp_prob, person_rows=(0, 1, 2)):
    classes = torch.tensor([0 if i in person_rows else 16 for i in range(len(boxes))])   # detectron2: person = 0
    kp = torch.cat([torch.from_numpy(kps), torch.from_numpy(kp_prob)[..., None]], -1)
    return FakeInstances(pred_boxes=FakeBoxes(torch.from_numpy(boxes)), scores=torch.from_numpy(scores),
                         pred_classes=classes, pred_masks=torch.from_numpy(masks), pred_keypoints=kp)


def test_same_scene_same_result_across_backend_formats():
    s = scene()
    tv, d2 = detections_from_torchvision(as_torchvision(*s)), detections_from_detectron2(as_detectron2(*s))
    for d in (tv, d2):
        assert d['boxes'].shape == (3, 4) and d['masks'].dtype == bool and d['masks'].shape == (3, H, W)
        assert d['keypoints'].shape == (3, 17, 2) and d['keypoint_scores'].shape == (3, 17)
    np.testing.assert_array_equal(tv['masks'], d2['masks'])
    # thresholds meaning the same confidence in each backend's units: logit(0.1) for torchvision, 0.1 for detectron2
    rt = combine_detections(tv, tv, H, W, kp_threshold=float(np.log(0.1/0.9)))
    rd = combine_detections(d2, d2, H, W, kp_threshold=0.1)
    for r in (rt, rd):
        assert r.found and r.n_persons == 2 and abs(r.score - 0.8) < 1e-6       # the centred person, not the 0.95 neighbour
        assert set(r.issues) == {'several_persons', 'keypoints_outside'}
        assert r.mask.sum() == 110*40 and r.keypoints.dtype == np.float32
    np.testing.assert_array_equal(rt.keypoints, rd.keypoints)
    assert rt.keypoints[3, 2] == 0 and rt.keypoints[16, 2] == 0 and (np.delete(rt.keypoints[:, 2], [3, 16]) == 2).all()


def test_torchvision_masks_are_thresholded_at_half():
    masks, boxes, scores, kps, p = scene()
    out = as_torchvision(masks, boxes, scores, kps, p)
    out['masks'][0, 0, 10:20] = 0.49
    d = detections_from_torchvision(out)
    assert d['masks'][0].sum() == 100*40


def test_detectron2_inputs_are_bgr_0_255_resized_shortest_edge():
    x = np.zeros((H, W, 3), np.uint8); x[..., 0] = 10; x[..., 2] = 250
    inp = detectron2_inputs([x, x[:100]], min_size=800, max_size=1333)
    assert inp[0]['image'].shape == (3, 1333, 667) and (inp[0]['height'], inp[0]['width']) == (H, W)  # capped by max_size
    assert inp[1]['image'].shape[1:] == (1250, 800)
    assert inp[0]['image'][0].mean() == pytest.approx(250) and inp[0]['image'][2].mean() == pytest.approx(10)
    assert detectron2_inputs([x], **native_size(H, W))[0]['image'].shape == (3, H, W)


class FakeD2Model(nn.Module):
    "A module like a detectron2 model: list of input dicts -> list of {'instances': Instances} at the original size."
    def __init__(self, keypoints:bool, seed:int=0):
        super().__init__(); self.keypoints, self.calls = keypoints, []
        self.w = nn.Parameter(torch.tensor([float(seed)]))          # its "weights": what the store key digests
    def forward(self, inputs):
        self.calls.append(inputs)
        out = []
        for i in inputs:
            if self.keypoints and (i['image'] == 0).all():          # like detectron2 on non-finite keypoint heatmaps
                raise AssertionError('heatmaps are not finite')
            masks, boxes, scores, kps, p = scene()
            inst = as_detectron2(masks, boxes, scores, kps, p)
            if self.keypoints: del inst.pred_masks
            else: del inst.pred_keypoints
            out.append({'instances': inst})
        return out


def test_detectron2_adapter_end_to_end_with_fake_models(paths):
    mm, km = FakeD2Model(False), FakeD2Model(True)
    masker = Detectron2Masker(None, None, **native_size(H, W), models=(mm, km))
    res = masker([read_image(p) for p in paths[:3]], paths[:3])
    assert len(res) == 3 and len(mm.calls) == 1 and len(mm.calls[0]) == 3     # one batched call
    assert mm.calls[0][0]['image'].shape == (3, H, W)
    assert all(r.found and r.mask.shape == (H, W) and r.n_persons == 2 for r in res)
    assert masker.key.startswith('detectron2-') and masker.key != GroundTruthMasker().key


def test_detectron2_models_get_their_own_store(paths, tmp_path):
    "Maskers on already-built models are keyed by the models' weights: two different models never share a store."
    a = Detectron2Masker(None, None, **native_size(H, W), models=(FakeD2Model(False, 0), FakeD2Model(True, 0)))
    b = Detectron2Masker(None, None, **native_size(H, W), models=(FakeD2Model(False, 0), FakeD2Model(True, 1)))
    same = Detectron2Masker(None, None, **native_size(H, W), models=(FakeD2Model(False, 0), FakeD2Model(True, 0)))
    assert a.key != b.key and a.identity() != b.identity() and 'None' not in a.key
    assert same.key == a.key
    extract_masks(a, paths[:2], 'synth', tmp_path/'s', progress=False)
    with pytest.raises(ValueError, match='never mix'): MaskStore.create(tmp_path/'s', b, 'synth')
    assert Detectron2Masker(None, None, models=(lambda x: x, lambda x: x), weights='mine').weights == 'mine'
    with pytest.raises(ValueError, match='weights='): Detectron2Masker(None, None, models=(lambda x: x, lambda x: x))


def test_detectron2_keypoint_failure_is_a_fallback_for_that_crop_only(paths):
    masker = Detectron2Masker(None, None, **native_size(H, W), models=(FakeD2Model(False), FakeD2Model(True)))
    imgs = [np.asarray(read_image(paths[0])), np.zeros((H, W, 3), np.uint8), np.asarray(read_image(paths[1]))]
    with pytest.warns(UserWarning, match=r"failed on 1 of 3 crops \(AssertionError: heatmaps are not finite\)"):
        res = masker(imgs)
    assert [('keypoint_error' in r.issues) for r in res] == [False, True, False]
    assert res[1].found and (res[1].keypoints[:, 2] == 0).all() and 'no_keypoints' not in res[1].issues
    assert (res[0].keypoints[:, 2] > 0).any() and mask_summary(res)['keypoint_error'] == 1


# ---- a stand-in for detectron2's config, model building and checkpointer (detectron2 is not installable here) -------
class TinyRCNN(nn.Module):
    "Named like a detectron2 GeneralizedRCNN: backbone, proposal_generator, roi_heads with a box predictor and a mask or keypoint head."
    def __init__(self, keypoint:bool):
        super().__init__()
        self.backbone, self.proposal_generator, self.roi_heads = nn.Linear(2, 2), nn.Linear(2, 2), nn.Module()
        self.roi_heads.box_predictor = nn.Linear(4, 2 if keypoint else 81)     # person only vs the 80 COCO classes
        setattr(self.roi_heads, 'keypoint_head' if keypoint else 'mask_head', nn.Linear(4, 4))


class FakeCheckpointer:
    "fvcore's Checkpointer steps: _load_file (unpickle; wrap a bare state dict) and _load_model (incompatible keys)."
    Incompatible = namedtuple('Incompatible', 'missing_keys unexpected_keys incorrect_shapes')
    def __init__(self, model): self.model = model
    def _load_file(self, f):
        loaded = torch.load(f, map_location='cpu', weights_only=False)
        return loaded if 'model' in loaded else {'model': loaded}
    def _load_model(self, checkpoint):
        sd, own = dict(checkpoint['model']), self.model.state_dict()
        bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items() if k in own and v.shape != own[k].shape]
        for k, *_ in bad: del sd[k]
        r = self.model.load_state_dict(sd, strict=False)
        return self.Incompatible(r.missing_keys, r.unexpected_keys, bad)


@pytest.fixture
def fake_detectron2(monkeypatch, tmp_path):
    "detectron2's modules as stand-ins in sys.modules, with the two model-zoo config files in the package folder."
    pkg = tmp_path/'detectron2'
    for c in (D2_MASK_CONFIG, D2_KEYPOINT_CONFIG):
        (pkg/'model_zoo'/'configs'/c).parent.mkdir(parents=True, exist_ok=True); (pkg/'model_zoo'/'configs'/c).write_text('')
    def get_cfg():
        cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(), INPUT=types.SimpleNamespace())
        cfg.merge_from_file = lambda path: setattr(cfg, 'file', path)
        return cfg
    mods = dict(detectron2=types.ModuleType('detectron2'), config=types.ModuleType('detectron2.config'),
                modeling=types.ModuleType('detectron2.modeling'), checkpoint=types.ModuleType('detectron2.checkpoint'))
    mods['detectron2'].__file__ = str(pkg/'__init__.py')
    mods['config'].get_cfg = get_cfg
    mods['modeling'].build_model = lambda cfg: TinyRCNN('Keypoints' in cfg.file)
    mods['checkpoint'].DetectionCheckpointer = FakeCheckpointer
    for name, m in mods.items(): monkeypatch.setitem(sys.modules, 'detectron2' if name == 'detectron2' else f'detectron2.{name}', m)
    files = dict(mask=tmp_path/'model_final_f10217.pkl', keypoint=tmp_path/'model_final_a6e10b.pkl', junk=tmp_path/'junk.pkl')
    torch.save({'model': TinyRCNN(False).state_dict(), '__author__': 'test'}, files['mask'])
    torch.save(TinyRCNN(True).state_dict(), files['keypoint'])                  # a bare state dict is a checkpoint too
    files['junk'].write_bytes(b'MODEL:\n  WEIGHTS: ""\n')                         # a config file, not a checkpoint
    return files


def test_detectron2_weights_are_checked_on_loading(fake_detectron2):
    f = fake_detectron2
    m = Detectron2Masker(f['mask'], f['keypoint'])
    assert m.weights.count('file-') == 2 and isinstance(m.keypoint_model.roi_heads.keypoint_head, nn.Linear)
    with pytest.raises(ValueError) as e: Detectron2Masker(f['keypoint'], f['mask'])                # swapped
    msg = str(e.value)
    assert str(f['keypoint']) in msg and 'mask_rcnn_R_50_FPN_3x' in msg and 'model_final_f10217.pkl' in msg
    assert 'roi_heads.' in msg and 'swapped' in msg
    with pytest.raises(ValueError) as e: Detectron2Masker(f['mask'], f['junk'])                    # not a checkpoint
    assert str(f['junk']) in str(e.value) and 'not a detectron2 checkpoint' in str(e.value)
    assert 'keypoint_rcnn_R_50_FPN_3x' in str(e.value) and isinstance(e.value.__cause__, pickle.UnpicklingError)


def test_detectron2_missing_gives_install_line():
    try:
        import detectron2  # noqa: F401
        pytest.skip('detectron2 is installed')
    except ImportError: pass
    with pytest.raises(ImportError, match='no-build-isolation'): import_detectron2()
    with pytest.raises(ImportError, match='Installing detectron2'): Detectron2Masker('m.pkl', 'k.pkl')


def test_detectron2_real_backend(paths, tmp_path):
    pytest.importorskip('detectron2')
    import os
    mw, kw = os.environ.get('REID_NB_D2_MASK_WEIGHTS'), os.environ.get('REID_NB_D2_KEYPOINT_WEIGHTS')
    if not (mw and kw): pytest.skip('set REID_NB_D2_MASK_WEIGHTS / REID_NB_D2_KEYPOINT_WEIGHTS to model-zoo .pkl files')
    res = Detectron2Masker(mw, kw, **native_size(H, W, 2))([read_image(p) for p in paths[:2]], paths[:2])
    check_format(res, paths[:2])


# ---- every real backend on the same images --------------------------------------------------------------------
def check_format(res, ps):
    assert len(res) == len(ps)
    for r, p in zip(res, ps):
        w, h = read_image(p).size
        assert isinstance(r, MaskResult) and r.mask.shape == (h, w) and r.mask.dtype == bool
        assert r.keypoints.shape == (17, 3) and r.keypoints.dtype == np.float32 and r.keypoint_scores.shape == (17,)
        assert set(np.unique(r.keypoints[:, 2])) <= {0., 1., 2.} and r.box.shape == (4,)
        assert set(r.issues) <= set(ISSUES) and isinstance(r.score, float)
        if r.found: assert r.mask.any() and 0 <= r.score <= 1
        else: assert r.mask.all() and (r.keypoints[:, 2] == 0).all() and ({'no_person', 'empty_mask'} & set(r.issues))


def test_backends_output_format_on_same_images(paths, light, capsys):
    ps = paths[:3]; imgs = [read_image(p) for p in ps]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        paper = TorchvisionMasker.paper(**native_size(H, W), rpn_post_nms_top_n_test=50)
    assert any('RANDOM initialisation' in str(x.message) for x in w) and paper.weights == 'random-seed0'
    assert 'Downloading' not in str(capsys.readouterr())                     # torch.hub's line stays out of notebook outputs
    for masker in (GroundTruthMasker(), paper, light):
        check_format(masker(imgs, ps), ps)
    assert len({GroundTruthMasker().key, paper.key, light.key}) == 3


def test_keys_name_weights_and_settings(light):
    m = light.mask_model
    assert TorchvisionMasker(m, None, 'random-seed0').key == light.key
    assert TorchvisionMasker(m, None, 'random-seed1').key != light.key
    assert TorchvisionMasker(m, None, 'random-seed0', score_threshold=0.7).key != light.key
    assert 'random-seed0' in light.key


def test_unnamed_weights_are_keyed_by_their_state_dict(light):
    "Two fine-tuned models with the same settings but no weights name must not share a store folder."
    m = light.mask_model
    a = TorchvisionMasker(m)
    assert a.weights == f'state-{state_dict_digest(m)}' and 'state-' in a.key
    assert TorchvisionMasker(m).key == a.key                                  # same weights, same key
    tuned = copy.deepcopy(m)
    with torch.no_grad(): next(tuned.parameters()).add_(0.01)
    assert TorchvisionMasker(tuned).key != a.key                              # other weights, other key
    assert TorchvisionMasker(tuned, None, 'random-seed0').key == light.key    # an explicit name still wins


class Recorder(nn.Module):
    "A fake torchvision detection model that records its inputs and finds nobody."
    def __init__(self):
        super().__init__(); self.p = nn.Parameter(torch.zeros(1)); self.inputs = None
    def forward(self, xs):
        self.inputs = xs
        return [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64), scores=torch.zeros(0),
                     masks=torch.zeros(0, 1, *x.shape[-2:]), keypoints=torch.zeros(0, 17, 3), keypoints_scores=torch.zeros(0, 17)) for x in xs]


def test_pixel_scale_and_no_person_fallback():
    rec, krec = Recorder(), Recorder()
    x = np.full((H, W, 3), 255, np.uint8)
    r = TorchvisionMasker(rec, krec, 'x', pixel_scale=1/256)([x])[0]
    assert rec.inputs[0].shape == (3, H, W) and rec.inputs[0].max().item() == pytest.approx(255/256)
    assert not r.found and r.issues == ('no_person',) and r.mask.all()
    assert TorchvisionMasker(rec, krec, 'x')([x])[0] is not None and rec.inputs[0].max().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match='uint8'): TorchvisionMasker(rec, krec, 'x')([x.astype(np.float32)])


def test_bad_inputs_have_fallbacks_and_are_counted():
    masks, boxes, scores, kps, p = scene()
    d = detections_from_torchvision(as_torchvision(masks, boxes, scores, kps, p))
    none = detections_from_torchvision(as_torchvision(masks, boxes, scores, kps, p, person_rows=()))
    empty = detections_from_torchvision(as_torchvision(np.zeros_like(masks), boxes, scores, kps, p))
    far = {k: v[:0] for k, v in d.items()}                             # keypoint model found nobody
    res = [combine_detections(d, d, H, W, kp_threshold=-5.0),           # several persons + a keypoint outside
           combine_detections(none, none, H, W),                       # no person
           combine_detections(empty, empty, H, W),                     # several persons, empty mask
           combine_detections(d, far, H, W)]                           # several persons, no keypoints
    s = mask_summary(res)
    assert s == dict(images=4, found=2, no_person=1, several_persons=3, empty_mask=1, keypoints_outside=1,
                     no_keypoints=1, keypoint_error=0, mean_score=pytest.approx(0.8))
    assert not res[2].found and res[2].mask.all()
    assert (res[3].keypoints[:, 2] == 0).all() and res[3].found


def test_select_pedestrian_prefers_centred_box():
    boxes = np.array([[0, 0, 20, 128], [8, 4, 56, 126], [40, 0, 64, 64]], np.float32)
    assert select_pedestrian(boxes, [0.99, 0.6, 0.9], H, W) == (1, 3)
    assert select_pedestrian(boxes, [0.99, 0.4, 0.9], H, W)[0] == 0     # the centred one failed the threshold
    assert select_pedestrian(np.zeros((0, 4)), [], H, W) == (None, 0)


def test_groundtruth_masker_matches_annotations(synth, paths):
    res = GroundTruthMasker()(None, paths[:4])
    ann = load_synth_annotations(synth, 'query')
    for r, p in zip(res, paths[:4]):
        k = np.asarray(ann[p.stem]['keypoints'], np.float32)
        np.testing.assert_array_equal(r.keypoints[:, :2], k[:, :2])
    with pytest.raises(ValueError, match='paths'): GroundTruthMasker()([read_image(paths[0])])


def test_groundtruth_masker_on_synthreid_cuhk03_cache():
    "SynthReID-CUHK03 crops are read from the extraction cache (images_labeled/), outside the annotated root."
    from reid_nb.data.synth.layouts import generate_synthreid_cuhk03
    from reid_nb.data.cuhk03 import read_cuhk03
    from reid_nb.data.synth import load_part_map
    root = generate_synthreid_cuhk03(size='smoke', seed=0, progress=False)
    ds = read_cuhk03(root, variant='labeled', name='synthreid-cuhk03', progress=False)
    ps = [r.path for r in ds.query[:3]]
    assert ps[0].parent.name == 'images_labeled' and root not in ps[0].parents
    with pytest.raises(FileNotFoundError) as e: GroundTruthMasker()(None, ps)
    assert str(ps[0]) in str(e.value) and 'annotations=' in str(e.value)
    res = GroundTruthMasker(annotations=root)(None, ps)
    ann = json.loads((root/'annotations'/'labeled.json').read_text())
    for p, r in zip(ps, res):
        np.testing.assert_array_equal(r.mask, load_part_map(root, 'labeled', p.stem) > 0)
        np.testing.assert_array_equal(r.keypoints[:, :2], np.asarray(ann[p.stem]['keypoints'], np.float32)[:, :2])
    det = GroundTruthMasker(annotations=root, folders={'images_labeled': 'detected'})(None, ps[:1])[0]   # explicit mapping
    np.testing.assert_array_equal(det.mask, load_part_map(root, 'detected', ps[0].stem) > 0)
    with pytest.raises(KeyError, match='no entry'): GroundTruthMasker(annotations=root)(None, [ps[0].with_name('9_999_1_01.png')])


# ---- the store -----------------------------------------------------------------------------------------------------
class Stop(Exception): pass


def stop_after(n):
    def f(b):
        if b + 1 == n: raise Stop
    return f


def same_store(a, b):
    a, b = a.load(), b.load()
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        np.testing.assert_array_equal(x.mask, y.mask); np.testing.assert_array_equal(x.keypoints, y.keypoints)
        np.testing.assert_array_equal(x.keypoint_scores, y.keypoint_scores)
        assert (x.score, x.found, x.n_persons, x.issues) == (y.score, y.found, y.n_persons, y.issues)
        np.testing.assert_array_equal(x.box, y.box)


def test_store_resumes_after_interruption_with_identical_results(paths, light, tmp_path):
    ps = paths[:10]
    with pytest.raises(Stop):
        extract_masks(light, ps, 'synth', tmp_path/'a', batch_size=4, progress=False, on_batch=stop_after(2))
    assert len(MaskStore(tmp_path/'a').done()) == 8
    (tmp_path/'a'/'shards'/'.000002.npz.tmp-deadbeef').write_bytes(b'half a shard')   # a killed write leaves this
    seen = []
    a = extract_masks(light, ps, 'synth', tmp_path/'a', batch_size=4, progress=False, on_batch=seen.append)
    assert seen == [0] and len(a) == 10                                  # only the 2 missing crops were masked
    b = extract_masks(light, ps, 'synth', tmp_path/'b', batch_size=4, progress=False)
    same_store(a, b)
    assert json.loads((tmp_path/'a'/'summary.json').read_text())['images'] == 10
    c = extract_masks(light, ps, 'synth', tmp_path/'a', batch_size=4, progress=False, on_batch=seen.append)
    assert seen == [0] and len(c) == 10                                  # nothing left to do
    # results equal a direct call
    direct = light([read_image(p) for p in ps[:4]], ps[:4])
    for p, r in zip(ps[:4], direct): np.testing.assert_array_equal(a[p].mask, r.mask)


def test_store_never_mixes_sources(paths, light, tmp_path):
    extract_masks(GroundTruthMasker(), paths[:3], 'synth', tmp_path/'s', progress=False)
    with pytest.raises(ValueError, match='never mix'): extract_masks(light, paths[:3], 'synth', tmp_path/'s', progress=False)
    s = extract_masks(GroundTruthMasker(), paths[:3], 'synth', progress=False)     # default root: one folder per key
    assert s.root.parent.name == 'synth' and s.root.name == GroundTruthMasker().key


class Whole(Masker):
    "A cheap masker: the whole-crop fallback for every image."
    backend = 'whole'
    def identity(self): return dict(backend=self.backend, weights='none')
    def predict(self, images, paths=None): return [fallback_result(*np.asarray(im).shape[:2]) for im in images]


def test_store_refuses_other_images_under_the_same_keys(paths, tmp_path):
    "A second dataset read under the same name (another root, seed or size) has the same <folder>/<stem> keys."
    first, other, copy_ = (tmp_path/n/'query' for n in ('first', 'other', 'copy'))
    for d in (first, other, copy_): d.mkdir(parents=True)
    for p, q in zip(paths[:3], paths[3:6]):
        shutil.copy(p, first/p.name); shutil.copy(p, copy_/p.name); shutil.copy(q, other/p.name)   # other: same names, other pixels
    names = [p.name for p in paths[:3]]
    m = Whole()
    extract_masks(m, [first/n for n in names], 'dup', progress=False)                 # default root: masks/dup/<key>
    with pytest.raises(ValueError, match='another dataset name') as e:
        extract_masks(m, [other/n for n in names], 'dup', progress=False)
    assert f'query/{paths[0].stem}' in str(e.value) and 'found' in str(e.value)
    seen = []
    s = extract_masks(m, [copy_/n for n in names], 'dup', progress=False, on_batch=seen.append)
    assert seen == [] and len(s) == 3                                                  # the same images elsewhere: reused
    assert len(extract_masks(m, [other/n for n in names], 'dup-other', progress=False)) == 3   # another name: fine


def test_store_errors_and_extras(paths, tmp_path):
    with pytest.raises(ValueError, match='distinct'): extract_masks(GroundTruthMasker(), [paths[0], paths[0]], 'x', tmp_path/'d', progress=False)
    s = extract_masks(GroundTruthMasker(), paths[:3], 'synth', tmp_path/'e', batch_size=2, progress=False)
    assert item_key(paths[0]) == f'query/{paths[0].stem}' and paths[0] in s
    with pytest.raises(KeyError, match='extract_masks'): s['query/nope']
    recs = [Record(p, 0, 0) for p in paths[:3]]
    img, pid, mask, kps = ReIDImages(recs, ReIDTransform((256, 128), train=False), extras=s.extras)[0]
    assert mask.shape == (256, 128) and kps.shape == (17, 3) and mask.sum() > 0
    assert s.summary()['images'] == 3 and s.summary()['found'] == 3


# ---- the light-MRA fine-tuning script -----------------------------------------------------------------------------
def _finetune_script():
    import importlib.util
    path = Path(__file__).parent/'benchmarks'/'finetune_mra.py'
    spec = importlib.util.spec_from_file_location('finetune_mra', path); mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_finetune_script_arguments():
    fm = _finetune_script()
    a = fm.parse_args([])
    assert (a.iterations, a.max_seconds, a.out) == (160, None, fm.ASSETS)       # iterations stop it; no time cap by default
    a = fm.parse_args(['--iterations', '3', '--max-seconds', '60', '--n-eval', '4', '--out', '/tmp/x'])
    assert (a.iterations, a.max_seconds, a.n_eval, a.out) == (3, 60.0, 4, Path('/tmp/x'))
    for bad in (['--iterations', '0'], ['--max-seconds', '-1']):
        with pytest.raises(SystemExit): fm.parse_args(bad)


def test_finetune_script_stops_after_its_iterations_and_writes_only_to_out(synth, tmp_path):
    fm = _finetune_script()
    assets = {p.name: p.read_bytes() for p in fm.ASSETS.glob('mra_finetune.*')}
    rec = fm.main(iterations=2, n_eval=4, out=tmp_path)
    assert rec['iterations'] == 2 and rec['stopped_by'] == 'iterations' and rec['max_seconds'] is None
    assert json.loads((tmp_path/'mra_finetune.json').read_text())['iterations'] == 2 and (tmp_path/'mra_finetune.png').is_file()
    assert Path(rec['checkpoint']).parent == tmp_path                              # a trial run keeps its checkpoint too
    assert {p.name: p.read_bytes() for p in fm.ASSETS.glob('mra_finetune.*')} == assets   # the recorded run is untouched
