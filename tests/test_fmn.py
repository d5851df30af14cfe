"""FMN: mask shapes and bounds per masked layer, the two stages (frozen GRN bit-identical, no autograd), the ranking
loss by hand, the LAN's stages, the descriptor, stage-1 reuse and its refusals, and one small run end to end."""
import json
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reid_nb.core import get_preset
from reid_nb.model import build_backbone
from reid_nb.losses import WeightedLoss
from reid_nb.train import toy_reid_dls, reid_learner, fit_stages, save_checkpoint
from reid_nb.methods.fmn import MASKED_LAYERS, FeatureMaskNetwork, FMNOptions, FMN, FMN_RUNS, column_major, mask_size, lan_stages, ranking_loss, true_class_probability, fmn_terms, fmn_stages, fmn_descriptors, grn_config, grn_key, load_grn, build_fmn, alpha_sweep, fmn_figures, look_alike_queries

LAYERS = ('pool1', 'res2', 'res3', 'res4')

def fmn(layer='pool1', n_classes=8, size=(64, 32), seed=0):
    torch.manual_seed(seed)
    return FeatureMaskNetwork(*build_backbone('resnet_mini', pretrained=False, last_stride=2), n_classes=n_classes,
                              height=size[0], width=size[1], masked_layer=layer)

def stage2(model):
    "Freeze as fit_stages does in stage 2 (no gradient; GRN in eval mode)."
    model.train(); model.grn.requires_grad_(False); model.grn.eval(); model.grn_steps.fill_(1)
    return model

def toy_cfg(**kw):
    return get_preset('smoke', method='fmn', height=32, width=16, opt='sgd', lr=0.1, last_stride=2, device='cpu',
                      **{'method_options': {'grn_epochs': 1, 'lan_epochs': 1}, **kw})


def test_layers_and_error():
    assert tuple(MASKED_LAYERS) == LAYERS
    for bad in (lambda: lan_stages('res5'), lambda: mask_size(64, 32, 'conv1'), lambda: fmn('layer4'),
                lambda: FMN.parse({'masked_layer': 'res1'})):
        with pytest.raises(ValueError) as e: bad()
        assert all(l in str(e.value) for l in LAYERS), str(e.value)


@pytest.mark.parametrize('layer', LAYERS)
def test_mask_at_least_one_with_shape_hw(layer):
    model = stage2(fmn(layer))
    x = torch.randn(4, 3, 64, 32)
    with torch.no_grad(): f, g, _ = model.grn(x, layer)
    out = model(x)
    m = out.maps['mask']
    assert m.shape == (4, *mask_size(64, 32, layer)) == (4, *f.shape[-2:])
    assert (m >= 1).all()
    with torch.no_grad(): model.mn.fc.weight.normal_(0, 10.)  # large values of both signs: ReLU cuts, exp amplifies
    m = model.masks(x)
    assert (m >= 1).all() and (m == 1).any() and (m > 1).any()
    # Eq. 3: every channel of f is multiplied by the same mask
    o, m2 = model.mn(f, g)
    assert torch.allclose(o, f * m2[:, None])


def test_mask_sizes_match_a_forward_pass():
    trunk, _ = build_backbone('resnet_mini', pretrained=False, last_stride=2)
    trunk.eval()
    for H, W in ((224, 224), (128, 64), (65, 33), (40, 17)):
        x, shapes = torch.zeros(1, 3, H, W), {}
        with torch.no_grad():
            for n, m in trunk.named_children(): x = m(x); shapes[n] = tuple(x.shape[-2:])
        assert [mask_size(H, W, l) for l in LAYERS] == [shapes[MASKED_LAYERS[l]] for l in LAYERS]
    assert [mask_size(224, 224, l) for l in LAYERS] == [(56, 56), (56, 56), (28, 28), (14, 14)]  # Table 5


def test_column_major_reshape():
    h, w = 3, 4
    m = column_major(torch.arange(12.)[None], h, w)[0]
    for k in range(12): assert m[k % h, k // h] == k   # MATLAB: k = i + h·j
    with pytest.raises(ValueError, match='Expected'): column_major(torch.zeros(1, 11), h, w)


@pytest.mark.parametrize('layer', LAYERS)
def test_lan_stages_and_initial_weights(layer):
    model = fmn(layer)
    expected = {'pool1': ('layer1', 'layer2', 'layer3', 'layer4'), 'res2': ('layer2', 'layer3', 'layer4'),
                'res3': ('layer3', 'layer4'), 'res4': ('layer4',)}[layer]
    assert tuple(n for n, _ in model.lan.stages.named_children()) == expected == lan_stages(layer)
    for n in expected:  # θ_o → θ_l: the GRN's initial weights, in tensors of its own
        a, b = getattr(model.lan.stages, n).state_dict(), getattr(model.grn.trunk, n).state_dict()
        for k in a: assert torch.equal(a[k], b[k]) and a[k].data_ptr() != b[k].data_ptr()


def test_grn_init_and_random_stream_do_not_depend_on_the_masked_layer():
    states = []
    for layer in LAYERS:
        model = fmn(layer, seed=3)
        states.append(({k: v.clone() for k, v in model.grn.state_dict().items()}, torch.rand(3)))
    for sd, r in states[1:]:
        assert all(torch.equal(sd[k], states[0][0][k]) for k in sd) and torch.equal(r, states[0][1])


def test_ranking_loss_by_hand():
    # true-class probabilities: GRN 0.75 and 0.8, LAN 0.5 and 0.9; margin 0.05 → (0.3 + 0) / 2
    lg = torch.tensor([[np.log(3), 0.], [0., np.log(4)]]).float().requires_grad_()
    ll = torch.tensor([[0., 0.], [0., np.log(9)]]).float().requires_grad_()
    pids = torch.tensor([0, 1])
    loss = ranking_loss(lg, ll, pids, margin=0.05)
    assert abs(loss.item() - 0.15) < 1e-6
    loss.backward()
    assert lg.grad is None and ll.grad[1].abs().sum() == 0 and ll.grad[0].abs().sum() > 0
    # against a loop over random logits
    g = torch.Generator().manual_seed(0)
    a, b, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    ref = np.mean([max(0., float(torch.softmax(a[i], 0)[y[i]] - torch.softmax(b[i], 0)[y[i]] + 0.1)) for i in range(6)])
    assert abs(ranking_loss(a, b, y, margin=0.1).item() - ref) < 1e-6
    assert torch.allclose(true_class_probability(a, y), torch.softmax(a, 1)[torch.arange(6), y])


def test_descriptor_formula_and_halves():
    model = fmn()
    model.lan_steps.fill_(1); model.eval()
    x = torch.randn(5, 3, 64, 32)
    with torch.no_grad():
        f, g, _ = model.grn(x); o, _ = model.mn(f, g); l, _ = model.lan(o)
        D = model(x)
    model.alpha = 0.3
    with torch.no_grad(): D3 = model(x)
    for a, d in ((0.5, D), (0.3, D3)):
        ref = torch.cat([a * g / g.norm(dim=1, keepdim=True), (1 - a) * l / l.norm(dim=1, keepdim=True)], 1)
        assert torch.allclose(d, ref, atol=1e-6)
    cfg = get_preset('smoke', method='fmn', backbone='resnet_mini')
    halves = fmn_descriptors(cfg, FMNOptions())
    assert torch.allclose(halves['GRN'](D), 0.5 * F.normalize(g, dim=1), atol=1e-6)
    assert torch.allclose(halves['LAN'](D), 0.5 * F.normalize(l, dim=1), atol=1e-6)
    model.lan_steps.zero_()
    with torch.no_grad(): assert model(x)[:, model.channels:].abs().sum() == 0  # an untrained LAN adds nothing


def test_stage2_runs_the_grn_without_autograd():
    model = stage2(fmn())
    seen = []
    model.grn.trunk.layer4.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    model.lan.stages.layer4.register_forward_hook(lambda m, i, o: seen.append(torch.is_grad_enabled()))
    out = model(torch.randn(4, 3, 64, 32))
    assert seen == [False, True]
    assert out.logits['grn'].grad_fn is None and out.logits['lan'].requires_grad
    # stage 1: the LAN is not run at all
    model = fmn(); model.train(); model.mn.requires_grad_(False); model.lan.requires_grad_(False)
    seen.clear(); model.lan.stages.layer4.register_forward_hook(lambda m, i, o: seen.append('lan'))
    out = model(torch.randn(4, 3, 64, 32))
    assert seen == [] and out.logits['lan'] is None and out.logits['grn'].requires_grad


def test_two_stages_keep_the_grn_bit_identical():
    cfg = toy_cfg()
    opts = FMN.parse(cfg.method_options)
    dls, _, _ = toy_reid_dls(n_train_ids=8, n_imgs=4, bs=16, size=(32, 16))
    model = fmn(n_classes=8, size=(32, 16))
    learn = reid_learner(dls, model, cfg, loss_func=WeightedLoss(fmn_terms(cfg, opts)))
    snap = lambda m: {k: v.clone() for k, v in m.state_dict().items()}
    grn0, mn0, lan0 = snap(model.grn), snap(model.mn), snap(model.lan)
    s1, s2 = fmn_stages(cfg, opts)
    with learn.no_bar(), learn.no_logging(): fit_stages(learn, cfg, [s1])
    grn1, mn1, lan1 = snap(model.grn), snap(model.mn), snap(model.lan)
    assert any(not torch.equal(grn0[k], grn1[k]) for k in grn0)
    assert all(torch.equal(mn0[k], mn1[k]) for k in mn0) and all(torch.equal(lan0[k], lan1[k]) for k in lan0)
    with learn.no_bar(), learn.no_logging(): fit_stages(learn, cfg, [s2])
    grn2, mn2, lan2 = snap(model.grn), snap(model.mn), snap(model.lan)
    bn = [k for k in grn1 if k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    assert bn and all(torch.equal(grn1[k], grn2[k]) for k in grn1)   # parameters and BatchNorm buffers
    assert any(not torch.equal(lan1[k], lan2[k]) for k in lan1) and any(not torch.equal(mn1[k], mn2[k]) for k in mn1)
    h, n = learn.loss_parts.history, len(dls.train)
    isnan = lambda xs: all(x != x for x in xs)                      # a term a stage does not train: a gap, not a 0
    assert isnan(h['ce_lan'][:n]) and isnan(h['rank'][:n]) and isnan(h['ce_grn'][n:]) and min(h['ce_lan'][n:]) > 0


def test_stage2_without_a_trained_grn_is_refused(tmp_path):
    model = fmn(); model.train(); model.grn.requires_grad_(False)
    with pytest.raises(RuntimeError, match='never been trained.*grn_checkpoint'): model(torch.randn(2, 3, 64, 32))
    cfg = toy_cfg(method_options={'grn_checkpoint': str(tmp_path/'fmn-market'/'grn')})
    with pytest.raises(FileNotFoundError) as e: build_fmn(cfg, FMN.parse(cfg.method_options), 8)
    msg = str(e.value)
    assert str(tmp_path/'fmn-market'/'grn') in msg and 'ckpt_dir=D' in msg and 'D/grn' in msg


def _stage1_checkpoint(tmp_path, cfg):
    dls, _, _ = toy_reid_dls(n_train_ids=8, n_imgs=4, bs=16, size=(32, 16))
    opts = FMN.parse(cfg.method_options)
    model = fmn(n_classes=8, size=(32, 16))
    learn = reid_learner(dls, model, cfg, loss_func=WeightedLoss(fmn_terms(cfg, opts)))
    with learn.no_bar(), learn.no_logging(): fit_stages(learn, cfg, fmn_stages(cfg, opts)[:1], ckpt_dir=tmp_path)
    return model, tmp_path/'grn'


def test_stage1_reuse_and_refusals(tmp_path):
    cfg = toy_cfg()
    trained, folder = _stage1_checkpoint(tmp_path, cfg)
    res3 = toy_cfg(method_options={'grn_epochs': 1, 'lan_epochs': 1, 'masked_layer': 'res3', 'grn_checkpoint': str(folder)})
    assert grn_key(res3) == grn_key(cfg)
    opts = FMN.parse(res3.method_options)
    model = build_fmn(res3, opts, 8)
    assert all(torch.equal(a, b) for a, b in zip(model.grn.state_dict().values(), trained.grn.state_dict().values()))
    assert int(model.grn_steps) == int(trained.grn_steps) > 0 and int(model.lan_steps) == 0
    assert [s.name for s in fmn_stages(res3, opts)] == ['mn_lan']
    # another dataset and backbone: refused, naming both
    other = toy_cfg(dataset='synthreid-duke', backbone='resnet18', method_options=res3.method_options)
    with pytest.raises(ValueError) as e: load_grn(model, folder, other)
    assert "dataset 'synthreid' and backbone 'resnet_mini'" in str(e.value) and "dataset 'synthreid-duke' and backbone 'resnet18'" in str(e.value)
    with pytest.raises(ValueError, match="dataset 'synthreid'.*dataset 'synthreid-duke'"): load_grn(model, folder, toy_cfg(dataset='synthreid-duke'))
    with pytest.raises(ValueError, match="backbone 'resnet_mini'.*backbone 'resnet18'"): load_grn(model, folder, toy_cfg(backbone='resnet18'))
    with pytest.raises(ValueError, match='grn_epochs: 1 there, 2 now'): load_grn(model, folder, toy_cfg(method_options={'grn_epochs': 2}))
    # an unfinished stage 1
    state = json.loads((folder/'checkpoint.json').read_text()); state['n_epoch'] = 5
    (folder/'checkpoint.json').write_text(json.dumps(state))
    with pytest.raises(ValueError, match='unfinished: 1 of 5 epochs'): load_grn(model, folder, cfg)


def test_grn_config_ignores_stage2_and_evaluation():
    a = get_preset('quick', method='fmn', method_options={'grn_epochs': 4})
    b = get_preset('quick', method='fmn', name='x', rerank=False, flip_test=True,
                   method_options={'grn_epochs': 4, 'masked_layer': 'res4', 'alpha': 0.2, 'margin': 0.3, 'lan_epochs': 9})
    assert grn_config(a) == grn_config(b) and grn_config(a) == grn_config(a.to_dict())
    for change in (dict(seed=1), dict(lr=0.2), dict(height=64), dict(dataset='synthreid-duke'),
                   dict(method_options={'grn_epochs': 4, 'grn_drop': 0.5}), dict(method_options={'grn_epochs': 4, 'label_smoothing': 0.1})):
        assert grn_key(get_preset('quick', **{'method': 'fmn', 'method_options': {'grn_epochs': 4}, **change})) != grn_key(a), change


def test_method_runs_match_the_tables():
    from reid_nb.tables import runs_for_tables
    from reid_nb.methods.registry import run_overrides
    from reid_nb.methods.registry import get_method
    assert get_method('fmn') is FMN and FMN.flip_test is False and FMN.rerank is True
    needed = runs_for_tables(['FMN/table1_branches', 'FMN/table2_market', 'FMN/table3_duke',
                              'FMN/table4_cuhk03_new_protocol', 'FMN/table5_masked_layer'])
    assert set(needed) == set(FMN_RUNS)
    for name in FMN_RUNS:
        for preset, (opt, lr) in {'paper': ('sgd', 0.1), 'cpu': ('sgd', 0.01), 'quick': ('adam', 3e-3)}.items():  # quick: ours, 13_fmn
            cfg = get_preset(preset, **run_overrides(name, preset, FMN_RUNS))
            opts = FMN.parse(cfg.method_options)
            assert opts.masked_layer == (name.split('-')[1] if '-res' in name else 'pool1')
            assert (cfg.opt, cfg.lr, cfg.last_stride, cfg.random_erasing) == (opt, lr, 2, 0.0)
            assert cfg.epochs == opts.grn_epochs + opts.lan_epochs   # `epochs` is both stages together, as the reports list it
        assert ('smoke' in FMN_RUNS[name]['presets']) == (name == 'fmn-market')   # the smoke chain runs FMN once
        assert FMN_RUNS[name].get('reuse') == ({'grn_checkpoint': ['fmn-market', 'grn']} if '-res' in name else None)
    p = get_preset('paper', **run_overrides('fmn-market', 'paper', FMN_RUNS))
    assert (p.height, p.width, p.dataset) == (224, 224, 'market1501')
    assert sorted(fmn_descriptors(p, FMN.parse(p.method_options))) == ['GRN', 'LAN']


def test_a_small_run_end_to_end(tmp_path):
    from reid_nb.runner import Run
    cfg = get_preset('smoke', method='fmn', name='fmn-e2e', height=32, width=16, opt='sgd', lr=0.01, last_stride=2, epochs=2,
                     random_erasing=0., device='cpu', method_options={'grn_epochs': 1, 'lan_epochs': 1})
    run = Run(cfg, tmp_path/'run', 'smoke', progress=False)
    run.load_data(); run.build()
    with run.learn.no_bar(), run.learn.no_logging(): run.train()
    res = run.evaluate()
    assert {'GRN', 'LAN', 'single query + re-ranking'} <= set(res)
    assert [r.get('stage') for r in run.eval_cb.history][-1] == 'mn_lan'
    # the α sweep from the same features: α = 1 is the GRN alone, α = 0 the LAN alone, α = 0.5 the run's D
    sweep = alpha_sweep(run, [0., 0.5, 1.])
    for a, key in ((1., 'GRN'), (0., 'LAN'), (0.5, run.main)):
        assert abs(sweep[a]['rank1'] - res[key]['rank1']) < 1e-9 and abs(sweep[a]['mAP'] - res[key]['mAP']) < 1e-6, (a, key)
    for q, a, b in look_alike_queries(run, 3):
        assert run.g_pids[a] != run.q_pids[q]
    assert fmn_figures(run, alphas=[0., 0.5, 1.]) == ['fmn_masks.png', 'alpha_sweep.png']
    assert all((tmp_path/'run'/f).exists() for f in run.figures)
    grn = run.record().results['GRN']
    for k in ('rank1', 'mAP'):                      # the GRN's own 95 % interval over queries: around its estimate, not a point
        lo, hi = grn['ci95'][k]
        assert lo <= grn[k] <= hi and hi > lo, (k, lo, grn[k], hi)
