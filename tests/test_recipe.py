"The method recipe: a toy two-view, two-stage, two-term method composed from shared parts; stages, resume and bad input."
import json
from dataclasses import dataclass
import pytest
import torch
from torch import nn
from reid_nb.core import get_preset
from reid_nb.model import build_backbone, Outputs
from reid_nb.losses import Term, cross_entropy, batch_hard_triplet_loss
from reid_nb.train import Stage, fit_stages
from reid_nb.data.pipeline import SampleRecipe
from reid_nb.recipe import METHODS, Method, in_range, get_method
from reid_nb.runner import Run
from reid_nb.experiment import validate_config


# ---- the toy method: everything it needs comes from the package; its whole recipe is below (< 40 lines) ----
@dataclass
class ToyOptions:
    margin:float = 0.3
    def check(self): return in_range('margin', self.margin, 0)

class TwoViewNet(nn.Module):
    "One trunk, one set of weights, for both views (run as one batch of B·V images); F = concat of the view features."
    def __init__(self, cfg, n_classes):
        super().__init__()
        self.trunk, c = build_backbone(cfg.backbone, pretrained=False)
        self.head = nn.Sequential(nn.Linear(2 * c, 64), nn.BatchNorm1d(64))
        self.classifier = nn.Linear(64, n_classes)
    def forward(self, x):                                          # x: (B, V=2, 3, H, W)
        B, V = x.shape[:2]
        f = self.trunk(x.flatten(0, 1)).mean((2, 3)).view(B, -1)  # (B, V·c)
        e = self.head(f)
        return Outputs(logits={'id': self.classifier(e)}, feats={'F': f}) if self.training else e

TOY = Method(
    name='toy', summary='two views through one trunk, two stages, CE + triplet', options=ToyOptions,
    sample=lambda cfg, o: SampleRecipe(views=lambda s: {'image': s['image'], 'pedestrian': s['image'] * s['mask']},
                                       needs=('mask',)),
    model=lambda cfg, o, n: TwoViewNet(cfg, n),
    loss=lambda cfg, o: [Term('ce', cross_entropy, ('logits.id', 'pids'), 1.0, dict(label_smoothing=0.1)),
                         Term('triplet', batch_hard_triplet_loss, ('feats.F', 'pids'), 1.0, dict(margin=o.margin))],
    stages=lambda cfg, o: [Stage('all', epochs=1), Stage('head', epochs=1, freeze=('trunk',), opt='sgd', lr=1e-2)],
    rerank=False)
# ---- end of the toy method ----


@pytest.fixture
def toy_registered():
    METHODS['toy'] = TOY
    yield
    del METHODS['toy']


def _cfg(**kw):
    return get_preset('smoke', **{**dict(method='toy', height=64, width=32, P=4, K=2, device='cpu'), **kw})


def test_toy_method_trains_in_two_stages_with_a_frozen_trunk(toy_registered, tmp_path):
    run = Run(_cfg(), tmp_path/'out', preset='smoke', progress=False)
    run.load_data(); learn = run.build()
    assert run.mask_source == 'ground_truth'
    x, y = learn.dls.train.one_batch()
    assert x.shape == (8, 2, 3, 64, 32) and y.shape == (8,)
    assert (x[:, 1] == run.dls.train.dataset.transform.normalise(torch.zeros(3, 1, 1, dtype=torch.uint8))[:, 0, 0][None, :, None, None]).any()
    stages = run.stages
    fit_stages(learn, run.cfg, stages[:1])
    trunk = {k: v.clone() for k, v in learn.model.trunk.state_dict().items()}       # weights and BatchNorm buffers
    head = {k: v.clone() for k, v in learn.model.head.state_dict().items()}
    assert any('running_mean' in k for k in trunk)
    fit_stages(learn, run.cfg, stages[1:])
    after = learn.model.trunk.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in trunk.items()), 'the frozen trunk moved'
    assert not torch.equal(head['0.weight'], learn.model.head[0].weight)
    assert not torch.equal(head['1.running_mean'], learn.model.head[1].running_mean)   # unfrozen BN statistics do move
    parts = learn.loss_parts.history
    assert {'ce', 'triplet'} <= set(parts) and max(parts['epoch']) == 1.0
    run.evaluate()
    assert list(run.results) == ['single query', 'multi query'] and 0 <= run.results['single query']['rank1'] <= 1
    rec = run.record()
    assert [s['name'] for s in rec.recipe['stages']] == ['all', 'head'] and rec.recipe['options'] == {'margin': 0.3}
    assert rec.recipe['mask_source'] == 'ground_truth'


def test_stages_resume_mid_stage_and_refuse_a_changed_method_option(toy_registered, tmp_path):
    class Crash(Exception): pass
    run = Run(_cfg(), tmp_path/'out', progress=False, ckpt_dir=tmp_path/'ckpt')
    run.load_data(); learn = run.build()
    stages = [Stage('all', epochs=1), Stage('head', epochs=2, freeze=('trunk',))]
    from fastai.callback.core import Callback
    class CrashInSecondEpochOfHead(Callback):
        def before_epoch(self):
            if getattr(self.learn, 'stage_name', None) == 'head' and self.epoch == 1: raise Crash('simulated crash')
    learn.add_cb(CrashInSecondEpochOfHead())
    with pytest.raises(Crash): fit_stages(learn, run.cfg, stages, ckpt_dir=tmp_path/'ckpt')
    assert json.loads((tmp_path/'ckpt'/'head'/'checkpoint.json').read_text())['epoch'] == 0
    trained = []
    class Trained(Callback):
        def after_train(self): trained.append((self.learn.stage_name, self.epoch))
    run2 = Run(_cfg(), tmp_path/'out2', progress=False); run2.load_data(); l2 = run2.build(); l2.add_cb(Trained())
    fit_stages(l2, run2.cfg, stages, ckpt_dir=tmp_path/'ckpt')
    assert trained == [('head', 1)]                              # 'all' loaded, 'head' continues at its second epoch
    run3 = Run(_cfg(method_options={'margin': 0.5}), tmp_path/'out3', progress=False); run3.load_data(); l3 = run3.build()
    with pytest.raises(ValueError, match='different configuration.*method_options'):
        fit_stages(l3, run3.cfg, stages, ckpt_dir=tmp_path/'ckpt')


def test_bad_method_input_is_named(toy_registered):
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['margn'\] for method 'toy'. Valid options: margin"):
        validate_config(_cfg(method_options={'margn': 1}))
    with pytest.raises(ValueError, match='margin must be ≥ 0'): validate_config(_cfg(method_options={'margin': -1}))
    with pytest.raises(ValueError, match="no ground-truth masks.*Available mask sources for it: 'torchvision'"):
        validate_config(_cfg(dataset='market1501'))
    with pytest.raises(ValueError, match="Valid choices: 'baseline'"): validate_config(_cfg(method='nope'))
    model = TOY.model(_cfg(), None, 5)
    from reid_nb.train import reid_learner, toy_reid_dls
    learn = reid_learner(toy_reid_dls(n_train_ids=4, n_imgs=2)[0], model, _cfg())
    with pytest.raises(ValueError, match="names module 'grn'.*Its modules: trunk, head, classifier"):
        fit_stages(learn, _cfg(), [Stage('one'), Stage('two', freeze=('grn',))])
    assert get_method('toy') is TOY
