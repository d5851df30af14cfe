"""Execute the chapters in place, keeping light outputs, so that JupyterLab, the repository browser and the site show them.

As `nbdev_test` runs them (cells flagged `notest`, `cuda` skipped; `slow` cells run unless --skip-slow), then:
- progress bars (fastprogress / tqdm widgets and their carriage-return text) are dropped;
- this machine's paths (the repository, $REID_NB_DATA, the home folder, temporary folders) become `<repo>`, `$REID_NB_DATA`,
  `~` and `<tmp>`;
- warnings (stderr) are dropped: they name this machine's files and repeat on every run.
A chapter that fails stops the script with its traceback; that notebook is left as it was. Then run `nbdev_clean`.
Usage: python tests/benchmarks/execute_chapters.py [NOTEBOOK …] [--skip-slow]"""
import argparse, os, re, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NBS = REPO/'nbs'

def _replacements() -> list[tuple[str, str]]:
    from reid_nb.core import data_dir
    pairs = [(str(REPO), '<repo>'), (str(data_dir(create=False)), '$REID_NB_DATA'), (tempfile.gettempdir(), '<tmp>'),
             (str(Path.home()), '~'), (sys.prefix, '<venv>')]
    return sorted(pairs, key=lambda p: -len(p[0]))

def _scrub(text: str, pairs) -> str:
    for old, new in pairs: text = text.replace(old, new)
    text = re.sub(r'<tmp>/[\w.-]+', '<tmp>/…', text)   # random temporary names change on every run
    return text

def _is_progress(out) -> bool:
    data = out.get('data', {})
    html = ''.join(data.get('text/html', ''))
    text = ''.join(out.get('text', '')) + ''.join(data.get('text/plain', ''))
    return '<progress' in html or 'progress-bar' in html or '\r' in text or bool(re.search(r'\d+%\|[█▏▎▍▌▋▊▉ ]*\|', text))

def small_image(b64: str, limit: int = 40_000, width: int = 1200) -> tuple[str, str]:
    """(mime type, base64) of a PNG made light: over `limit` bytes, at most `width` pixels wide with an adaptive
    256-colour palette (plots and SynthReID's flat colours survive it); a JPEG when the palette PNG is still over 4 × `limit`."""
    import base64, io
    from PIL import Image
    raw = base64.b64decode(b64)
    if len(raw) <= limit: return 'image/png', b64
    im = Image.open(io.BytesIO(raw)).convert('RGB')
    if im.width > width: im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
    png = io.BytesIO(); im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, format='PNG', optimize=True)
    best = min([('image/png', raw), ('image/png', png.getvalue())], key=lambda t: len(t[1]))
    if len(best[1]) > 4 * limit:
        jpg = io.BytesIO(); im.save(jpg, format='JPEG', quality=85, optimize=True)
        if jpg.tell() < len(best[1]): best = ('image/jpeg', jpg.getvalue())
    return best[0], base64.b64encode(best[1]).decode()

def light(outputs, pairs) -> list:
    "The outputs worth keeping, with this machine's paths replaced."
    keep = []
    for out in outputs:
        if out.get('output_type') == 'stream' and out.get('name') == 'stderr': continue
        if out.get('output_type') == 'update_display_data' or _is_progress(out): continue
        out = dict(out)
        if 'text' in out: out['text'] = _scrub(''.join(out['text']), pairs)
        if 'data' in out:
            out['data'] = {k: (_scrub(''.join(v), pairs) if k.startswith('text/') else v) for k, v in out['data'].items()}
            if 'image/png' in out['data']:
                mime, b64 = small_image(''.join(out['data'].pop('image/png')).replace('\n', ''))
                out['data'][mime] = b64
            if 'text/markdown' in out['data']: out['data'].pop('text/plain', None)   # '<IPython…Markdown object>'
            html = out['data'].get('text/html', '')
            if html and 'text/plain' in out['data']:   # keep one of the two: a table's HTML, else the plain text
                out['data'].pop('text/plain' if '<table' in html else 'text/html')
        keep.append(out)
    return keep

def execute(path: Path, skip_slow: bool):
    from execnb.nbio import read_nb
    from execnb.shell import CaptureShell
    from nbdev.process import NBProcessor
    from nbdev.frontmatter import FrontmatterProc
    from fastcore.xtras import working_directory
    flags = {'notest', 'cuda'} | ({'slow'} if skip_slow else set())
    nb = NBProcessor(path, procs=FrontmatterProc, process=True).nb
    def no_eval(cell):
        if cell.cell_type != 'code': return True
        directives = getattr(cell, 'directives_', {}) or {}
        evaluate = str((directives.get('eval:') or ['true'])[0]).lower() != 'false'   # `#| eval: false`, as nbdev_test honours it
        return 'nbdev_export(' in cell.source or bool(flags & directives.keys()) or not evaluate
    shell = CaptureShell(path)
    with working_directory(path.parent): shell.run_all(nb, exc_stop=True, preproc=no_eval)
    raw = read_nb(path)   # the file as it is (no directives parsed), outputs from the run
    ran = {c.get('id'): c for c in nb.cells}
    for cell in raw.cells:
        if cell.cell_type == 'code': cell['outputs'] = ran[cell['id']].get('outputs', []) if cell.get('id') in ran else []
    save_light(raw, path)

def save_light(nb, path: Path):
    "Write `nb` to `path` (atomically) with every code cell's outputs made `light` and no execution counts."
    from execnb.nbio import write_nb
    from reid_nb.core import atomic_path
    pairs = _replacements()
    for cell in nb.cells:
        if cell.cell_type == 'code': cell['outputs'], cell['execution_count'] = light(cell.get('outputs', []), pairs), None
    with atomic_path(path) as tmp: write_nb(nb, tmp)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('notebooks', nargs='*', help='chapters (default: every nbs/*.ipynb but 90_experiment, the run template)')
    ap.add_argument('--skip-slow', action='store_true', help="skip cells flagged 'slow' (they train small demo runs)")
    ap.add_argument('--shrink-only', action='store_true', help='run nothing: only make the outputs already there light')
    a = ap.parse_args(argv)
    paths = [Path(p).resolve() for p in a.notebooks] or [p for p in sorted(NBS.glob('*.ipynb')) if p.name != '90_experiment.ipynb']
    os.environ['IN_TEST'] = '1'
    for p in paths:
        t0 = time.time()
        if a.shrink_only:
            from execnb.nbio import read_nb
            save_light(read_nb(p), p)
        else: execute(p, a.skip_slow)
        kb = p.stat().st_size / 1024
        print(f"{p.name}: {'made light' if a.shrink_only else 'executed'} in {time.time()-t0:.0f} s, {kb:.0f} KiB", flush=True)

if __name__ == '__main__': main()
