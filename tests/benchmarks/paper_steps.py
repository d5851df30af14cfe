"""A few training steps of each method's `paper` recipe at its real size on this machine: do its loss terms move?

Each run takes the `paper` preset's configuration of its method — ResNet-50, the paper's input size, optimiser,
learning rates per group, schedule and loss weights — with random weights (no ImageNet download here) and the
SynthReID Market analog of the quick preset in place of Market-1501, with its ground-truth masks in place of Mask
R-CNN's (no detector weights here); P × K is shrunk to `--P` × `--K` for the CPU (stated in the output). Every stage of the method trains `--steps` batches; `reid_nb.train.TrainingProbe` records
gradient, feature and logits norms. Writes the loss terms per step, the probe and the timings to a JSON asset. Usage:
  python tests/benchmarks/paper_steps.py --out nbs/assets/paper_steps.json [--steps 12] [--P 4 --K 4]"""
import argparse, itertools, json, time, warnings
from pathlib import Path
from dataclasses import replace
from reid_nb.core import get_preset, write_json_atomic
from reid_nb.methods.registry import run_overrides
from reid_nb.method import DATASET_TAGS
from reid_nb.runner import Run
from reid_nb.train import TrainingProbe, training_history, fit_stages

RUNS = {'mmga-att-market (neck none)': ('mmga-att-market', {'neck': 'none'}), 'mmga-att-market (neck bn)': ('mmga-att-market', {'neck': 'bn'}),
        'mmga-market': ('mmga-market', {}), 'mgran-market': ('mgran-market', {}), 'fmn-market': ('fmn-market', {})}

class _FirstBatches:
    "The first `n` batches of a loader (what fastai's loop needs: iteration and a length)."
    def __init__(self, dl, n): self.dl, self.n = dl, n
    def __iter__(self): return itertools.islice(iter(self.dl), self.n)
    def __len__(self): return self.n

def paper_steps(label:str, steps:int, P:int, K:int) -> dict:
    name, opts = RUNS[label]
    o = run_overrides(name, 'paper'); o.pop('name')
    o.update(DATASET_TAGS['market'][1])                      # the quick Market analog instead of Market-1501
    o['method_options'] = {**o.get('method_options', {}), **opts}
    cfg = get_preset('paper', **{**o, 'synth_size': 'quick', 'pretrained': False, 'P': P, 'K': K, 'num_workers': 0,
                                 'mask_source': 'auto', 'name': f'{name}-paper-steps'})   # the analog's ground-truth masks: no Mask R-CNN weights here
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        run = Run(cfg, f'/tmp/paper_steps/{cfg.name}', preset='paper', progress=False)
        run.load_data(); run.build()
        learn = run.learn
        learn.remove_cb(run.eval_cb)                           # no evaluation: the steps are the point
        learn.dls.loaders[0] = _FirstBatches(learn.dls.train, steps)
        probe = TrainingProbe(); learn.add_cb(probe)
        t1 = time.time()
        fit_stages(learn, cfg, [replace(s, epochs=1) for s in run.stages])
    b = training_history(learn)['batches']
    return dict(label=label, run=name, height=cfg.height, width=cfg.width, backbone=cfg.backbone, opt=cfg.opt, lr=cfg.lr,
                backbone_lr_mult=cfg.backbone_lr_mult, P=P, K=K, stages=[s.name for s in run.stages], steps=steps,
                seconds_per_step=round((time.time() - t1) / (steps * len(run.stages)), 2), build_seconds=round(t1 - t0, 1),
                batches={k: v for k, v in b.items()}, probe=probe.history)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', required=True); ap.add_argument('--steps', type=int, default=12)
    ap.add_argument('--P', type=int, default=4); ap.add_argument('--K', type=int, default=4)
    ap.add_argument('--only', default=None, help='comma-separated labels of RUNS')
    a = ap.parse_args(argv)
    out = []
    old = json.loads(Path(a.out).read_text())['runs'] if Path(a.out).exists() and a.only else []   # --only: keep the others' records
    for label in (a.only.split(',') if a.only else RUNS):
        r = paper_steps(label, a.steps, a.P, a.K); out.append(r)
        terms = [k for k in r['batches'] if k not in ('epoch', 'loss') and not k.startswith('lr')]
        first_last = lambda k: [v for v in r['batches'][k] if v == v]
        print(f"{label}: {r['backbone']} {r['height']}×{r['width']}, {r['opt']} lr {r['lr']}, P×K {a.P}×{a.K}, "
              f"{r['seconds_per_step']} s/step; " + '; '.join(f"{k} {first_last(k)[0]:.3f} → {first_last(k)[-1]:.3f}" for k in terms),
              flush=True)
    done = {r['label'] for r in out}
    out = [r for r in old if r['label'] not in done] + out
    out.sort(key=lambda r: list(RUNS).index(r['label']))
    write_json_atomic(a.out, dict(note=f"paper recipes at real size, random weights, quick Market analog, P×K {a.P}×{a.K}, "
                                       f"{a.steps} steps per stage", runs=out))

if __name__ == '__main__': main()
