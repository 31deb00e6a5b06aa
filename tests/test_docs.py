"""The README and the documentation site, tested as a newcomer uses them: the site builds under ``mkdocs build
--strict`` (a broken link, a missing page or an API page whose module is gone fails it), the README's Python
example runs as written, every command line of the README and the guides parses with the real CLI and names
suites, recipes, models and make targets that exist, every suite snippet is a valid suite, the attention-variant
guide runs as copied, and no page cites the project's tracker instead of saying what the behaviour is."""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
SITE_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}


def code_blocks(path: Path, lang: str) -> list[str]:
    return [code for tag, code in re.findall(r"```(\w*)\n(.*?)```", path.read_text(), flags=re.S) if tag == lang]


def section(path: Path, title: str) -> str:
    text = path.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def command_lines(path: Path) -> list[str]:
    """Each command of the page's bash blocks, continuation lines joined, comments and env assignments dropped."""
    out = []
    for block in code_blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words:
                out.append(shlex.join(words))
    return out


# ------------------------------------------------------------------------------------------- the site

def test_site_builds_strict(tmp_path):
    missing = [m for m in SITE_PACKAGES if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        pytest.skip(f"the docs packages are not installed ({', '.join(missing)}): make install installs them")
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    for page in ("index.html", "running/index.html", "RESULTS/index.html", "api/index.html"):
        assert (site / page).is_file(), page
    # the API reference is generated from the docstrings, not left as ::: directives
    api = (site / "api/index.html").read_text()
    assert 'id="robustbench_rpc.benchmark"' in api and ":::" not in api
    attacks = (site / "api/attacks/index.html").read_text()
    assert 'id="robustbench_rpc.attacks.get_attack"' in attacks


def test_every_guide_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == set(re.findall(r":\s*(\S+\.md)\s*$", nav, flags=re.M))


def test_readme_links_point_at_files():
    text = (ROOT / "README.md").read_text()
    links = [target for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if "://" not in target]
    assert links, "the README links its guides"
    assert [t for t in links if not (ROOT / t).exists()] == []


# --------------------------------------------------------------------------------- the README's Python

def test_readme_python_example_runs_as_written(tmp_path):
    """The README's Python block, then the store guide's reading of the run it made."""
    readme = code_blocks(ROOT / "README.md", "python")
    assert len(readme) == 1
    code = readme[0]
    for name in ("load_model", "get_attack", "benchmark"):
        assert f"{name}(" in code
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    accuracy = float(re.search(r"PGD-10 4/255 accuracy: ([0-9.]+)", res.stdout).group(1))
    assert 0.0 <= accuracy <= 1.0
    assert "symvit" in res.stdout.lower() or "module_" in res.stdout  # the headline's model row
    assert (tmp_path / "runs/first/index.html").is_file()
    store = [b for b in code_blocks(DOCS / "trust.md", "python") if "ResultsStore" in b]
    assert len(store) == 1 and "runs/first/results.sqlite" in store[0]
    res = subprocess.run([sys.executable, "-c", store[0]], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "chance_level" in res.stdout


# ------------------------------------------------------------------------------- commands as written

def _known_names() -> tuple[set[str], set[str], set[str]]:
    from robustbench_rpc.evaluation.suite import list_suites
    from robustbench_rpc.models import list_models

    recipes = {p.stem for p in (ROOT / "robustbench_rpc/training/recipes").glob("*.toml")}
    return set(list_suites()), recipes, set(list_models())


def _check_command(argv: list[str], where: str, parser, suites, recipes, models) -> list[str]:
    problems = []
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return [f"{where}: does not parse: robustbench-rpc {shlex.join(argv)}"]
    if getattr(args, "suite", None) and not args.suite.endswith(".toml") and args.suite not in suites:
        problems.append(f"{where}: unknown suite {args.suite}")
    if getattr(args, "recipe", None) and not args.recipe.endswith(".toml") and args.recipe not in recipes:
        problems.append(f"{where}: unknown recipe {args.recipe}")
    if not args.plugin:  # a plug-in's models exist once it is imported
        given = getattr(args, "model", None) or []
        given = [given] if isinstance(given, str) else list(given)  # train takes one --model, run several
        for spec in given + [getattr(args, "backbone", None) or ""]:
            name = spec.split(":")[0].split("+")[0]
            if name and not name.startswith("timm") and name not in models:
                problems.append(f"{where}: unknown model {name}")
    return problems


def test_every_documented_command_parses():
    """Every robustbench-rpc / torchrun / make line a reader copies: the real parser accepts it, and the suites,
    recipes, models and make targets it names exist."""
    from robustbench_rpc.cli.commands import build_parser

    parser = build_parser()
    suites, recipes, models = _known_names()
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    problems, seen = [], 0
    for page in PAGES:
        for line in command_lines(page):
            where = f"{page.relative_to(ROOT)}: {line}"
            words = shlex.split(line)
            if words[0] == "robustbench-rpc":
                argv = words[1:]
            elif words[0] == "torchrun":
                argv = words[words.index("robustbench_rpc") + 1:]
            elif words[0] == "make":
                problems += [f"{where}: no make target {t}" for t in words[1:] if t not in targets]
                seen += 1
                continue
            else:
                continue
            seen += 1
            problems += _check_command(argv, where, parser, suites, recipes, models)
    assert seen >= 30, seen
    assert problems == []


def test_every_packaged_suite_is_in_the_running_guide():
    from robustbench_rpc.evaluation.suite import list_suites

    table = section(DOCS / "running.md", "The shipped suites")
    missing = [name for name in list_suites() if f"`{name}`" not in table]
    assert missing == [], f"packaged suites missing from docs/running.md's table of shipped suites: {missing}"


def test_every_suite_snippet_is_a_valid_suite(tmp_path):
    from robustbench_rpc.evaluation.suite import expand, load_suite

    snippets = [(page, code) for page in PAGES for code in code_blocks(page, "toml")]
    assert len(snippets) >= 2
    for i, (page, code) in enumerate(snippets):
        path = tmp_path / f"snippet{i}.toml"
        path.write_text(code)
        suite = load_suite(path)
        assert expand(suite, suite.defaults["dataset"]), page


# ------------------------------------------------------------------------------- the variant guide

def test_attention_variant_guide_runs_as_copied(tmp_path):
    """The plug-in of the own-model guide, written to my_variants.py, and its run command as written."""
    text = section(DOCS / "own-model.md", "Your own attention variant")
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)
    plugin = [code for lang, code in blocks if lang == "python" and code.startswith("# my_variants.py\n")]
    commands = [c for c in command_lines(DOCS / "own-model.md") if "my_variants.py" in c]
    assert len(plugin) == 1 and len(commands) == 1
    (tmp_path / "my_variants.py").write_text(plugin[0])
    argv = shlex.split(commands[0])
    res = subprocess.run([sys.executable, "-m", "robustbench_rpc", *argv[1:]], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "trust checks: all" in res.stdout and (tmp_path / "runs/tempered/index.html").is_file()
    from robustbench_rpc.store.results import ResultsStore

    with ResultsStore(tmp_path / "runs/tempered/results.sqlite", readonly=True) as store:
        info = store.models().iloc[0].to_dict()
    assert "tempered_symmetric" in str(info)


# --------------------------------------------------------------------------------- no tracker numbers

TRACKER = re.compile(r"\bissues?[ -]#?\d+|§\s?\d", re.I)  # "issue 22", "issue-23", "§4"


def test_pages_say_what_the_behaviour_is_not_which_issue():
    """README, guides, code comments and test docstrings describe behaviour; a tracker number means nothing to a
    reader outside it."""
    files = [*PAGES, ROOT / "ARCHITECTURE.md", *(ROOT / "benchmarks").glob("*.md"),
             *(ROOT / "robustbench_rpc").rglob("*.py"), *(ROOT / "robustbench_rpc").rglob("*.toml"),
             *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    hits = []
    for path in files:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if TRACKER.search(line) and path != Path(__file__):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert hits == []
