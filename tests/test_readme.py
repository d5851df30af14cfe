"""README.md is generated from the front page, nbs/index.ipynb (`reid_nb readme`): it must be what the notebook renders to,
every relative link and image in it must point to a file of the repository, and it must give the set-up commands that
`.ci/run` runs as "the README's"."""
import re
from pathlib import Path
from conftest import cli

REPO = Path(__file__).resolve().parents[1]
README = REPO/'README.md'
REGENERATE = ("Regenerate it with `reid_nb readme` (when the notebook's outputs changed, first "
              "`python tests/benchmarks/execute_chapters.py nbs/index.ipynb && nbdev_clean`); README.md is not edited by hand.")

def test_readme_is_what_the_front_page_renders_to():
    "`reid_nb readme --check`: README.md and its figures are what nbs/index.ipynb renders to (tests/ run from this checkout)."
    r = cli('readme', '--check')
    assert r.returncode == 0, f"{r.stderr.strip()} {REGENERATE}"

def relative_targets(markdown:str) -> list[str]:
    "Relative link and image targets of `markdown` (markdown and HTML), outside code blocks and code spans."
    text = re.sub(r'`[^`\n]*`', '', re.sub(r'```.*?```', '', markdown, flags=re.S))
    found = re.findall(r'\]\(([^)\s]+)\)', text) + re.findall(r'(?:src|href)="([^"]+)"', text)
    return [t for t in found if not re.match(r'[a-zA-Z][\w+.-]*:|#', t)]   # not a URL, not an anchor

def test_relative_targets():
    md = ('[a](nbs/x.ipynb) `[b](y.md)` [w](https://nbdev.fast.ai) [s](#tests) ![f](nbs/assets/g.png)\n'
          '```python\nd[0](1)\n```\n<img src="h.png">')
    assert relative_targets(md) == ['nbs/x.ipynb', 'nbs/assets/g.png', 'h.png']

def test_readme_links_and_images_resolve():
    text = README.read_text()
    targets = relative_targets(text)
    assert len(targets) > 20, targets   # the chapters, the figure
    missing = sorted({t for t in targets if not (REPO/t.split('#')[0]).exists()})
    assert not missing, (f"README.md links to {missing}, which the repository does not have: fix the links in nbs/index.ipynb "
                         f"(they are written from nbs/). {REGENERATE}")
    images = re.findall(r'!\[[^\]]*\]\(([^)\s]+)\)', text)
    assert images and all(t.startswith('nbs/assets/') for t in images), images   # a figure, committed with the notebook

def ci_setup_commands() -> tuple[str, str]:
    "The install and test commands that `.ci/run` runs as the README's."
    lines = [l.strip() for l in (REPO/'.ci'/'run').read_text().splitlines()]
    install = next(l for l in lines if l.startswith('pip install -e'))
    test = next(l.split('||')[0].strip() for l in lines if l.startswith('nbdev_test'))
    return install, test

def test_readme_gives_the_commands_ci_runs():
    install, test = ci_setup_commands()
    assert install.startswith('pip install') and 'pytest' in test, (install, test)
    blocks = re.findall(r'```bash\n(.*?)```', README.read_text(), flags=re.S)
    for cmd in (install, test):
        assert any(cmd in b.splitlines() for b in blocks), \
            f"README.md has no ```bash block with the line `{cmd}`, which .ci/run runs as the README's command: keep them the same."
