"""MGRAN: a training step on V views run as one batch of B·V images, against a plain step on the same pixels (one batch of
B·V images, no views), and against a per-view Python loop; then building the views on CPU, in images/s.

Usage: python tests/benchmarks/bench_mgran.py [steps [backbone [height width]]]
All step variants use one trunk, the same MSML loss and an SGD step; they are timed interleaved (round robin) in one run,
so machine load hits them alike, and the ratios are of medians. The claim checked: V views cost ≤ 1.1× the same pixels
in one plain batch."""
import sys, time, statistics, warnings
import numpy as np
import torch
import torch.nn.functional as F
from reid_nb.model import build_backbone
from reid_nb.losses import margin_sample_mining_loss
from reid_nb.methods.mgran import MGRANNet, MGRANOptions, mgran_recipe, view_names
from reid_nb.data.pipeline import ReIDTransform, apply_recipe, read_image


def step_fns(backbone, P, K, V, H, W):
    torch.manual_seed(0)
    trunk, c = build_backbone(backbone, pretrained=False, last_stride=1)
    net = MGRANNet(trunk, c, view_names(MGRANOptions()))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(P*K, V, 3, H, W); pids = torch.arange(P).repeat_interleave(K)
    flat, flat_pids = x.flatten(0, 1), pids.repeat_interleave(V)

    def mgran():                                   # (B, V, 3, H, W) → one trunk call on B·V images → F → MSML
        opt.zero_grad(); margin_sample_mining_loss(net(x).feats['F'], pids).backward(); opt.step()

    def plain():                                   # the same B·V images as a plain batch: trunk → GAP → MSML
        opt.zero_grad(); margin_sample_mining_loss(trunk(flat).mean((2, 3)), flat_pids).backward(); opt.step()

    def loop():                                    # what we avoid: one trunk call per view
        opt.zero_grad()
        f = torch.cat([F.normalize(trunk(x[:, v]).mean((2, 3)), dim=-1) for v in range(V)], 1)
        margin_sample_mining_loss(f, pids).backward(); opt.step()

    net.train()
    return dict(mgran=mgran, plain=plain, loop=loop)


def bench_steps(steps=8, backbone='resnet_mini', H=128, W=64, P=8, K=3, V=4):
    fns = step_fns(backbone, P, K, V, H, W)
    for f in fns.values(): f()                     # warm-up
    times = {k: [] for k in fns}
    for _ in range(steps):
        for k, f in fns.items():
            t0 = time.perf_counter(); f(); times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"training step, {backbone} {H}x{W}, P={P} K={K} V={V} ({P*K*V} images of {H}x{W} per step), "
          f"{torch.get_num_threads()} thread(s), median of {steps}:")
    for k in fns: print(f"  {k:6s} {1000*med[k]:8.1f} ms   ratio to plain {med[k]/med['plain']:.3f}x")
    r = med['mgran']/med['plain']
    print(f"  claim: V views cost <= 1.1x the same pixels in one plain batch: {r:.3f}x -> {'holds' if r <= 1.1 else 'DOES NOT HOLD'}")
    return med


def bench_views(n=48, H=128, W=64):
    from reid_nb.data.registry import get_dataset
    from reid_nb.method import mask_extras
    ds = get_dataset('synthreid', size='smoke', progress=False)
    recs = ds.train[:n]; ex = mask_extras(ds, 'ground_truth')
    items = [(read_image(r.path), ex(r)) for r in recs]     # decoding and annotation reading are not timed
    tr = ReIDTransform((H, W), train=True)
    def rate(fn):
        fn(*items[0])
        t0 = time.perf_counter()
        for im, e in items: fn(im, e)
        return len(items)/(time.perf_counter() - t0)
    base = rate(lambda im, e: tr(im))
    print(f"building the views on CPU (train transform: resize, flip, pad-crop, per-view normalise + erasing), {H}x{W}, "
          f"{len(items)} SynthReID crops:")
    print(f"  {'image only (no views)':36s} {base:7.1f} images/s")
    for name, o in [('MGRAN-RL, crop (default)', MGRANOptions()), ('MGRAN-RL, full frame', MGRANOptions(region_view='full_frame')),
                    ('MGRAN-RL, crop, keep aspect', MGRANOptions(crop_fit='keep_aspect')), ('MGRAN-PL, crop', MGRANOptions(alignment='part'))]:
        r = mgran_recipe(None, o)
        v = rate(lambda im, e: apply_recipe(r, tr, im, e))
        print(f"  {name:36s} {v:7.1f} images/s ({len(view_names(o))*v:7.1f} views/s), {base/v:.2f}x the time of image only")


if __name__ == '__main__':
    warnings.simplefilter('ignore'); torch.set_flush_denormal(True)
    a = sys.argv[1:]
    steps = int(a[0]) if a else 8
    backbone = a[1] if len(a) > 1 else 'resnet_mini'
    H, W = (int(a[2]), int(a[3])) if len(a) > 3 else (128, 64)
    bench_steps(steps, backbone, H, W)
    bench_views(H=H, W=W)
