"""The smoke chain's baseline run (`reid_nb reproduce --preset smoke --only baseline`) of this checkout against another checkout (e.g. an earlier commit,
`git worktree add /tmp/before <commit>`), back to back and alternating, on one pre-generated dataset: wall and CPU time
ratios, and the largest difference between the two runs' metrics.

    python tests/benchmarks/bench_smoke_chain.py --other /tmp/before [--rounds 2] [--set epochs=3 ...]
"""
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
REID_NB = str(Path(sys.executable).parent/'reid_nb')
KEYS = ('rank1', 'rank5', 'rank10', 'mAP', 'mAP_trapezoid', 'mINP')

def chain(tree:Path, out:Path, data:Path, overrides=()) -> tuple[float, float, dict]:
    "Run the smoke chain with the package and notebooks of `tree`: (wall s, CPU s of the children, results by evaluation)."
    env = dict(os.environ, PYTHONPATH=str(tree), REID_NB_NBS=str(tree/'nbs'), REID_NB_DATA=str(data))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([REID_NB, 'reproduce', '--preset', 'smoke', '--out', str(out), '--quiet', '--only', 'baseline', *(['--set', *overrides] if overrides else [])], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode: sys.exit(f"the chain of {tree} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    rec = json.loads((out/'runs'/'baseline'/'metrics.json').read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, {k: {m: v[m] for m in KEYS if m in v} for k, v in (rec.get('results') or {'single query': rec['metrics']}).items()}

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--other', required=True, type=Path, help='the checkout to compare with (its reid_nb/ and nbs/)')
    ap.add_argument('--rounds', type=int, default=1)
    ap.add_argument('--set', nargs='*', default=[], metavar='FIELD=VALUE', help='configuration overrides for both chains')
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix='bench-chain-'))
    data = work/'data'
    subprocess.run([sys.executable, '-c', 'from reid_nb.data.synth import generate_synthreid; generate_synthreid(size="smoke", progress=False)'],
                   env=dict(os.environ, REID_NB_DATA=str(data)), check=True)
    times = {'this': [], 'other': []}; results = {}
    for r in range(args.rounds):
        for name, tree in (('other', args.other), ('this', HERE)):
            wall, cpu, res = chain(tree, work/f'{name}-{r}', data, args.set)
            times[name].append((wall, cpu)); results[name] = res
            print(f"round {r + 1} {name:>5}: {wall:6.1f} s wall, {cpu:6.1f} s CPU", flush=True)
    w = {k: sum(t[0] for t in v) for k, v in times.items()}; c = {k: sum(t[1] for t in v) for k, v in times.items()}
    print(f"this / other: wall {w['this'] / w['other']:.3f}, CPU {c['this'] / c['other']:.3f}")
    diffs = [abs(results['this'][e][m] - v) for e, ms in results['other'].items() for m, v in ms.items() if e in results['this']]
    print(f"largest metric difference over {len(diffs)} numbers: {max(diffs):.2e}")
    print(json.dumps({'this': results['this']['single query'], 'other': results['other']['single query']}, indent=1))
    shutil.rmtree(work, ignore_errors=True)

if __name__ == '__main__': main()
