"""One MMGA training step against one step of the paper's Baseline (GAP + linear 1024, CE + 2·triplet), same batch,
384×128, ResNet-50 (random weights), SGD: forward, loss, backward, optimiser step. Steps of the two models alternate
so that both see the same machine load; the ratios of the median wall-clock and CPU (process) times are printed
(target ≤ 1.15). On a shared machine the CPU-time ratio with --threads 1 is the steadier of the two.

    python tests/benchmarks/bench_mmga_step.py              # P×K = 4×2 (CPU-sized)
    python tests/benchmarks/bench_mmga_step.py --threads 1  # one thread: CPU time = compute, whatever the load
    python tests/benchmarks/bench_mmga_step.py --P 24 --K 4 --device cuda   # the paper's batch"""
import argparse, statistics, time
import torch
from reid_nb.core import get_preset
from reid_nb.losses import WeightedLoss
from reid_nb.methods.mmga import MMGAOptions, build_mmga, mmga_terms, attention_size


def step_fn(variant, cfg, n_classes, device):
    o = MMGAOptions(variant)
    model = build_mmga(cfg, o, n_classes).to(device).train()
    loss = WeightedLoss(mmga_terms(cfg, o))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    def step(x, pids, targets):
        opt.zero_grad(set_to_none=True)
        l = loss(model(x), pids, targets)
        l.backward(); opt.step()
        if device.type == 'cuda': torch.cuda.synchronize()
        return l.item()
    return step, sum(p.numel() for p in model.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--P', type=int, default=4); ap.add_argument('--K', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=5); ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads: torch.set_num_threads(args.threads)
    cfg = get_preset('paper', pretrained=False, height=384, width=128, P=args.P, K=args.K)
    torch.manual_seed(0)
    B, (h, w) = args.P * args.K, attention_size(384, 128)
    x = torch.randn(B, 3, 384, 128, device=device)
    pids = torch.arange(args.P, device=device).repeat_interleave(args.K)
    targets = {k: (torch.rand(B, h, w, device=device) > 0.5).float() for k in ('whole', 'upper', 'bottom')}
    targets['has_mask'] = torch.ones(B, device=device)
    steps = {v: step_fn(v, cfg, 751, device) for v in ('baseline', 'mmga')}
    for v, (f, _) in steps.items(): f(x, pids, targets)                      # warm-up (allocations, kernels)
    times, cpu = {v: [] for v in steps}, {v: [] for v in steps}
    for _ in range(args.repeats):
        for v, (f, _) in steps.items():
            t0, c0 = time.perf_counter(), time.process_time(); f(x, pids, targets)
            times[v].append(time.perf_counter() - t0); cpu[v].append(time.process_time() - c0)
    med, mcpu = ({v: statistics.median(t) for v, t in d.items()} for d in (times, cpu))
    print(f"batch {args.P}×{args.K} = {B} images at 384×128 on {device}, ResNet-50, {args.repeats} alternating steps each, "
          f"{torch.get_num_threads()} threads")
    for v in steps:
        print(f"  {v:>8}: {steps[v][1]/1e6:6.2f} M parameters, step median {med[v]*1000:8.1f} ms wall "
              f"(min {min(times[v])*1000:.1f}, max {max(times[v])*1000:.1f}), {mcpu[v]*1000:8.1f} ms CPU")
    print(f"ratio MMGA / Baseline step time: {med['mmga'] / med['baseline']:.3f} wall, {mcpu['mmga'] / mcpu['baseline']:.3f} CPU  "
          "(target ≤ 1.15)")


if __name__ == '__main__':
    main()
