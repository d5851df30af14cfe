"""Training throughput on one GPU, in images per second, of the baseline and MMGA at 384×128 (ResNet-50, random weights):
fp32, bf16, and bf16 with channels_last, each through the runner's own pieces — a fastai `Learner` from `reid_learner`
with the callbacks of `reid_nb.train.precision_callbacks` (fastai's MixedPrecision, ChannelsLast) — on one
synthetic P×K batch served again and again (no data loading: the model's speed alone). Ratios to fp32 are printed.

    python tests/benchmarks/bench_throughput.py                  # CUDA, the paper's batch P×K = 24×4
    python tests/benchmarks/bench_throughput.py --device cpu --P 2 --K 2 --steps 2   # fp32 only: a check that it runs"""
import argparse, time
import torch
from reid_nb.core import get_preset
from reid_nb.methods.registry import build_model, build_loss
from reid_nb.train import reid_learner
from reid_nb.distributed import supported_precisions
from reid_nb.train import precision_callbacks
from reid_nb.methods.mmga import attention_size
from fastai.data.core import DataLoaders


class SameBatch:
    "A loader that serves one batch `n` times (what fastai's Learner needs of a loader: iteration, len, n_inp, to)."
    n_inp = 1
    def __init__(self, batch, n): self.batch, self.n = batch, n
    def __iter__(self): return iter([self.batch] * self.n)
    def __len__(self): return self.n
    def to(self, device): return self


def images_per_second(method, setting, args, device):
    precision, channels_last = setting
    cfg = get_preset('paper', method=method, pretrained=False, height=384, width=128, P=args.P, K=args.K, device=str(device),
                     precision=precision, channels_last=channels_last, opt='sgd')
    B, (h, w) = args.P * args.K, attention_size(384, 128)
    x = torch.randn(B, 3, 384, 128, device=device)
    pids = torch.arange(args.P, device=device).repeat_interleave(args.K)
    targets = {k: (torch.rand(B, h, w, device=device) > 0.5).float() for k in ('whole', 'upper', 'bottom')}
    targets['has_mask'] = torch.ones(B, device=device)
    batch = (x, pids, targets) if method == 'mmga' else (x, pids)
    model = build_model(cfg, 751).to(device)
    dls = DataLoaders(SameBatch(batch, args.steps), device=device)
    learn = reid_learner(dls, model, cfg, cbs=precision_callbacks(cfg, device), loss_func=build_loss(cfg))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, lr=1e-3)                                   # warm-up: allocations, cuDNN's choice of kernels
        if device.type == 'cuda': torch.cuda.synchronize()
        t0 = time.perf_counter(); learn.fit(1, lr=1e-3)
        if device.type == 'cuda': torch.cuda.synchronize()
    return B * args.steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--P', type=int, default=24); ap.add_argument('--K', type=int, default=4)
    ap.add_argument('--steps', type=int, default=20, help='timed steps per setting (after as many warm-up steps)')
    ap.add_argument('--device', default='cuda')
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available(): raise SystemExit('No CUDA device here: throughput not measured.')
    ok = supported_precisions(device)
    settings = [s for s in (('fp32', False), ('bf16', False), ('bf16', True)) if s[0] in ok]
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(f"{name}: batch {args.P}×{args.K} = {args.P * args.K} images at 384×128, ResNet-50, SGD, {args.steps} timed steps")
    for method in ('baseline', 'mmga'):
        ips = {s: images_per_second(method, s, args, device) for s in settings}
        for s, v in ips.items():
            label = s[0] + (' + channels_last' if s[1] else '')
            print(f"  {method:>8} {label:>22}: {v:8.1f} images/s   ×{v / ips[('fp32', False)]:.2f} of fp32")


if __name__ == '__main__':
    main()
