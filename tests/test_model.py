"Backbone shapes and strides, the pretrained-weights fallback, and choice errors of reid_nb.model."
import warnings
import pytest
import torch
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights
from reid_nb.core import get_preset
from reid_nb.model import BACKBONES, build_backbone, ReIDBaseline
from reid_nb.methods.registry import build_model


def _fmap(name, last_stride, h=256, w=128):
    bb, c = build_backbone(name, pretrained=False, last_stride=last_stride)
    with torch.no_grad(): return bb.eval()(torch.zeros(1, 3, h, w)).shape, c


@pytest.mark.parametrize('name', ['resnet_mini', 'resnet18', 'resnet50'])
def test_last_stride_doubles_feature_map(name):
    s1, c = _fmap(name, 1)
    s2, _ = _fmap(name, 2)
    assert s1 == (1, c, 16, 8) and s2 == (1, c, 8, 4)
    assert c == (2048 if name == 'resnet50' else 512)


def test_mmga_size_and_trunk_layout():
    s, c = _fmap('resnet50', 1, 384, 128)
    assert s == (1, 2048, 24, 8)  # MMGA §3.1: stage 4 is 24x8 at 384x128 with last stride 1
    bb, _ = build_backbone('resnet50', pretrained=False)
    assert [n for n, _ in bb.named_children()] == ['conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4']
    # Bottleneck: stride on conv2 and the downsample, both set to 1
    assert bb.layer4[0].conv2.stride == (1, 1) and bb.layer4[0].downsample[0].stride == (1, 1)
    assert bb.layer3[0].conv2.stride == (2, 2)  # other stages untouched


def test_backbones_match_torchvision_parameter_names():
    from torchvision.models import resnet18
    ref = {k for k in resnet18().state_dict() if not k.startswith('fc.')}
    bb, _ = build_backbone('resnet18', pretrained=False)
    assert set(bb.state_dict()) == ref


def _raise_offline(*a, **k): raise OSError('simulated: no network, no cached file')


def test_pretrained_fallback_warns_and_uses_random_init(monkeypatch):
    monkeypatch.setattr(ResNet18_Weights, 'get_state_dict', _raise_offline)
    with pytest.warns(UserWarning) as rec:
        bb, c = build_backbone('resnet18', pretrained=True)
    msg = ' '.join(str(r.message) for r in rec)
    for part in ('ResNet18_Weights.IMAGENET1K_V1', 'simulated: no network', 'TORCH_HOME', 'checkpoints',
                 'resnet18-f37072fd.pth', 'pretrained='):
        assert part in msg, (part, msg)
    assert bb.pretrained_weights is None
    assert c == 512


def test_pretrained_loads_when_weights_available(monkeypatch):
    from torchvision.models import resnet50
    ref = resnet50().state_dict()
    monkeypatch.setattr(ResNet50_Weights, 'get_state_dict', lambda self, *a, **k: ref)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        bb, _ = build_backbone('resnet50', pretrained=True, last_stride=1)
    assert torch.equal(bb.state_dict()['layer4.0.conv2.weight'], ref['layer4.0.conv2.weight'])
    assert bb.pretrained_weights == 'ResNet50_Weights.IMAGENET1K_V1'


def test_pretrained_path(tmp_path):
    src, _ = build_backbone('resnet_mini', pretrained=False)
    torch.save({'model': {f'module.{k}': v for k, v in src.state_dict().items()}}, tmp_path / 'w.pth')
    dst, _ = build_backbone('resnet_mini', pretrained=tmp_path / 'w.pth')
    for k, v in src.state_dict().items(): assert torch.equal(dst.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match='no such file'):
        build_backbone('resnet_mini', pretrained=tmp_path / 'missing.pth')
    torch.save({'fc.weight': torch.zeros(3)}, tmp_path / 'bad.pth')
    with pytest.raises(RuntimeError, match='do not fit'):
        build_backbone('resnet_mini', pretrained=tmp_path / 'bad.pth')


def test_resnet_mini_has_no_weights_and_says_so():
    with pytest.warns(UserWarning, match='no ImageNet weights'):
        build_backbone('resnet_mini', pretrained=True)


def test_unknown_names_list_valid_choices():
    with pytest.raises(ValueError) as e: build_backbone('vgg16')
    assert all(repr(n) in str(e.value) for n in BACKBONES)
    with pytest.raises(ValueError, match="'baseline'"): build_model(get_preset('smoke', method='nope'), 10)
    with pytest.raises(ValueError, match="'resnet50'"): build_model(get_preset('smoke', backbone='nope'), 10)
    with pytest.raises(ValueError, match='last_stride'): build_backbone('resnet_mini', pretrained=False, last_stride=3)


def test_baseline_train_and_eval_outputs():
    torch.manual_seed(0)
    cfg = get_preset('smoke', embed_dim=32)
    m = build_model(cfg, n_classes=7)
    x = torch.randn(4, 3, 64, 32)
    out = m.train()(x)
    logits, f_t = out.read('logits.id'), out.read('feats.triplet')
    assert logits.shape == (4, 7) and f_t.shape == (4, 32)
    m.eval()
    with torch.no_grad(): f_i = m(x)
    assert f_i.shape == (4, 32)
    # eval returns the BNNeck feature: BN (running stats) of the triplet feature
    with torch.no_grad(): assert torch.allclose(f_i, m.bnneck(m.embedding(m.backbone(x).mean((2, 3)))), atol=1e-5)
    m.neck_feat = 'before'
    with torch.no_grad(): assert not torch.allclose(m(x), f_i)
    assert not m.bnneck.bias.requires_grad and m.classifier.bias is None
    with pytest.raises(ValueError, match='at least 2'): build_model(cfg, 1)
