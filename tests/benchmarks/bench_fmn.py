"""FMN: time of a stage-2 training step against a stage-1 step on the same batch, measured in one run.

Stage 1 = GRN forward + backward + SGD step. Stage 2 = frozen GRN forward without autograd + MN + LAN forward +
backward + SGD step. Target (issue 11): stage 2 ≤ 1.35 × stage 1. For reference it also times stage 2 with a GRN
that is only *excluded from the optimiser* (parameters still requiring gradients, no `no_grad`): what a naive
freeze costs. The three steps are interleaved and the median of `--reps` repetitions is reported.

    python tests/benchmarks/bench_fmn.py                        # ResNet-50, 224×224, batch 8 (the paper's network)
    python tests/benchmarks/bench_fmn.py --backbone resnet_mini --height 128 --width 64 --batch 32
"""
import argparse, statistics, time
import torch
from reid_nb.core import get_preset
from reid_nb.model import build_backbone
from reid_nb.losses import WeightedLoss
from reid_nb.methods.fmn import FeatureMaskNetwork, FMNOptions, fmn_terms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--backbone', default='resnet50'); ap.add_argument('--height', type=int, default=224)
    ap.add_argument('--width', type=int, default=224); ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--layer', default='pool1'); ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--threads', type=int, default=None)
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n_classes = 100
    model = FeatureMaskNetwork(*build_backbone(a.backbone, pretrained=False, last_stride=2), n_classes=n_classes,
                               height=a.height, width=a.width, masked_layer=a.layer)
    model.grn_steps.fill_(1)
    cfg = get_preset('smoke', method='fmn')
    loss_func = WeightedLoss(fmn_terms(cfg, FMNOptions()))
    x = torch.randn(a.batch, 3, a.height, a.width)
    pids = torch.randint(0, n_classes, (a.batch,))

    def setup(stage):
        model.train()
        for p in model.parameters(): p.requires_grad_(True)
        if stage == 1:
            model.mn.requires_grad_(False); model.lan.requires_grad_(False); model.mn.eval(); model.lan.eval()
            params = list(model.grn.parameters())
        elif stage == 2:
            model.grn.requires_grad_(False); model.grn.eval()
            params = list(model.mn.parameters()) + list(model.lan.parameters())
        else:  # naive freeze: GRN out of the optimiser only, still differentiable
            model.grn.eval()
            params = list(model.mn.parameters()) + list(model.lan.parameters())
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    def step(stage):
        opt = setup(stage)
        t = time.perf_counter()
        loss = loss_func(model(x), pids)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    for s in (1, 2, 3): step(s)  # warm-up
    times = {1: [], 2: [], 3: []}
    for _ in range(a.reps):
        for s in (1, 2, 3): times[s].append(step(s))
    med = {s: statistics.median(v) for s, v in times.items()}
    print(f"FMN step times, {a.backbone} {a.height}×{a.width}, batch {a.batch}, masked layer {a.layer}, "
          f"{torch.get_num_threads()} threads, median of {a.reps}:")
    print(f"  stage 1 (GRN)                          {med[1]*1000:8.1f} ms")
    print(f"  stage 2 (MN + LAN, GRN without autograd) {med[2]*1000:6.1f} ms   ratio to stage 1: {med[2]/med[1]:.2f}× (target ≤ 1.35×)")
    print(f"  stage 2, GRN only out of the optimiser   {med[3]*1000:6.1f} ms   ratio to stage 1: {med[3]/med[1]:.2f}×")


if __name__ == '__main__':
    main()
