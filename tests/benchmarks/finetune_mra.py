"""Fine-tune the light MRA (ResNet-18-FPN Mask R-CNN + keypoint head) on SynthReID's COCO export, on a CPU.

Evaluates mask IoU, keypoint pixel error and PCK@0.1 against ground truth on held-out crops (other identities)
before and after training; writes mra_finetune.json and mra_finetune.png to --out (default nbs/assets, which the
masking chapter reads) and saves the checkpoint under data_dir('mra') (next to the files when --out is another folder,
so a trial run leaves the recorded run's checkpoint alone). Training stops after a fixed number of
iterations (--iterations, default 160: two epochs of the 'smoke' export), so a rerun does the same work on any
machine; --max-seconds adds a wall-time cap as a safety net (off by default; a capped run says so in its record).

    python tests/benchmarks/finetune_mra.py                      # the recorded run (rewrites nbs/assets/mra_finetune.*)
    python tests/benchmarks/finetune_mra.py --iterations 2 --n-eval 4 --out /tmp/mra   # a quick check elsewhere
"""
import argparse, time, json
from pathlib import Path
import numpy as np, torch
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter
from reid_nb.core import data_dir, seed_everything, write_json_atomic, atomic_path
from reid_nb.data.synth import generate_synthreid, load_synth_annotations
from reid_nb.data.pipeline import read_image
from reid_nb.masking import (Masker, TorchvisionMasker, GroundTruthMasker, CocoPersons, light_mra_model, finetune_mra,
                             evaluate_mra, save_mra, fallback_result, show_mask_results)

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO/'nbs'/'assets'

class WholeCrop(Masker):
    "The no-person fallback as a masker: whole-crop mask, no keypoints (a floor for the metrics)."
    backend = 'wholecrop'
    def identity(self): return dict(backend=self.backend, weights='none')
    def predict(self, images, paths=None): return [fallback_result(*np.asarray(im).shape[:2]) for im in images]

def kp_logit_stats(masker, paths, gt):
    "Keypoint logits of the masker on crops, split by ground-truth visibility (to choose kp_threshold)."
    vis, occ = [], []
    for i in range(0, len(paths), 8):
        ps = paths[i:i+8]
        for p, r in zip(masker([read_image(x) for x in ps], ps), gt(None, ps)):
            if not (p.found and r.found) or 'no_keypoints' in p.issues: continue
            vis += p.keypoint_scores[r.keypoints[:, 2] == 2].tolist(); occ += p.keypoint_scores[r.keypoints[:, 2] < 2].tolist()
    q = lambda a: [round(float(x), 2) for x in np.percentile(a, [10, 50, 90])] if a else []
    return dict(visible_p10_50_90=q(vis), not_visible_p10_50_90=q(occ))

def _no_nan(o):
    "JSON-safe copy of `o`: NaN (e.g. no keypoint reported) becomes null."
    if isinstance(o, float) and o != o: return None
    if isinstance(o, dict): return {k: _no_nan(v) for k, v in o.items()}
    if isinstance(o, list): return [_no_nan(v) for v in o]
    return o

def parse_args(argv=None) -> argparse.Namespace:
    "The run's settings: iterations (the stopping rule), an optional time cap, evaluation size, seed and output folder."
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--iterations', type=int, default=160, help='training iterations (batches of 4), the stopping rule (default 160)')
    ap.add_argument('--max-seconds', type=float, default=None, help='optional wall-time cap on training in seconds (default: none)')
    ap.add_argument('--n-eval', type=int, default=80, help='held-out query crops to evaluate on (default 80)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', type=Path, default=ASSETS, help=f'folder for mra_finetune.json / .png (default {ASSETS})')
    a = ap.parse_args(argv)
    if a.iterations < 1: ap.error(f'--iterations must be at least 1, got {a.iterations}')
    if a.max_seconds is not None and a.max_seconds <= 0: ap.error(f'--max-seconds must be positive, got {a.max_seconds}')
    return a

def loss_axis(ax, losses, every:int=10):
    "The training-loss panel: log y axis with a few labelled ticks (no overlapping minor labels)."
    ax.plot(np.arange(len(losses))*every, losses)
    ax.set_yscale('log'); lo, hi = min(losses), max(losses)
    ticks = [t for t in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 40, 50) if lo*0.9 <= t <= hi*1.1] or [round(lo, 1)]
    ticks = ticks[::max(1, len(ticks)//5)]
    ax.yaxis.set_major_locator(FixedLocator(ticks)); ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel('iteration', fontsize=8); ax.set_title('training loss (sum of terms)', fontsize=9); ax.tick_params(labelsize=7)

def main(iterations=160, max_seconds=None, n_eval=80, seed=0, out=ASSETS):
    # one thread: on a shared 2-core machine two threads contend and run ~3x slower; denormals slow a CPU down
    torch.set_num_threads(1); torch.set_flush_denormal(True); seed_everything(seed)
    root = generate_synthreid(size='smoke', seed=seed, progress=False)
    train = CocoPersons(root/'annotations'/'coco_person_bounding_box_train.json', flip_p=0.5, seed=seed)
    ann = load_synth_annotations(root, 'query')
    paths = [root/'query'/f'{s}.jpg' for s in sorted(ann)][:n_eval]
    size = dict(min_size=128, max_size=256)             # 2x the 128x64 crops
    model = light_mra_model('resnet18', **size, seed=seed)
    before = TorchvisionMasker(model, None, f'random-seed{seed}')
    res = dict(whole_crop_fallback=evaluate_mra(WholeCrop(), paths), before=evaluate_mra(before, paths))
    print('before', res['before'], flush=True)
    t0 = time.perf_counter()
    hist = finetune_mra(model, train, epochs=10**6, batch_size=4, lr=1e-3, seed=seed, max_iters=int(iterations), max_seconds=max_seconds)
    dt = time.perf_counter() - t0
    after = TorchvisionMasker(model, None, 'finetuned')
    res['after'] = evaluate_mra(after, paths)
    print('after', res['after'], f'{len(hist)} iterations in {dt:.0f} s', flush=True)
    ck_dir = data_dir('mra') if Path(out).resolve() == ASSETS.resolve() else Path(out)
    ck = save_mra(model, ck_dir/f'light_resnet18_synthreid-smoke-seed{seed}.pt')
    try: ck_name = f"$REID_NB_DATA/{ck.relative_to(data_dir()).as_posix()}"
    except ValueError: ck_name = str(ck)
    gt = GroundTruthMasker()
    record = dict(description='Light MRA (ResNet-18-FPN Mask R-CNN + keypoint head, GroupNorm, from scratch) trained on '
                           'SynthReID smoke bounding_box_train COCO export; evaluated on held-out query crops (other identities).',
               results=res, train_images=len(train), eval_images=len(paths), iterations=len(hist),
               epochs=round(len(hist)*4/len(train), 2), train_seconds=round(dt, 1), input_size='256x128 (2x upscaled 128x64 crops)',
               batch_size=4, lr=1e-3, checkpoint=ck_name, kp_logits_after=kp_logit_stats(after, paths, gt),
               loss_every_10=[round(float(np.mean([h['loss'] for h in hist[i:i+10]])), 4) for i in range(0, len(hist), 10)], max_iters=int(iterations),
               max_seconds=max_seconds, stopped_by=('iterations' if len(hist) >= iterations else 'max_seconds'),
               torch=torch.__version__)
    out_dir = Path(out); out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir/'mra_finetune.json', _no_nan(record))
    # figure: loss curve, metrics before/after, example predictions after training
    fig = plt.figure(figsize=(10, 4.2), dpi=100)
    loss_axis(fig.add_axes([0.06, 0.58, 0.28, 0.36]), record['loss_every_10'])
    ax = fig.add_axes([0.06, 0.1, 0.28, 0.34]); names = ['whole_crop_fallback', 'before', 'after']
    xs = np.arange(3); w = 0.38
    ax.bar(xs - w/2, [res[n]['mask_iou'] for n in names], w, label='mask IoU')
    ax.bar(xs + w/2, [res[n]['pck'] for n in names], w, label='PCK@0.1')
    ax.set_xticks(xs); ax.set_xticklabels(['whole crop', 'before', 'after'], fontsize=8); ax.set_ylim(0, 1); ax.legend(fontsize=7, loc='upper left'); ax.tick_params(labelsize=7)
    ps = paths[:6]; preds = after([read_image(p) for p in ps], ps)
    for i, (p, r) in enumerate(zip(ps, preds)):
        a = np.asarray(read_image(p)); k = r.keypoints; v = k[:, 2] > 0
        ax = fig.add_axes([0.38 + i*0.103, 0.08, 0.095, 0.84])
        ax.imshow((a*(0.3 + 0.7*r.mask[..., None])).astype(np.uint8)); ax.scatter(k[v, 0], k[v, 1], s=14, c='lime', edgecolors='k', linewidths=0.4)
        ax.set_xticks([]); ax.set_yticks([]); ax.set_title(f'IoU {((r.mask & gt(None, [p])[0].mask).sum()/max((r.mask | gt(None, [p])[0].mask).sum(), 1)):.2f}', fontsize=7)
    fig.suptitle(f"Light MRA on SynthReID: after {len(hist)} iterations ({dt/60:.1f} CPU min) — held-out crops", fontsize=9, x=0.68, y=0.995)
    with atomic_path(out_dir/'mra_finetune.png') as tmp: fig.savefig(tmp, format='png')
    print(json.dumps(record['results'], indent=1)); print(record['kp_logits_after'])
    return record

if __name__ == '__main__':
    a = parse_args()
    main(a.iterations, a.max_seconds, a.n_eval, a.seed, a.out)
