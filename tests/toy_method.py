"""A method kept outside the package, as a user would write one: everything it needs comes from `reid_nb`, and its
whole declaration — options, sample, model, loss terms, stages, its run, the paper-table rows that run feeds and a
claim about them — is below. `toy_plugin.py` registers it (the one registry line); `$REID_NB_METHODS=toy_plugin`
makes every process of a reproduction (the papermill kernels) see it."""
from dataclasses import dataclass
from torch import nn
from reid_nb.core import Outputs, Stage
from reid_nb.model import build_backbone
from reid_nb.losses import Term, cross_entropy, batch_hard_triplet_loss
from reid_nb.data.pipeline import SampleRecipe
from reid_nb.method import Method, in_range, method_runs, MAIN, MAIN_RERANKED


@dataclass
class ToyOptions:
    margin:float = 0.3
    def check(self): return in_range('margin', self.margin, 0)


class TwoViewNet(nn.Module):
    "One trunk, one set of weights, for both views (run as one batch of B·V images); F = concat of the view features."
    def __init__(self, cfg, n_classes):
        super().__init__()
        self.trunk, c = build_backbone(cfg.backbone, pretrained=False)
        self.head = nn.Sequential(nn.Linear(2 * c, 64), nn.BatchNorm1d(64))
        self.classifier = nn.Linear(64, n_classes)
    def forward(self, x):                                          # x: (B, V=2, 3, H, W)
        B, V = x.shape[:2]
        f = self.trunk(x.flatten(0, 1)).mean((2, 3)).view(B, -1)  # (B, V·c)
        e = self.head(f)
        return Outputs(logits={'id': self.classifier(e)}, feats={'F': f}) if self.training else e


TABLE = 'MGRAN/table3_duke'   # a paper table (DukeMTMC-reID) whose reproduced row no smoke run feeds
TOY = Method(
    name='toy', summary='two views through one trunk, two stages, CE + triplet', options=ToyOptions,
    sample=lambda cfg, o: SampleRecipe(views=lambda s: {'image': s['image'], 'pedestrian': s['image'] * s['mask']},
                                       needs=('mask',)),
    model=lambda cfg, o, n: TwoViewNet(cfg, n),
    loss=lambda cfg, o: [Term('ce', cross_entropy, ('logits.id', 'pids'), 1.0, dict(label_smoothing=0.1)),
                         Term('triplet', batch_hard_triplet_loss, ('feats.F', 'pids'), 1.0, dict(margin=o.margin))],
    stages=lambda cfg, o: [Stage('all', epochs=1), Stage('head', epochs=1, freeze=('trunk',), opt='sgd', lr=1e-2)],
    rerank=True,
    runs=method_runs('toy', ['duke'], presets=('smoke',), method='toy', height=64, width=32, P=4, K=2,
                     rows={TABLE: {'OIM': MAIN, 'PAN': MAIN_RERANKED}}),    # two rows of one run: plain and re-ranked
    claims={'toy: re-ranking helps': ([TABLE], ['PAN', 'OIM'], '>')})
