"""`reid_nb synth` end to end: the tree, bad sizes, a clashing seed (in-process, through the CLI's `main`), and the installed
console script itself (one subprocess: the entry point is what a subprocess proves)."""
import json, subprocess, sys
from pathlib import Path
import pytest
from reid_nb.data.synth import MARKET_FOLDERS, SYNTH_SIZES
from conftest import cli

REID_NB = Path(sys.executable).parent/'reid_nb'

def synth(*args):
    "`reid_nb synth ARGS` (generated data under the session's $REID_NB_DATA, see conftest)."
    return cli('synth', *args)

@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp('cli')/'smoke'
    r = synth('--size', 'smoke', '--out', out, '--seed', 0)
    assert r.returncode == 0, r.stderr
    return out, r

def test_console_script_runs_the_cli():
    "The installed `reid_nb` command is the CLI: it lists its five commands, and a usage error exits 2 with argparse's message."
    r = subprocess.run([str(REID_NB), '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(c in r.stdout for c in ('reproduce', 'run', 'synth', 'docs', 'readme')), r.stdout + r.stderr
    r = subprocess.run([str(REID_NB), 'synth', '--size'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'expected one argument' in r.stderr, r.stderr

def test_smoke_tree(smoke):
    out, r = smoke
    assert str(out) in r.stdout
    assert {p.name for p in out.iterdir()} == set(MARKET_FOLDERS) | {'annotations', 'synthreid.json'}
    meta = json.loads((out/'synthreid.json').read_text())
    assert meta['size'] == 'smoke' and meta['seed'] == 0
    for f in MARKET_FOLDERS:
        jpgs = list((out/f).glob('*.jpg'))
        assert jpgs and len(jpgs) == meta['counts'][f], f
        assert len(list((out/'annotations'/'parts'/f).glob('*.png'))) == len(jpgs), f
        assert (out/'annotations'/f'coco_person_{f}.json').exists()

def test_same_settings_reuse_the_tree(smoke):
    out, _ = smoke; marker = out/'synthreid.json'; before = marker.stat().st_mtime_ns
    r = synth('--size', 'smoke', '--out', out, '--seed', 0)
    assert r.returncode == 0, r.stderr
    assert marker.stat().st_mtime_ns == before                               # reused, not drawn again

def test_bad_size_lists_valid_sizes(tmp_path):
    r = synth('--size', 'huge', '--out', tmp_path/'x')
    assert r.returncode == 2
    assert 'huge' in r.stderr and all(f"'{s}'" in r.stderr for s in SYNTH_SIZES), r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path/'x').exists()

def test_other_seed_on_existing_tree(smoke):
    out, _ = smoke; before = (out/'synthreid.json').read_text()
    r = synth('--size', 'smoke', '--out', out, '--seed', 1)
    assert r.returncode == 2
    assert 'seed 0 vs 1' in r.stderr and '--overwrite' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr
    assert (out/'synthreid.json').read_text() == before                      # the old tree is untouched

def test_overwrite_replaces_the_tree(smoke):
    "Following the advice of the error above works. Runs last in this module: it replaces the shared tree."
    out, _ = smoke
    r = synth('--size', 'smoke', '--out', out, '--seed', 1, '--overwrite')
    assert r.returncode == 0, r.stderr
    assert json.loads((out/'synthreid.json').read_text())['seed'] == 1


def test_help_lists_the_sizes():
    r = cli('synth', '--help')
    assert r.returncode == 0 and all(s in ' '.join(r.stdout.split()) for s in SYNTH_SIZES), r.stdout
