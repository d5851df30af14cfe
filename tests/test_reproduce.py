"""End to end: `reid_nb reproduce --preset smoke` through papermill to an HTML index, and its failure modes."""
import re
import json, subprocess, sys, time
import pytest
from pathlib import Path

REID_NB = str(Path(sys.executable).parent/'reid_nb')


def run_cli(*args, timeout=900):
    return subprocess.run([REID_NB, *args], capture_output=True, text=True, timeout=timeout)


def leftovers(folder: Path):
    "Temporary names (`.x.tmp-…`) anywhere below `folder`."
    return [p for p in folder.rglob('.*') if '.tmp-' in p.name or '.old-' in p.name]


def test_smoke_reproduction(tmp_path):
    out = tmp_path/'reports'
    t0 = time.time()
    res = run_cli('reproduce', '--preset', 'smoke', '--out', str(out), timeout=1800)   # the baseline and one run of each method
    elapsed = time.time() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f'smoke reproduction: {elapsed:.0f} s')

    run = out/'runs'/'baseline'
    for name in ['baseline.ipynb', 'baseline.html', 'metrics.json', 'cmc.png', 'ranked_list.png', 'training_curves.png']:
        assert (run/name).stat().st_size > 0, name
    rec = json.loads((run/'metrics.json').read_text())
    m, chance = rec['metrics'], rec['chance']
    print(f"rank-1 {m['rank1']:.3f} (chance {chance['rank1']:.3f}), mAP {m['mAP']:.3f} (chance {chance['mAP']:.3f})")
    # far above chance: a random ranking of this gallery scores rank-1 ≈ 1.6 %, mAP ≈ 3 %; the smoke run
    # (a random-init resnet_mini, 30 epochs on 314 images) reaches ≈ 45 % on both
    assert m['rank1'] > max(0.3, 10*chance['rank1'])
    assert m['mAP'] > max(0.3, 8*chance['mAP'])
    assert 0 <= m['mAP'] <= 1 and len(m['cmc']) == 50 and m['cmc'][0] == m['rank1']
    assert rec['config']['backbone'] == 'resnet_mini' and rec['preset'] == 'smoke'

    index = (out/'index.html').read_text()
    assert 'runs/baseline/baseline.html' in index and 'smoke' in index and 'synthreid' in index
    results = json.loads((out/'results.json').read_text())
    table = results['runs']
    assert [(r['run'], r['evaluation']) for r in table if r['run'] == 'baseline'] == [
        ('baseline', 'single query'), ('baseline', 'multi query'), ('baseline', 'single query + re-ranking')]
    assert abs(table[0]['rank-1'] - 100*m['rank1']) < 1e-9
    assert rec['results']['single query'] == m
    lo, hi = m['ci95']['rank1']; assert lo <= m['rank1'] <= hi and hi - lo > 0   # 95 % bootstrap interval over queries
    # each method's path once: its evaluations, and its own figures drawn by the runner's hooks inside the kernel
    methods = {'mmga-market': (['single query', 'multi query'], ['attention_before.png', 'attention_after.png']),
               'mgran-market': (['single query', 'multi query', 'without f_g'], ['figure4.png']),
               'fmn-market': (['single query', 'multi query', 'single query + re-ranking', 'GRN', 'LAN'], ['alpha_sweep.png'])}
    for name, (evaluations, figures) in methods.items():
        r = json.loads((out/'runs'/name/'metrics.json').read_text())
        assert list(r['results']) == evaluations, (name, list(r['results']))
        for f in figures: assert f in r['figures'] and (out/'runs'/name/f).stat().st_size > 0, (name, f)
        assert [(t['run'], t['evaluation']) for t in table if t['run'] == name] == [(name, e) for e in evaluations]
    notes = json.loads((out/'runs'/'mgran-market'/'metrics.json').read_text())['recipe']['notes']
    assert notes['mask_fallbacks']['images'] > 0                 # MGRAN's fallbacks, counted over every image of the run
    sweep = json.loads((out/'runs'/'fmn-market'/'metrics.json').read_text())['recipe']['notes']['alpha_sweep']
    assert len(sweep) == 11 and all(0 <= v['mAP'] <= 1 for v in sweep.values())
    # every table of the three papers, the papers' numbers exactly as in paper_tables.json, ours null (no method run yet)
    paper = json.loads((Path(__file__).parents[1]/'reid_nb'/'paper_tables.json').read_text())
    ids = [f'{p}/{t}' for p in ('MGRAN', 'MMGA', 'FMN') for t in paper[p] if t != 'source']
    assert list(results['tables']) == ids and len(ids) == 12
    # the index opens with the claims summary; the smoke preset runs one row of each claim at most, so none is decided
    from reid_nb.claims import CLAIMS
    assert list(results['claims']) == list(CLAIMS) and '<h2>Claims</h2>' in (out/'index.html').read_text()
    assert re.search(r'Gallery: \d+ images: 40 ids \+ \d+ distractors', (out/'index.html').read_text())   # not '41 ids'
    assert all(c['verdict'] in ('not measured', 'cannot tell', 'holds', 'does not hold') for c in results['claims'].values())
    assert 'started from random initialisation' in ' '.join(results['tables']['MMGA/table1_ablation']['footnotes'])
    for tid, tab in results['tables'].items():
        src = paper[tid.split('/')[0]][tid.split('/')[1]]
        assert tab['columns'] == src['columns'] and [r['row'] for r in tab['rows']] == list(src['rows'])
        for r in tab['rows']:
            assert [r['paper'][c] for c in src['columns']] == src['rows'][r['row']]
            assert r['ours'] == (r['row'] in src['reproduced_rows']) and r['preset'] == 'smoke'
        assert (out/'tables'/f"{tid.replace('/', '_')}.html").exists()
    # re-ranking helps here as in the papers' "+ RK" rows; mAP moves most
    assert rec['results']['single query + re-ranking']['mAP'] > m['mAP']
    assert not leftovers(out)


def test_invalid_config_fails_before_any_kernel_starts(tmp_path):
    out = tmp_path/'reports'
    res = run_cli('reproduce', '--preset', 'smoke', '--out', str(out), '--quiet', '--set', 'backbone=vgg11', 'P=1')
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Unknown backbone 'vgg11'" in res.stderr and 'resnet50' in res.stderr, res.stderr
    assert 'P must be at least 2' in res.stderr, res.stderr
    assert not out.exists()   # nothing was started, nothing written


def test_failed_run_keeps_its_notebook_and_no_partial_results(tmp_path):
    "A run that fails inside the kernel (a Market-1501 layout whose folders hold no image) leaves no run folder."
    empty = tmp_path/'Market-1501'
    for f in ('bounding_box_train', 'bounding_box_test', 'query'): (empty/f).mkdir(parents=True)
    out = tmp_path/'reports'
    res = run_cli('reproduce', '--preset', 'smoke', '--out', str(out), '--quiet', '--only', 'baseline',
                  '--set', 'dataset=market1501', f'data_root={empty}', 'pretrained=false')
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'No images found' in res.stderr and 'bounding_box_train' in res.stderr, res.stderr   # what and where
    assert not (out/'runs'/'baseline').exists() and not (out/'index.html').exists()
    assert (out/'failed'/'baseline.ipynb').exists()               # kept for debugging
    assert not leftovers(out)


def test_missing_dataset_folder_fails_before_any_kernel_starts(tmp_path):
    "A Market-1501 folder without its sub-folders is named at once, before any kernel; nothing is written."
    missing = tmp_path/'Market-1501'
    missing.mkdir()
    out = tmp_path/'reports'
    res = run_cli('reproduce', '--preset', 'smoke', '--out', str(out), '--quiet', '--only', 'baseline',
                  '--set', 'dataset=market1501', f'data_root={missing}')
    assert res.returncode == 2, res.stdout + res.stderr
    assert 'bounding_box_train' in res.stderr and 'nothing was run' in res.stderr, res.stderr
    assert not out.exists()


def test_bad_cli_input():
    res = run_cli('reproduce', '--preset', 'huge')
    assert res.returncode == 2 and "Valid choices: 'smoke', 'quick', 'cpu', 'paper'" in res.stderr
    res = run_cli('reproduce', '--tables', 'MMGA/table7')
    assert res.returncode == 2 and "MMGA/table1_ablation" in res.stderr, res.stderr
    res = run_cli('reproduce', '--set', 'epochs=many')
    assert res.returncode == 2 and "expects an integer" in res.stderr
    res = run_cli('reproduce', '--set', 'name=mine')
    assert res.returncode == 2 and "drop 'name'" in res.stderr
    res = run_cli('reproduce', '--only')
    assert res.returncode == 2 and 'expected at least one argument' in res.stderr
    res = run_cli('reproduce', '--only', 'basline', 'fmn-duke')          # fmn-duke is a run of other presets, not smoke
    assert res.returncode == 2 and "Unknown run(s) 'basline', 'fmn-duke' for preset 'smoke'" in res.stderr, res.stderr
    assert "Did you mean 'baseline' for 'basline'?" in res.stderr and 'baseline, mmga-market, mgran-market, fmn-market' in res.stderr
    res = run_cli('reproduce', '--set', 'epoch=3')
    assert res.returncode == 2 and "Unknown field 'epoch' in --set. Did you mean 'epochs'?" in res.stderr, res.stderr
    res = run_cli('reproduce', '--preset', 'quick', '--list')
    assert res.returncode == 0 and res.stdout.split()[:3] == ['run', 'method', 'dataset'] and 'fmn-res4-market' in res.stdout
    res = run_cli('reproduce', '--help')
    assert 'baseline, mmga-market, mgran-market, fmn-' in res.stdout and '--list' in res.stdout


def test_missing_weights_fail_before_any_kernel_starts(tmp_path):
    "A mask network's or a backbone's weights file that is not there: one error naming it, before any kernel; nothing written."
    out = tmp_path/'reports'
    res = run_cli('reproduce', '--out', str(out), '--only', 'mgran-market', '--set', f'mask_source=light_mra:{tmp_path}/mra.pth')
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{tmp_path}/mra.pth: needed by mgran-market (mask_source='light_mra:{tmp_path}/mra.pth')" in res.stderr, res.stderr
    assert 'Traceback' not in res.stderr and not out.exists()
    res = run_cli('reproduce', '--out', str(out), '--set', f'pretrained={tmp_path}/resnet.pth')
    assert res.returncode == 2 and f"'{tmp_path}/resnet.pth', which does not exist" in res.stderr, res.stderr
    assert not out.exists()


def test_experiment_notebook_has_no_latex():
    "The run pages render the experiment notebook offline: its markdown has no equations MathJax would have to typeset."
    nb = json.loads((Path(__file__).parents[1]/'nbs'/'90_experiment.ipynb').read_text())
    md = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown']
    assert md and not [m for m in md if '$' in m or '\\(' in m]


def _without_times(results: dict) -> dict:
    "results.json less what differs between two identical runs: the measured times."
    return {**results, 'runs': [{k: v for k, v in r.items() if k != 'time (s)'} for r in results['runs']]}


def test_a_killed_run_resumes_from_its_checkpoint_to_the_uninterrupted_results(tmp_path):
    """kill -9 after the first of two epochs is checkpointed: the rerun says where it resumes, trains epoch 2 only, prints
    it, clears its own leftovers (only those), renders a clean page, and its results.json equals an uninterrupted run's."""
    import os, signal
    out = tmp_path/'reports'; runs = out/'runs'
    args = ['reproduce', '--only', 'baseline', '--set', 'epochs=2', 'rerank=false']
    with open(tmp_path/'first.out', 'w') as log:
        p = subprocess.Popen([REID_NB, *args, '--out', str(out)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    while not list((out/'checkpoints').glob('baseline-*/*/checkpoint.json')):   # epoch 1 is saved, epoch 2 under way
        assert p.poll() is None and time.time() - t0 < 600, 'the run ended before its first checkpoint: ' + (tmp_path/'first.out').read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    killed = [d.name for d in runs.glob('.baseline.tmp-*')]
    assert killed, 'kill -9 left no temporary run folder to clear'
    (runs/'.fmn-market.tmp-0a1b2c3d').mkdir()                       # another run's leftovers are not this run's to clear
    res = run_cli(*args, '--out', str(out))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(d.name for d in runs.iterdir()) == ['.fmn-market.tmp-0a1b2c3d', 'baseline'], list(runs.iterdir())
    lines = res.stdout.splitlines()
    assert re.fullmatch(r'\[1/1\] baseline: computing \(not run yet; resumes after epoch 1 of 2 \(stage \w+\)\)', lines[0]), lines
    assert any(' data: synthreid, 314 training images' in l for l in lines), lines
    epoch = [l for l in lines if 'epoch 2/2: loss ' in l]
    assert len(epoch) == 1 and 'rank-1 ' in epoch[0] and 'mAP ' in epoch[0], lines      # one line per epoch, with the latest scores
    assert not any('epoch 1/2: loss ' in l for l in lines), lines                         # epoch 1 came from the checkpoint
    assert 'without encryption' not in res.stderr and 'IPKernelApp' not in res.stderr and 'cell/s' not in res.stderr, res.stderr
    page = (runs/'baseline'/'baseline.html').read_text()
    assert '#| slow' not in page and '#| export' not in page
    assert page.count('out_dir</span> <span class="o">=</span>') == 1  # the injected parameters only, not the defaults too
    whole = run_cli(*args, '--out', str(tmp_path/'whole'))
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    resumed, uninterrupted = (json.loads((d/'results.json').read_text()) for d in (out, tmp_path/'whole'))
    assert resumed['runs'][0]['mAP'] > resumed['runs'][0]['chance mAP']
    assert _without_times(resumed) == _without_times(uninterrupted)   # same seeds, CPU: the same numbers to the last bit


@pytest.mark.parametrize('dataset, options, evaluation', [
    ('synthreid-duke', {}, 'ranking'),
    ('synthreid-cuhk03', {'protocol': 'new', 'variant': 'labeled'}, 'ranking'),
    ('synthreid-cuhk03', {'protocol': 'classic', 'variant': 'detected', 'split': 1}, 'single_gallery_shot'),
])
def test_experiment_runs_on_each_synthetic_analog(tmp_path, dataset, options, evaluation):
    "The same notebook and code path as real data, on each analog in its real format (two epochs: the path, not the score)."
    out = tmp_path/'reports'
    res = run_cli('reproduce', '--preset', 'smoke', '--out', str(out), '--quiet', '--only', 'baseline',
                  '--set', f'dataset={dataset}', f'dataset_options={json.dumps(options)}', 'epochs=2', 'rerank=false')
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rec = json.loads((out/'runs'/'baseline'/'metrics.json').read_text())
    assert rec['dataset']['name'] == dataset and rec['config']['dataset_options'] == options
    for k, v in options.items(): assert rec['dataset']['protocol'][k] == v
    assert (rec['dataset']['protocol'].get('eval') == 'single_gallery_shot') == (evaluation == 'single_gallery_shot')
    assert ('mAP' in rec['metrics']) == (evaluation == 'ranking')
    assert 0 <= rec['metrics']['rank1'] <= 1 and len(rec['metrics']['cmc']) == 50


def test_finished_runs_are_reused_corrupt_ones_recomputed_and_force_reruns(tmp_path):
    "The cache: a finished run of the same configuration is reused, a truncated metrics.json never enters a table."
    out = tmp_path/'reports'
    args = ('reproduce', '--preset', 'smoke', '--out', str(out), '--only', 'baseline', '--set', 'epochs=2', 'rerank=false')
    res = run_cli(*args)
    assert res.returncode == 0 and 'baseline: computing (not run yet)' in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = out/'runs'/'baseline'/'metrics.json'
    first, stamp = json.loads(metrics.read_text()), metrics.stat().st_mtime_ns
    res = run_cli(*args)                                           # same configuration: nothing recomputed
    assert res.returncode == 0 and 'baseline: reused (finished earlier with this configuration)' in res.stdout, res.stdout
    assert metrics.stat().st_mtime_ns == stamp and '<td>reused</td>' in (out/'index.html').read_text()
    dry = run_cli(*args, '--dry-run')
    assert dry.returncode == 0 and 'reuse' in dry.stdout and '0 to compute' in dry.stdout, dry.stdout
    metrics.write_text(metrics.read_text()[:200])                  # a run killed while writing, or a damaged file
    res = run_cli(*args)
    assert res.returncode == 0 and 'its metrics.json is corrupt (JSONDecodeError' in res.stdout, res.stdout
    again = json.loads(metrics.read_text())                        # recomputed (from its checkpoint: evaluation only)
    assert again['metrics']['rank1'] == first['metrics']['rank1'] and again['metrics']['mAP'] == first['metrics']['mAP']
    assert '<td>computed now</td>' in (out/'index.html').read_text()
    res = run_cli(*args[:-3], '--set', 'epochs=3', 'rerank=false')  # another configuration: computed, never mixed up
    assert res.returncode == 0 and 'baseline: computing (it was made with another configuration)' in res.stdout, res.stdout
    res = run_cli(*args, '--force')
    assert res.returncode == 0 and 'baseline: computing (forced)' in res.stdout, res.stdout
    assert json.loads(metrics.read_text())['config']['epochs'] == 2 and not leftovers(out)


def test_paper_preset_without_the_real_datasets_names_every_missing_folder_before_any_run(tmp_path):
    import os
    out, env = tmp_path/'reports', dict(os.environ, REID_NB_DATA=str(tmp_path/'data'))
    res = subprocess.run([REID_NB, 'reproduce', '--preset', 'paper', '--out', str(out)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "3 dataset folder(s) that preset 'paper' needs are missing; nothing was run" in res.stderr, res.stderr
    for name in ('market1501', 'dukemtmcreid', 'cuhk03'): assert str(tmp_path/'data'/name) in res.stderr, name
    assert not out.exists()


def test_seeds_repeat_every_run_with_its_own_training_seed(tmp_path):
    out = tmp_path/'reports'
    res = run_cli('reproduce', '--preset', 'smoke', '--out', str(out), '--only', 'baseline', '--seeds', '2',
                  '--set', 'epochs=1', 'rerank=false')
    assert res.returncode == 0 and '[2/2] baseline~seed1: computing' in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    recs = {n: json.loads((out/'runs'/n/'metrics.json').read_text()) for n in ('baseline', 'baseline~seed1')}
    assert recs['baseline']['config']['seed'] == 0 and recs['baseline~seed1']['config']['seed'] == 1
    assert recs['baseline']['config']['data_seed'] == recs['baseline~seed1']['config']['data_seed']   # same data, another training
    assert {r['run'] for r in json.loads((out/'results.json').read_text())['runs']} == {'baseline', 'baseline~seed1'}
    bad = run_cli('reproduce', '--preset', 'smoke', '--seeds', '2', '--set', 'seed=3')
    assert bad.returncode == 2 and "drop 'seed'" in bad.stderr, bad.stderr


def test_jobs_2_gives_the_results_of_jobs_1_and_the_next_reproduce_reuses_them(tmp_path):
    """The smoke preset's four runs (shortened: one epoch at 64×32),
    two at a time, each in its own `reid_nb run` process: the same results.json as one at a time, times aside. Both at one
    thread per run: a CPU adds up floats in an order that depends on the thread count, and training amplifies the
    last-digit differences (see tests/test_distributed.py)."""
    import os
    env = dict(os.environ, OMP_NUM_THREADS='1')
    short = ['epochs=1', 'height=64', 'width=32']
    args = ['reproduce', '--preset', 'smoke', '--only', 'baseline', 'mmga-market', 'fmn-market', '--set', *short]
    res = {}
    for jobs in (1, 2):
        res[jobs] = subprocess.run([REID_NB, *args, '--jobs', str(jobs), '--out', str(tmp_path/f'j{jobs}')], env=env,
                                   capture_output=True, text=True, timeout=1200)
        assert res[jobs].returncode == 0, res[jobs].stdout[-3000:] + res[jobs].stderr[-3000:]
    out = res[2].stdout
    for name in ('baseline', 'mmga-market', 'fmn-market'):
        assert f'{name}: started (OMP_NUM_THREADS=1; log ' in out and f'{name}: done in ' in out, out
    events = [l.split(':')[0] + (' +' if ': started (' in l else ' -') for l in out.splitlines() if ': started (' in l or ': done in ' in l]
    assert events[:2] == ['baseline +', 'mmga-market +'] and events.index('fmn-market +') > 2, out   # plan order, two at a time
    one, two = (json.loads((tmp_path/f'j{j}'/'results.json').read_text()) for j in (1, 2))
    assert [r['run'] for r in one['runs']] == [r['run'] for r in two['runs']]
    assert _without_times(one) == _without_times(two)
    assert (tmp_path/'j2'/'index.html').read_text().count('<td>computed now</td>') == 3
    again = run_cli('run', 'fmn-market', '--set', *short, '--out', str(tmp_path/'j2'))   # one key alone: cached already
    assert again.returncode == 0 and 'fmn-market: reused (finished earlier with this configuration)' in again.stdout, again.stdout + again.stderr
    assert not leftovers(tmp_path/'j2')


def test_bad_scale_out_input():
    "In-process (the CLI's own `main`): each error names what was asked, what there is, and what to do."
    import contextlib, io, os
    from reid_nb.cli import main
    cores = os.cpu_count()
    for argv, expected in ((['reproduce', '--jobs', str(cores + 1), '--dry-run'], [f'--jobs {cores + 1} asks for {cores + 1} runs at once', f'{cores} CPU core(s)', f'use --jobs {cores} or fewer']),
                           (['reproduce', '--set', 'precision=fp16', '--dry-run'], ["precision='fp16' is not available on cpu: this device supports fp32"]),
                           (['run', 'mmga-markt'], ["Unknown run key 'mmga-markt' for preset 'smoke'. Did you mean 'mmga-market'?",
                                                    'reid_nb reproduce --preset smoke --dry-run'])):
        err = io.StringIO()
        with contextlib.redirect_stderr(err): assert main(argv) == 2
        for e in expected: assert e in err.getvalue(), err.getvalue()
