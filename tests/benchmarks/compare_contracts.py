"""What a reproduction promises, this checkout against another (e.g. the commit before a restructuring,
`git worktree add /tmp/before <commit>`): for every preset, the runs and their configurations, and the tables' ids,
titles, columns, rows, which rows are ours and their footnotes, and the claims; and every smoke run's model as built
from seed 0 (a digest of its initial weights). Nothing is trained.

    python tests/benchmarks/compare_contracts.py --other /tmp/before
"""
import argparse, json, os, subprocess, sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
PROBE = r'''
import json, warnings
warnings.simplefilter('ignore')
import reid_nb
from reid_nb.core import PRESETS, get_preset
import hashlib, torch
try: from reid_nb.methods.registry import experiments_for, build_model
except ImportError:
    from reid_nb.experiment import experiments_for
    from reid_nb.recipe import build_model
from reid_nb.tables import build_tables
from reid_nb.claims import check_claims
out = {}
for preset in PRESETS:
    runs = {n: get_preset(preset, **o).to_dict() for n, o in experiments_for(preset)}
    tables = build_tables([], preset)
    out[preset] = dict(runs=runs, tables={tid: dict(title=t['title'], columns=t['columns'], rows=[(r['row'], r['ours']) for r in t['rows']],
                                                    footnotes=t['footnotes']) for tid, t in tables.items()},
                       claims={c: dict(paper=v['paper'], rows=v['rows']) for c, v in check_claims(tables).items()})
models = {}
for name, o in experiments_for('smoke'):
    torch.manual_seed(0)
    sd = build_model(get_preset('smoke', **o), 10).state_dict()
    models[name] = hashlib.sha1(b''.join(k.encode() + v.detach().cpu().numpy().tobytes() for k, v in sd.items())).hexdigest()
out['smoke'].update(models=models)
print(json.dumps(dict(package=reid_nb.__file__, contracts=out)))
'''

def contracts(tree:Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    r = subprocess.run([sys.executable, '-c', PROBE], env=env, capture_output=True, text=True, cwd=tree)
    if r.returncode: sys.exit(f"probing {tree} failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if not Path(res['package']).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"{tree} has no reid_nb package of its own: the probe imported {res['package']}. Give a checkout of the repository.")
    return res['contracts']

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--other', required=True, type=Path, help='the checkout to compare with')
    args = ap.parse_args()
    this, other = contracts(HERE), contracts(args.other)
    same = True
    for preset in sorted(set(this) | set(other)):
        a, b = this.get(preset, {}), other.get(preset, {})
        for part in ('runs', 'tables', 'claims', 'models'):
            if part not in a and part not in b: continue
            x, y = a.get(part, {}), b.get(part, {})
            diff = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            same &= not diff
            print(f"{preset:>6} {part:>6}: {len(x)} here, {len(y)} there, " + ('identical' if not diff else f"DIFFERENT: {diff[:8]}"))
    print('every contract identical' if same else 'contracts differ')
    sys.exit(0 if same else 1)

if __name__ == '__main__': main()
