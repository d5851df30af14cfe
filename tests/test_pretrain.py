"""The stand-in for ImageNet weights: a disjoint world, a cache keyed by configuration, its budgets and notes. Training the
smoke stand-in once (`reid_nb.runner.standin_weights`: the stand-in is a run), caching it, loading it through `build_backbone`
and distrusting a corrupt record is checked by its chapter, nbs/07c_pretrain.ipynb, under nbdev_test (the same assertions,
once: it is a 30-second training). A model builder never trains it: asked for one not trained yet, it says how to make it."""
import json
import pytest, torch
from reid_nb.core import get_preset, PRESETS
from reid_nb.runner import validate_config
from reid_nb.model import build_backbone
from reid_nb.data.synth.layouts import WORLD_OFFSET
from reid_nb.pretrain import (STANDIN_SEED, STANDIN_BUDGETS, standin_config, standin_budget, standin_path, standin_file,
                              standin_record, weights_note)
from reid_nb.runner import standin_weights


def test_quick_and_cpu_start_from_their_standin_paper_from_imagenet_smoke_from_random():
    for p in ('quick', 'cpu'): assert get_preset(p).pretrained == f'standin:{p}'
    assert PRESETS['paper']['pretrained'] is True and PRESETS['smoke']['pretrained'] is False


def test_standin_world_is_no_analog_world():
    worlds = {s + off for s in range(10_000) for off in (0, *WORLD_OFFSET.values())}
    assert STANDIN_SEED not in worlds
    cfg = standin_config('resnet18', 'cpu')
    assert (cfg.data_seed, cfg.triplet_weight, cfg.pretrained) == (STANDIN_SEED, 0.0, False)


def test_cache_key_follows_the_configuration(monkeypatch):
    a = standin_path('resnet_mini', 'quick')
    monkeypatch.setitem(STANDIN_BUDGETS, 'quick', dict(STANDIN_BUDGETS['quick'], epochs=99))
    b = standin_path('resnet_mini', 'quick')
    assert a != b and a.name.startswith('resnet_mini-quick-') and b.name.startswith('resnet_mini-quick-')


def test_bad_budget_is_named():
    assert standin_budget('standin') == 'quick' and standin_budget('/w.pth') is None
    with pytest.raises(ValueError, match="pretrained='standin:huge' asks for stand-in budget 'huge'; valid: 'standin:smoke'"):
        validate_config(get_preset('quick', pretrained='standin:huge'))
    with pytest.raises(ValueError, match="'smoke', 'quick', 'cpu'"): standin_weights('resnet_mini', 'huge')


def test_weights_note_names_every_start():
    assert 'stand-in for ImageNet weights' in weights_note(['standin:quick'])
    assert weights_note([False]) == 'Our backbones started from random initialisation.'
    assert 'ImageNet' in weights_note([True]) and 'w.pth' in weights_note(['/x/w.pth'])


def test_a_model_builder_never_trains_the_standin(tmp_path, monkeypatch):
    "`build_backbone('…', pretrained='standin:…')` before the stand-in exists: an error naming the file and how to train it, no training."
    monkeypatch.setenv('REID_NB_DATA', str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"names the smoke stand-in weights of resnet_mini, expected at .*not trained yet.*standin_weights\('resnet_mini', 'smoke'\)"):
        build_backbone('resnet_mini', pretrained='standin:smoke')
    assert not any(tmp_path.rglob('*.pth'))
    with pytest.raises(FileNotFoundError, match='not trained yet'): standin_file('standin', 'resnet18')
