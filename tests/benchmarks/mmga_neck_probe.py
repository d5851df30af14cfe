"""Why MMGA's identity classifiers did not learn, and the BatchNorm neck that lets them: the evidence behind 11_methods.mmga.

Trains quick-preset MMGA runs (Market analog, resnet_mini stand-in, 128×64, Adam one-cycle, six image epochs) with
`neck='none'` (GAP → linear, the paper's words) and `neck='bn'` (GAP → linear → BatchNorm1d, ours), for the
unsupervised Baseline+Att and the full MMGA, with `reid_nb.train.TrainingProbe` recording per batch each group's
gradient norm, each feature's and each logits vector's norm. Writes the probe histories, the loss terms, the results
and the health findings to a JSON asset that the chapter plots. Usage:
  python tests/benchmarks/mmga_neck_probe.py --out nbs/assets/mmga_neck_probe.json [--variants att,mmga] [--epochs 6]"""
import argparse, time, warnings
from reid_nb.core import get_preset, write_json_atomic
from reid_nb.methods.registry import run_overrides
from reid_nb.runner import Run
from reid_nb.train import TrainingProbe, training_history

def probe_run(variant:str, neck:str, epochs:int, preset:str='quick') -> dict:
    name = 'mmga-market' if variant == 'mmga' else f'mmga-{variant}-market'
    o = run_overrides(name, preset); o.pop('name')
    o['method_options'] = {**o['method_options'], 'neck': neck}
    cfg = get_preset(preset, **{**o, 'epochs': epochs, 'name': f'{name}-neck-{neck}'})
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        run = Run(cfg, f'/tmp/mmga_neck_probe/{cfg.name}', preset=preset, progress=False)
        run.load_data(); run.build()
        probe = TrainingProbe(); run.learn.add_cb(probe)
        run.train(); run.evaluate()
    hist = training_history(run.learn)
    main = run.results[run.main]
    return dict(run=name, variant=variant, neck=neck, epochs=epochs, n_classes=run.ds.num_train_pids, seconds=round(time.time() - t0, 1),
                probe=probe.history, batches={k: v for k, v in hist['batches'].items() if not k.startswith('lr')},
                rank1=main['rank1'], mAP=main['mAP'], chance=run.chance, health=run.check_health())

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', required=True); ap.add_argument('--variants', default='att,mmga'); ap.add_argument('--epochs', type=int, default=6)
    a = ap.parse_args(argv)
    runs = []
    for variant in a.variants.split(','):
        for neck in ('none', 'bn'):
            r = probe_run(variant, neck, a.epochs); runs.append(r)
            ce = r['batches']['ce_whole']
            print(f"{r['run']} neck={neck}: ce_whole {ce[0]:.2f} → {ce[-1]:.2f}, feature norm {r['probe']['feat/whole'][0]:.1f} → "
                  f"{r['probe']['feat/whole'][-1]:.1f}, rank-1 {100*r['rank1']:.1f} %, mAP {100*r['mAP']:.1f} %, "
                  f"{len(r['health'])} health finding(s), {r['seconds']:.0f} s", flush=True)
    write_json_atomic(a.out, dict(preset='quick', dataset='synthreid (Market analog)', runs=runs))

if __name__ == '__main__': main()
