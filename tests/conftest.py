"""Shared test set-up.

- Generated data goes to a per-session folder, never to the user's cache.
- `cli(...)` calls the `reid_nb` command in this process (its `main`), capturing what it prints and its exit status:
  a subprocess proves nothing more than that, except that the console script is installed (test_cli.py checks that once).
- `smoke_reproduction`: ONE short smoke reproduction per test session (`reproduce --preset smoke --set epochs=2`: the
  baseline and one run of each method, every evaluation, figure, table and claim), shared read-only by every test that
  needs a finished reproduction. A test that changes it works on `copy_reproduction(...)`; at the end of the session the
  shared folder is checked unchanged, so a test that wrote into it fails the run.
"""
import contextlib, hashlib, io, os, shutil
from dataclasses import dataclass
from pathlib import Path
import pytest

SMOKE_SET = ('epochs=2',)   # every method's whole path, two epochs (a kill after the first leaves one to resume)


@pytest.fixture(scope='session', autouse=True)
def reid_nb_data(tmp_path_factory):
    "Point $REID_NB_DATA at a fresh folder for the whole session (subprocesses inherit it)."
    old = os.environ.get('REID_NB_DATA')
    path = tmp_path_factory.mktemp('reid_nb_data')
    os.environ['REID_NB_DATA'] = str(path)
    yield path
    if old is None: os.environ.pop('REID_NB_DATA', None)
    else: os.environ['REID_NB_DATA'] = old


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(*args) -> CliResult:
    "`reid_nb ARGS` run in this process: exit status (argparse's usage errors included), stdout and stderr."
    from reid_nb.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code if isinstance(e.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def _fingerprint(folder: Path) -> str:
    "Every file's path, size and content hash below `folder`: equal fingerprints, unchanged trees."
    h = hashlib.sha1()
    for p in sorted(folder.rglob('*')):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file(): h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class Reproduction:
    out: Path      # the report folder (read-only: copy it before changing anything)
    stdout: str    # what `reproduce` printed
    args: tuple    # the arguments after `reproduce` that made it (its --out aside)


@pytest.fixture(scope='session')
def smoke_reproduction(tmp_path_factory):
    "The session's one short smoke reproduction (see the module's docstring); checked unchanged at the end."
    out = tmp_path_factory.mktemp('smoke')/'reports'
    args = ('--preset', 'smoke', '--set', *SMOKE_SET)
    res = cli('reproduce', *args, '--out', out)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    before = _fingerprint(out)
    yield Reproduction(out, res.stdout, args)
    assert _fingerprint(out) == before, f'a test changed the shared smoke reproduction in {out}: copy it with copy_reproduction first'


def copy_reproduction(rep: Reproduction, dest: Path) -> Path:
    "A private copy of a shared reproduction's report folder (checkpoints included) at `dest`, for a test that changes it."
    shutil.copytree(rep.out, dest, symlinks=True)
    return dest


def leftovers(folder: Path):
    "Temporary names (`.x.tmp-…`, `.x.old-…`) anywhere below `folder`."
    return [p for p in folder.rglob('.*') if '.tmp-' in p.name or '.old-' in p.name]
