"""The quick preset's choices, measured: the same quick run under the recipe's setting and an alternative, side by side.

Each choice the quick preset makes for a method (input size, learning-rate multiplier …) is stated in the method's
chapter with its measured effect; this script measures it. For every (run, label, overrides) of CHOICES it trains the
quick run with the overrides from the empty run folder and records rank-1, mAP (with intervals), chance, training
time and health findings into a JSON asset the chapters read. Usage:
  python tests/benchmarks/quick_choices.py --out nbs/assets/quick_choices.json [--only fmn-market,mgran-market]"""
import argparse, tempfile, time, warnings
from reid_nb.core import get_preset, write_json_atomic
from reid_nb.methods.registry import run_overrides
from reid_nb.runner import Run

CHOICES = [  # (run, label, overrides on top of the run's quick configuration, is this the recipe's choice)
    ('fmn-market', '64×32 input (before)', dict(height=64, width=32), False),
    ('fmn-market', '128×64 input (quick recipe)', {}, True),
    ('mgran-market', 'backbone_lr_mult 0.1: Adam 3·10⁻⁴ everywhere (quick recipe)', {}, True),
    ('mgran-market', 'backbone_lr_mult 1.0: Adam 3·10⁻³ everywhere', dict(backbone_lr_mult=1.0), False),
]

def measure(run:str, label:str, over:dict, chosen:bool) -> dict:
    o = run_overrides(run, 'quick'); o.pop('name')
    cfg = get_preset('quick', **{**o, **over, 'name': run})
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        r = Run(cfg, d, preset='quick', progress=False)
        r.load_data(); r.build(); r.train(); r.evaluate()
        health = r.check_health()
    m = r.results[r.main]
    return dict(run=run, method=cfg.method, label=label, overrides=over, chosen=chosen, height=cfg.height, width=cfg.width,
                rank1=m['rank1'], mAP=m['mAP'], ci95=m.get('ci95'), chance=r.chance, seconds=round(time.time() - t0, 1),
                health=[f['message'] for f in health],
                evaluations={k: dict(rank1=v['rank1'], mAP=v.get('mAP')) for k, v in r.results.items()})

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', required=True); ap.add_argument('--only', default=None, help='comma-separated run names')
    a = ap.parse_args(argv)
    only = a.only.split(',') if a.only else None
    rows = []
    for run, label, over, chosen in CHOICES:
        if only and run not in only: continue
        rows.append(r := measure(run, label, over, chosen))
        print(f"{run} [{label}]: rank-1 {100*r['rank1']:.1f} %, mAP {100*r['mAP']:.1f} % (chance {100*r['chance']['rank1']:.1f} / "
              f"{100*r['chance']['mAP']:.1f}), {r['seconds']:.0f} s, {len(r['health'])} health finding(s)", flush=True)
    write_json_atomic(a.out, dict(preset='quick', note='one seed, two CPU cores; times include evaluation', runs=rows))

if __name__ == '__main__': main()
