"""One short run of a method on the smoke preset, for tests/test_distributed.py: started alone, or as several processes by
`torchrun`. Rank 0 writes the per-step losses, the evaluation and the final metrics to a JSON file."""
import argparse, json, os
import torch
from fastai.callback.core import Callback
from reid_nb.core import get_preset
from reid_nb.cli import parse_overrides
from reid_nb.runner import Run
from reid_nb.train import load_checkpoint

p = argparse.ArgumentParser()
p.add_argument('method'); p.add_argument('out', help='JSON file rank 0 writes')
p.add_argument('--epochs', type=int, default=2)
p.add_argument('--ckpt', default=None, help='checkpoint folder (resume from it when it holds one)')
p.add_argument('--die-after', type=int, default=None, help='end every process abruptly once this epoch (1-based) is checkpointed')
p.add_argument('--sync-bn', type=int, default=1)
p.add_argument('--set', nargs='*', default=[], help='more ExperimentConfig fields, FIELD=VALUE')
p.add_argument('--then-evaluate', default=None, metavar='CKPT', help="afterwards, evaluate another run's checkpoint folder with these processes")
p.add_argument('--float64', action='store_true', help='train and evaluate in float64 (inputs cast on entering the model)')
args = p.parse_args()

class DieAfter(Callback):
    "A kill at a known point: every process exits without cleaning up once epoch `n` is checkpointed (order after it)."
    order = 80
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n: os._exit(9)

cfg = get_preset('smoke', name=args.method, method=args.method, epochs=args.epochs, synth_size='smoke', sync_bn=bool(args.sync_bn),
                 device='cpu', num_workers=0, **parse_overrides(args.set))
run = Run(cfg, os.path.dirname(os.path.abspath(args.out)) + f'/run-{os.environ.get("RANK", "solo")}', ckpt_dir=args.ckpt, progress=False)
run.load_data(); run.build()
if args.float64:   # rounding at 1e-16: what differs between one and two processes is then far below any real difference
    run.learn.model.double()
    run.learn.model.register_forward_pre_hook(lambda m, a: tuple(x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in a))

class Float64Loss(Callback):
    "Keep each training step's float64 loss; hand fastai's recorders a float32 copy (their running averages are float32)."
    def __init__(self): self.losses = []
    def after_loss(self):
        if not self.training: return
        self.losses.append(self.learn.loss.item()); self.learn.loss = self.learn.loss.float()

class FirstGradients(Callback):
    "Each parameter tensor's gradient sum, L2 norm and size after the first backward pass (DDP's all-reduce included), by name."
    order = 60
    def __init__(self): self.grads = None
    def after_backward(self):
        if self.grads is not None or not self.training: return
        model = getattr(self.learn.model, 'module', self.learn.model)
        self.grads = {n: [p.grad.sum().item(), p.grad.norm().item(), p.numel()] for n, p in model.named_parameters() if p.grad is not None}
class Trained(Callback):
    "The epochs this invocation trained (a resumed run skips those its checkpoint holds)."
    def __init__(self): self.epochs = set()
    def after_batch(self):
        if self.training: self.epochs.add(self.epoch)

trained, first, exact = Trained(), FirstGradients(), Float64Loss(); run.learn.add_cbs([trained, first] + ([exact] if args.float64 else []))
if args.die_after: run.learn.add_cb(DieAfter(args.die_after))
run.train(); run.evaluate()
h = run.learn.loss_parts.history
out = dict(loss=h['loss'], epoch=h['epoch'], eval=run.eval_cb.history, results=run.results, world=int(os.environ.get('WORLD_SIZE', 1)),
           trained_epochs=sorted(trained.epochs), first_grads=first.grads,
           loss64=exact.losses)
if args.then_evaluate:  # the same processes score another run's final weights
    load_checkpoint(run.learn, args.then_evaluate)
    run.results = {}; out['other'] = run.evaluate()
if run.is_main: json.dump(out, open(args.out, 'w'), default=lambda o: o.tolist())
