"Dataset registry: names and options, defaults, summaries, the figure, and each synthetic analog through the experiment's data → train → evaluation path."
import os, warnings
from pathlib import Path
import numpy as np, pytest, torch
from reid_nb.data.registry import (get_dataset, DATASET_NAMES, DATASET_OPTIONS, SYNTHETIC_ANALOGS, datasets_summary,
                                   published_summary, show_samples, check_images, synth_sizes)
from reid_nb.data.market import ReIDDataset, CountMismatchWarning

SMALL_SYNTH = dict(n_train_ids=10, n_test_ids=10, n_distractors=6, n_junk=4)

def test_names_and_unknowns():
    assert DATASET_NAMES == ('market1501', 'dukemtmcreid', 'cuhk03', 'synthreid', 'synthreid-duke', 'synthreid-cuhk03')
    assert set(DATASET_OPTIONS) == set(DATASET_NAMES)
    with pytest.raises(ValueError, match="Unknown dataset 'viper'. Valid choices: 'market1501'"): get_dataset('viper')
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['split'\] for dataset 'dukemtmcreid'"): get_dataset('dukemtmcreid', split=2)
    with pytest.raises(ValueError, match="'smoke', 'default', 'cuhk03'"): get_dataset('synthreid-cuhk03', size='market')
    assert 'market' in synth_sizes('synthreid') and 'duke' in synth_sizes('synthreid-duke')
    assert all('quick' in synth_sizes(n) for n in SYNTHETIC_ANALOGS)              # the quick reproduction preset

def test_real_dataset_default_root(reid_nb_data, tmp_path):
    with pytest.raises(FileNotFoundError, match='none at the default place') as e: get_dataset('cuhk03')
    assert str(reid_nb_data/'cuhk03') in str(e.value)
    # a real-format tree at the default place is found, and checked against the published numbers
    root = reid_nb_data/'dukemtmcreid'
    for folder, names in dict(bounding_box_train=['0001_c1_f0000001.jpg'], query=['0002_c1_f0000002.jpg'],
                              bounding_box_test=['0002_c2_f0000003.jpg']).items():
        (root/folder).mkdir(parents=True)
        for n in names: (root/folder/n).write_bytes(b'')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ds = get_dataset('dukemtmcreid')
    assert any(x.category is CountMismatchWarning and 'expected 16,522 images' in str(x.message) for x in w)
    assert ds.root == root and ds.name == 'dukemtmcreid'
    with warnings.catch_warnings():
        warnings.simplefilter('error', CountMismatchWarning)
        get_dataset('dukemtmcreid', root, check_counts=False)

@pytest.fixture(scope='module')
def analogs(tmp_path_factory):
    "The three synthetic analogs at smoke size (SynthReID made smaller still), generated once into the session's data_dir."
    return {'synthreid': get_dataset('synthreid', size='smoke', overrides=SMALL_SYNTH, progress=False),
            'synthreid-duke': get_dataset('synthreid-duke', size='smoke', progress=False),
            'synthreid-cuhk03': get_dataset('synthreid-cuhk03', size='smoke', progress=False),
            'synthreid-cuhk03-classic': get_dataset('synthreid-cuhk03', size='smoke', progress=False, variant='labeled',
                                                    protocol='classic', split=5)}

def test_analogs_are_datasets_in_the_cache(analogs, reid_nb_data):
    for name, ds in analogs.items():
        assert isinstance(ds, ReIDDataset) and ds.name == name.replace('-classic', '')
        assert reid_nb_data in Path(ds.root).parents, ds.root
        assert ds.num_train_pids > 0 and ds.query and ds.gallery
    assert analogs['synthreid'].has_multi_query
    s = datasets_summary(analogs)
    assert s.loc[('synthreid-duke', 'gallery'), 'cameras'] == 8 and s.loc[('synthreid', 'train'), 'ids'] == 10
    assert s.loc[('synthreid-cuhk03-classic', 'query'), 'ids'] == 10 and s.loc[('synthreid-cuhk03', 'query'), 'ids'] == 20
    assert published_summary().loc[('cuhk03/new/detected', 'gallery'), 'images'] == 5332
    # the same call again reuses the generated trees (same roots, nothing regenerated)
    again = get_dataset('synthreid-duke', size='smoke', progress=False)
    assert again.root == analogs['synthreid-duke'].root

def test_show_samples_and_check_images(analogs):
    import matplotlib; matplotlib.use('Agg')
    ds = analogs['synthreid-duke']
    fig = show_samples(ds, n_ids=3)
    assert len(fig.axes) == 3*8
    fig = show_samples(analogs['synthreid-cuhk03'], n_ids=2, split='train')
    assert len(fig.axes) == 2*2
    with pytest.raises(ValueError, match='Identities \\[99999\\]'): show_samples(ds, pids=[99999])
    assert check_images(analogs['synthreid-cuhk03'], progress=False) == len({r.path for r in analogs['synthreid-cuhk03'].train
                                                                          + analogs['synthreid-cuhk03'].query + analogs['synthreid-cuhk03'].gallery})

@pytest.mark.parametrize('name', ['synthreid', 'synthreid-duke', 'synthreid-cuhk03', 'synthreid-cuhk03-classic'])
def test_experiment_path_on_each_analog(analogs, name):
    """What the experiment notebook does — dataloaders, a (short) resnet_mini fit or training step, features, the dataset's
    own evaluation — on each analog. A few steps do not make a model that identifies people (the smoke reproduction and
    tests/test_train.py show learning); what this proves is the path: features of exactly the query and gallery images,
    with their identities and cameras in loader order, scored under the analog's protocol. Features that encode the
    identity score rank-1 = mAP = 1 (wrong order, identities or protocol would not), and the model's are scored alike."""
    from reid_nb.core import get_preset, seed_everything
    from reid_nb.data.pipeline import build_dataloaders, eval_dataloader
    from reid_nb.train import SamplerEpoch
    from reid_nb.methods.registry import build_model, build_loss
    from reid_nb.train import reid_learner
    from reid_nb.evaluation import extract_features, euclidean_distance, pool_features
    from reid_nb.evaluation import evaluate_protocol, protocol_chance
    ds = analogs[name]
    cfg = get_preset('smoke', dataset=name.replace('-classic', ''), height=64, width=32, P=4, K=2, epochs=1, device='cpu')
    seed_everything(0)
    dls = build_dataloaders(ds, cfg)
    x, y = dls.train.one_batch()
    assert x.shape == (8, 3, 64, 32) and int(y.max()) < ds.num_train_pids
    model = build_model(cfg, ds.num_train_pids)
    if name == 'synthreid-duke':                       # the Learner does not care where batches come from: fit once
        learn = reid_learner(dls, model, cfg, cbs=[SamplerEpoch()])
        from fastai.callback.training import ShortEpochCallback
        with learn.no_bar(), learn.no_logging(): learn.fit(1, lr=1e-3, cbs=ShortEpochCallback(pct=0.25, short_valid=True))
        assert len(learn.recorder.losses) >= 1 and np.isfinite(float(learn.recorder.losses[-1]))
    else:
        model.train(); loss = build_loss(cfg)(model(x), y); loss.backward()
        assert torch.isfinite(loss)
    q = extract_features(model, eval_dataloader(ds.query, cfg, batch_size=128), flip=False, progress=False)
    g = extract_features(model, eval_dataloader(ds.gallery, cfg, batch_size=128), flip=False, progress=False)
    assert q[0].shape[0] == len(ds.query) and g[0].shape[0] == len(ds.gallery)
    assert q[1].tolist() == [r.pid for r in ds.query] and g[2].tolist() == [r.camid for r in ds.gallery]   # loader order
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')     # the analogs' few queries without a valid match are counted, and said so
        res = evaluate_protocol(euclidean_distance(q[0], g[0]), q[1], g[1], q[2], g[2], ds.protocol)   # the experiment's own dispatch
        ids = torch.unique(torch.cat([q[1], g[1]]))
        oracle = lambda pids: torch.nn.functional.one_hot(torch.searchsorted(ids, pids), len(ids)).float()
        perfect = evaluate_protocol(euclidean_distance(oracle(q[1]), oracle(g[1])), q[1], g[1], q[2], g[2], ds.protocol)
        chance = protocol_chance(q[1], g[1], q[2], g[2], ds.protocol)
    assert res['num_valid_queries'] == perfect['num_valid_queries'] > 0 and 0 <= res['rank1'] <= 1
    assert perfect['rank1'] == 1.0 and 0 < chance['rank1'] < 0.5, (perfect['rank1'], chance)
    if ds.protocol.get('eval') != 'single_gallery_shot': assert perfect['mAP'] == 1.0 and 0 < res['mAP'] <= 1   # mAP > 0: every valid query has a match somewhere
    else: assert 'mAP' not in res
    if ds.has_multi_query:                             # Market-layout multi-query through the flat format
        recs, owner = ds.multi_query_items()
        f = extract_features(model, eval_dataloader(recs, cfg, batch_size=128), flip=False, progress=False)[0]
        pooled = pool_features(f, owner, n_queries=len(ds.query), how='max')
        assert pooled.shape == q[0].shape
