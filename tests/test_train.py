"Learner, skipped validation, ReID evaluation history, schedules and checkpoint resume of reid_nb.train."
import json
from dataclasses import replace
import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastcore.basics import noop
from reid_nb.core import get_preset, seed_everything
from reid_nb.methods.registry import build_model
from reid_nb.train import toy_reid_dls, reid_learner, fit_reid, ReIDEvalCallback, training_history, plot_training_curves, warmup_step_schedule, load_checkpoint

CFG = get_preset('smoke', lr=3e-3, embed_dim=32, device='cpu', seed=0, pretrained=False)   # toy data: a random trunk


def _learner(n_ids=8, n_imgs=4, size=(32, 16), bs=32, cbs=None, cfg=CFG, seed=0, **kw):
    seed_everything(seed)
    dls, q, g = toy_reid_dls(n_train_ids=n_ids, n_test_ids=6, n_imgs=n_imgs, bs=bs, size=size, seed=seed)
    learn = reid_learner(dls, build_model(cfg, n_ids), cfg, cbs=cbs, **kw)
    learn.logger = noop  # quiet fastai's table
    return learn, q, g


class EpochsTrained(Callback):
    def __init__(self): self.trained = []
    def after_train(self): self.trained.append(self.epoch)


class Crash(Callback):
    def __init__(self, at): self.at = at
    def before_epoch(self):
        if self.epoch == self.at: raise RuntimeError('simulated crash')


class Snapshot(Callback):
    "State of model and optimizer after epoch `at`."
    order = 80
    def __init__(self, at): self.at = at
    def after_epoch(self):
        if self.epoch == self.at:
            self.model_state = {k: v.clone() for k, v in self.learn.model.state_dict().items()}
            self.opt_state = [{k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for s in
                              (self.learn.opt.state[p] for p in self.learn.opt.all_params(with_grad=False).itemgot(0))]


def test_loss_decreases_in_20_steps():
    cfg = get_preset('smoke', lr=1e-3, embed_dim=32, device='cpu')
    learn, q, g = _learner(n_ids=16, n_imgs=8, size=(64, 32), bs=32, cfg=cfg)  # 4 steps/epoch
    fit_reid(learn, cfg, epochs=5)
    loss = learn.loss_parts.history['loss']
    assert len(loss) == 20
    assert np.mean(loss[-5:]) < 0.85 * np.mean(loss[:5]), loss
    assert set(learn.loss_parts.history) == {'epoch', 'loss', 'lr', 'lr/backbone', 'lr/new', 'ce', 'triplet'}
    assert learn.loss_parts.history['epoch'][-1] == pytest.approx(5.0)


class _Explodes:
    "A validation loader that must never be iterated."
    def __iter__(self): raise AssertionError('fastai validation pass was not skipped')
    def __len__(self): return 1


def test_validation_is_skipped_and_replaced_by_reid_eval():
    seed_everything(0)
    dls, q, g = toy_reid_dls(n_train_ids=8, n_test_ids=6, n_imgs=4, size=(32, 16))
    dls2 = DataLoaders(dls.train, _Explodes())
    ev = ReIDEvalCallback(q, g, every=2, flip=True)
    learn = reid_learner(dls2, build_model(CFG, 8), CFG, cbs=ev)
    fit_reid(learn, CFG, epochs=5)
    assert [r['epoch'] for r in ev.history] == [1, 3, 4]  # every 2nd epoch and the last
    assert set(ev.history[0]) == {'epoch', 'rank1', 'rank5', 'rank10', 'mAP', 'mINP'}
    assert all(0 <= r['rank1'] <= 1 and 0 < r['mAP'] <= 1 for r in ev.history)
    names = list(learn.recorder.metric_names)
    assert 'valid_loss' not in names and names.index('rank1') < names.index('time')
    assert learn.recorder.values[0][-2:] == ['', ''] and isinstance(learn.recorder.values[1][-1], float)
    # a DataLoaders holding only the training loader works too
    learn1 = reid_learner(DataLoaders(dls.train), build_model(CFG, 8), CFG)
    fit_reid(learn1, CFG, epochs=1)
    assert len(learn1.loss_parts.history['loss']) == 1


def test_param_groups_and_optimizers():
    learn, *_ = _learner(cfg=get_preset('smoke', lr=0.1, opt='sgd', device='cpu'), backbone_lr_mult=0.5)
    learn.create_opt()
    assert len(learn.opt.param_groups) == 2
    assert [h['lr'] for h in learn.opt.hypers] == pytest.approx([0.05, 0.1])  # MMGA's 0.05 / 0.1
    assert learn.opt.hypers[0]['mom'] == pytest.approx(0.9)
    n_bb = sum(p.numel() for p in learn.model.backbone.parameters())
    assert sum(p.numel() for p in learn.opt.param_lists[0]) == n_bb
    with pytest.raises(ValueError, match="'adam', 'sgd'"): _learner(cfg=get_preset('smoke', opt='rmsprop'))
    learn.model.backbone.pretrained_weights = 'ImageNet'  # pretrained backbone -> a tenth by default
    assert reid_learner(learn.dls, learn.model, get_preset('smoke', lr=0.1)).lr == pytest.approx([0.01, 0.1])


def test_warmup_step_schedule_drives_both_groups():
    learn, *_ = _learner()
    fit_reid(learn, CFG, epochs=10, schedule='warmup_step', warmup=2, milestones=(5, 8), gamma=0.1)
    lr = learn.loss_parts.history['lr']  # one batch per epoch; pos = epoch/10 at each batch
    s = warmup_step_schedule([CFG.lr], 10, warmup=2, milestones=(5, 8))
    assert lr == pytest.approx([s(e / 10)[0] for e in range(10)])
    assert lr[5] == pytest.approx(CFG.lr * 0.1) and lr[9] == pytest.approx(CFG.lr * 0.01)
    with pytest.raises(ValueError, match="'one_cycle', 'warmup_step'"): fit_reid(learn, CFG, epochs=1, schedule='cosine')


def test_checkpoint_resume_continues_at_the_right_epoch(tmp_path):
    ref, *_ = _learner(n_imgs=4)
    fit_reid(ref, CFG, epochs=5)  # uninterrupted run: the learning-rate curve to continue on

    snap = Snapshot(at=2)
    crashed, q, g = _learner(cbs=[Crash(at=3), snap, ReIDEvalCallback(*_learner()[1:], every=1, flip=False)])
    with pytest.raises(RuntimeError, match='simulated crash'): fit_reid(crashed, CFG, epochs=5, ckpt_dir=tmp_path)
    meta = json.loads((tmp_path / 'checkpoint.json').read_text())
    assert meta['epoch'] == 2 and meta['file'] == 'epoch_0002.pth' and meta['n_epoch'] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.json', 'epoch_0002.pth']  # keep=1, no temp files
    assert [r['epoch'] for r in meta['history']['eval']] == [0, 1, 2]
    assert meta['config']['backbone'] == 'resnet_mini'

    ev = ReIDEvalCallback(q, g, every=1, flip=False)
    resumed, *_ = _learner(seed=1, cbs=[EpochsTrained(), ev])  # different init: everything must come from disk
    state = load_checkpoint(resumed, tmp_path)
    assert state['epoch'] == 2
    for k, v in snap.model_state.items(): assert torch.equal(resumed.model.state_dict()[k], v), k
    params = resumed.opt.all_params(with_grad=False).itemgot(0)
    got = [{k: v for k, v in resumed.opt.state[p].items() if torch.is_tensor(v)} for p in params]
    assert len(got) == len(snap.opt_state) and any(s for s in got)
    for a, b in zip(got, snap.opt_state):
        for k in b: assert torch.equal(a[k], b[k]), k
    assert [r['epoch'] for r in ev.history] == [0, 1, 2]

    fit_reid(resumed, CFG, epochs=5, ckpt_dir=tmp_path)
    assert resumed.epochs_trained.trained == [3, 4]
    assert json.loads((tmp_path / 'checkpoint.json').read_text())['epoch'] == 4
    assert [r['epoch'] for r in ev.history] == [0, 1, 2, 3, 4]
    h = resumed.loss_parts.history
    assert h['epoch'] == pytest.approx([1, 2, 3, 4, 5])
    assert h['lr'] == pytest.approx(ref.loss_parts.history['lr'])  # same one-cycle position after resume
    # a finished run is not trained again
    again, *_ = _learner(cbs=EpochsTrained())
    fit_reid(again, CFG, epochs=5, ckpt_dir=tmp_path)
    assert again.epochs_trained.trained == []


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    learn, *_ = _learner()
    fit_reid(learn, CFG, epochs=2, ckpt_dir=tmp_path)
    changed = replace(CFG, lr=0.1, triplet_weight=2.0, dataset='market1501', name='other')
    other, *_ = _learner(cfg=changed, cbs=EpochsTrained())
    with pytest.raises(ValueError) as e: fit_reid(other, changed, epochs=3, ckpt_dir=tmp_path)
    msg = str(e.value)
    for part in ("dataset: 'synthreid' in the checkpoint, 'market1501' now", "lr: 0.003 in the checkpoint, 0.1 now",
                 "triplet_weight: 1.0 in the checkpoint, 2.0 now", str(tmp_path), 'another ckpt_dir', 'resume=False'):
        assert part in msg, (part, msg)
    assert 'name:' not in msg  # the run's name may change
    assert other.epochs_trained.trained == []
    # another backbone: explained, not a bare state_dict mismatch from PyTorch
    resnet18 = replace(CFG, backbone='resnet18')
    with pytest.raises(ValueError, match="backbone: 'resnet_mini' in the checkpoint, 'resnet18' now"):
        fit_reid(_learner(cfg=resnet18)[0], resnet18, epochs=3, ckpt_dir=tmp_path)
    # resume=False trains the new configuration from scratch (and says it overwrites)
    with pytest.warns(UserWarning, match='resume=False'): fit_reid(other, changed, epochs=1, ckpt_dir=tmp_path, resume=False)
    assert other.epochs_trained.trained == [0]
    assert json.loads((tmp_path / 'checkpoint.json').read_text())['config']['lr'] == 0.1


def test_resume_accepts_changed_name_epochs_device_and_workers(tmp_path):
    learn, *_ = _learner()
    fit_reid(learn, CFG, epochs=2, ckpt_dir=tmp_path)
    again, *_ = _learner(cbs=EpochsTrained())  # built on the CPU; the configuration then names another device
    longer = again.reid_cfg = replace(CFG, name='longer', epochs=4, num_workers=2, device=None)
    with pytest.warns(UserWarning, match='planned for 2 epochs with 4'): fit_reid(again, longer, ckpt_dir=tmp_path)
    assert again.epochs_trained.trained == [2, 3]


def test_plot_training_curves_from_learner_and_checkpoint(tmp_path):
    learn, q, g = _learner(cbs=None)
    learn.add_cb(ReIDEvalCallback(q, g, flip=False))
    fit_reid(learn, CFG, epochs=2, ckpt_dir=tmp_path)
    for src in (learn, training_history(learn), tmp_path, tmp_path / 'checkpoint.json'):
        fig = plot_training_curves(src)
        assert len(fig.axes) == 3 and len(fig.axes[2].lines) == 2
    import matplotlib.pyplot as plt; plt.close('all')
