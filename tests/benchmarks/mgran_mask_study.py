"""Oracle versus predicted masks for MGRAN-RL — a study the paper does not have.

MGRAN-RL is trained and evaluated twice on the SynthReID Market analog, identical but for where its masks and
keypoints come from: the ground truth (an oracle), then the light MRA fine-tuned by `finetune_mra.py`. The light
MRA's mask IoU, keypoint error and PCK on the same images (its mask store) are measured beside the ReID gap.
Writes `nbs/assets/mgran_mask_study.json`, which the 12_alignment chapter reads.

Usage:
  python tests/benchmarks/finetune_mra.py                      # once: the light MRA checkpoint
  python tests/benchmarks/mgran_mask_study.py [--preset quick] [--out reports/mask-study] [--mra PATH] [--set FIELD=VALUE ...]

Each arm is an ordinary `reid_nb reproduce --only mgran-market` run, so a finished arm is reused and a killed one
resumes. `--collect` only reads two finished arms under --out (and measures the masks), running nothing."""
import argparse, json, subprocess, sys, time
from pathlib import Path
from reid_nb.core import data_dir, get_preset, write_json_atomic
from reid_nb.data.registry import load_dataset
from reid_nb.runner import RunRecord
from reid_nb.method import build_masker
from reid_nb.masking import extract_masks, score_masks, GroundTruthMasker

REPO = Path(__file__).resolve().parents[2]
ARMS = ('oracle', 'light_mra')

def _cli() -> str: return str(Path(sys.executable).with_name('reid_nb'))

def run_arm(arm:str, preset:str, out:Path, mra:Path, extra:list) -> float:
    "One arm through `reid_nb reproduce`; its wall time in seconds."
    sets = list(extra) + ([f'mask_source=light_mra:{mra}'] if arm == 'light_mra' else [])
    cmd = [_cli(), 'reproduce', '--preset', preset, '--only', 'mgran-market', '--out', str(out/arm)] + (['--set', *sets] if sets else [])
    print(' '.join(cmd), flush=True); t0 = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - t0

def _portable(source) -> str|None:
    "A mask source with the data folder written as $REID_NB_DATA, so the record holds no machine's path."
    return None if source is None else str(source).replace(str(data_dir(create=False)), '$REID_NB_DATA')

def _summary(rec:RunRecord) -> dict:
    pick = lambda r, k: dict(value=round(100*r[k], 1), ci95=[round(100*x, 1) for x in r['ci95'][k]])
    return {name: {k: pick(r, k) for k in ('rank1', 'mAP')} for name, r in rec.results.items()} | dict(
        pretrained=rec.config['pretrained'], mask_source=_portable(rec.recipe.get('mask_source')),
        mask_fallbacks=rec.recipe.get('notes', {}).get('mask_fallbacks'), train_seconds=round(rec.timings.get('train', 0)))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--preset', default='quick'); ap.add_argument('--out', default='reports/mask-study')
    ap.add_argument('--mra', default=None, help='light MRA checkpoint (default: the one finetune_mra.py saves)')
    ap.add_argument('--set', nargs='*', default=[], dest='extra', metavar='FIELD=VALUE', help='overrides for both arms')
    ap.add_argument('--collect', action='store_true', help='read two finished arms, run nothing')
    ap.add_argument('--record', default=str(REPO/'nbs'/'assets'/'mgran_mask_study.json'))
    a = ap.parse_args(argv)
    mra = Path(a.mra) if a.mra else data_dir('mra', create=False)/'light_resnet18_synthreid-smoke-seed0.pt'
    if not mra.is_file(): ap.error(f'the light MRA checkpoint {mra} does not exist: run tests/benchmarks/finetune_mra.py first, or pass --mra')
    out, seconds = Path(a.out), {}
    if not a.collect:
        for arm in ARMS: seconds[arm] = round(run_arm(arm, a.preset, out, mra, a.extra))
    recs = {arm: RunRecord.load(out/arm/'runs'/'mgran-market') for arm in ARMS}
    ds = load_dataset(get_preset(a.preset, **{k: v for k, v in recs['oracle'].config.items() if k in ('dataset', 'synth_size', 'data_seed')}), progress=False)
    # the light MRA's masks as the run used them: its mask store (complete after the run, so nothing is recomputed)
    store = extract_masks(build_masker(f'light_mra:{mra}'), [r.path for r in ds.train + ds.query + ds.gallery + ds.gt_bbox], ds.name, progress=False)
    gt = GroundTruthMasker(annotations=ds.root)
    score = lambda recs: score_masks([store[Path(r.path)] for r in recs], gt.predict(None, [r.path for r in recs]))
    quality = dict(train=score(ds.train), query_gallery=score(ds.query + ds.gallery), store=store.summary())
    arms = {arm: _summary(r) for arm, r in recs.items()}
    gap = {ev: {k: round(arms['oracle'][ev][k]['value'] - arms['light_mra'][ev][k]['value'], 1) for k in ('rank1', 'mAP')}
           for ev in recs['oracle'].results if ev in recs['light_mra'].results}
    record = dict(description='MGRAN-RL (mgran-market) with ground-truth masks (oracle) vs the light MRA\'s, same data, seed and recipe',
                  preset=a.preset, dataset=recs['oracle'].dataset['name'], mra_checkpoint=mra.name, arms=arms,
                  gap_oracle_minus_light=gap, mra_quality=quality,
                  wall_seconds=seconds or None)
    write_json_atomic(a.record, record)
    print(json.dumps(record, indent=1))

if __name__ == '__main__': main()
