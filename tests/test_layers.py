"""The house: every import of every module of `reid_nb` (top level and inside functions) goes down the floors of
`reid_nb.core.LAYERS` or stays on its floor, with no circle; and the public API imports light."""
import ast, json, subprocess, sys
from pathlib import Path
import pytest
import reid_nb
from reid_nb.core import LAYERS, layer_of

PKG = Path(reid_nb.__file__).parent

def _modules() -> dict:
    "Module name → source file, for every module of the package (generated index aside)."
    out = {}
    for f in sorted(PKG.rglob('*.py')):
        if f.name == '_modidx.py': continue
        parts = f.relative_to(PKG.parent).with_suffix('').parts
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        out[name] = f
    return out

def _imports(name:str, f:Path) -> list[tuple[str, int]]:
    "Every `reid_nb` module `name` imports, wherever the import statement stands, with its line."
    pkg = name if f.name == '__init__.py' else name.rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith('reid_nb.')]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split('.')[:len(pkg.split('.')) - node.level + 1]
                mod = '.'.join(base + ([node.module] if node.module else []))
            else: mod = node.module or ''
            if not mod.startswith('reid_nb'): continue
            mods = _modules()
            for a in node.names:   # `from reid_nb import masking` imports the module reid_nb.masking
                sub = f'{mod}.{a.name}'
                found.append((sub if sub in mods else mod, node.lineno))
    return [(m, l) for m, l in found if m != 'reid_nb']

def _graph() -> dict:
    mods = _modules()
    return {n: sorted({m for m, _ in _imports(n, f) if m != n and m in mods}) for n, f in mods.items() if n != 'reid_nb'}

def test_every_module_is_on_a_floor():
    for name in _modules():
        if name != 'reid_nb': layer_of(name)   # raises, naming the module, for one LAYERS does not place

def test_no_import_goes_up_a_floor():
    ups = []
    for name, f in _modules().items():
        if name == 'reid_nb': continue
        for mod, line in _imports(name, f):
            if layer_of(mod) > layer_of(name):
                ups.append(f"{f.relative_to(PKG.parent)}:{line} imports {mod} (floor {layer_of(mod)}) from floor {layer_of(name)}")
    assert not ups, 'imports that go up a floor of reid_nb.core.LAYERS:\n' + '\n'.join(ups)

def _cycle(graph:dict):
    "One circle of `graph` (a list of modules), or None."
    state, stack = {}, []
    def visit(n):
        state[n] = 1; stack.append(n)
        for m in graph.get(n, []):
            if state.get(m) == 1: return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)): return c
        state[n] = 2; stack.pop()
    for n in graph:
        if n not in state and (c := visit(n)): return c

def test_no_import_circle():
    c = _cycle(_graph())
    assert c is None, 'an import circle: ' + ' → '.join(c)

def test_the_checks_catch_what_they_claim():
    "The walker sees imports inside functions, and the cycle finder finds a circle of three."
    tree = _imports('reid_nb.model', PKG/'model.py')
    assert ('reid_nb.pretrain', 14) in tree or any(m == 'reid_nb.pretrain' for m, _ in tree)
    assert _cycle({'a': ['b'], 'b': ['c'], 'c': ['a']}) == ['a', 'b', 'c', 'a']
    assert _cycle({'a': ['b'], 'b': [], 'c': ['a']}) is None
    fn = [m for m, _ in _imports('reid_nb.method', PKG/'method.py')]
    assert 'reid_nb.data.registry' in fn   # a function-level import (resolve_mask_source)

LIGHT = {'the MMGA model': 'from reid_nb.methods.mmga import MMGANet',
         'the MGRAN model': 'from reid_nb.methods.mgran import MGRANNet',
         'the FMN model': 'from reid_nb.methods.fmn import FeatureMaskNetwork',
         'the baseline model': 'from reid_nb.model import ReIDBaseline',
         'a loss': 'from reid_nb.losses import batch_hard_triplet_loss, margin_sample_mining_loss',
         'the evaluation': 'from reid_nb.evaluation import evaluate_ranking',
         're-ranking': 'from reid_nb.reranking import re_ranking'}

@pytest.mark.parametrize('what', list(LIGHT))
def test_the_public_api_imports_light(what):
    "In a fresh interpreter: importing a method's model, a loss, the evaluation or re-ranking loads no fastai, matplotlib, pandas or papermill."
    code = (f"import sys, json\n{LIGHT[what]}\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'fastai', 'matplotlib', 'pandas', 'papermill'})))")
    r = subprocess.run([sys.executable, '-W', 'ignore', '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [], f"{LIGHT[what]} loads {r.stdout.strip()}"
