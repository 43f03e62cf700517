"""The promises the repository makes about itself."""

from __future__ import annotations

import re

import pytest
from conftest import REPO


def _readme_quick_start() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"## Quick start\n.*?```bash\n(.+?)\n```", readme, re.DOTALL)
    assert match, "README.md needs a Quick start with a bash block"
    return match.group(1).strip()


def _readme_test_command() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme, re.DOTALL)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim():
    command = _readme_test_command()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_the_quick_start_sets_up_its_environment_first():
    """Pasted first on a fresh machine, the quick start must not need anything it does not install."""
    command = _readme_quick_start()
    guard, _, rest = command.partition(")) && ")
    assert "python3 -m venv .venv" in guard and "pip install" in guard and "[ -x .venv/bin/spine-hf ]" in guard
    assert ".venv/bin/" in rest and "python3 -m venv" not in rest


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_quick_start_runs_as_pasted(tmp_path):
    """The README's first command, verbatim, in a folder holding only configs/ and this checkout's .venv."""
    import shutil
    import subprocess

    venv = REPO / ".venv"
    if not (venv / "bin" / "spine-hf").exists():
        pytest.skip("no .venv beside the checkout (the quick start would install one)")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / ".venv").symlink_to(venv)
    run = subprocess.run(["bash", "-c", _readme_quick_start()], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    test_qwk = float(re.search(r"^test: QWK (\d\.\d+)", run.stdout, re.MULTILINE).group(1))
    assert test_qwk > 0.8  # 0.93 on the phantoms here; a broken pipeline lands near 0
    assert "model folder: outputs/quickstart/run/best" in run.stdout
    assert (tmp_path / "outputs" / "quickstart" / "run" / "best" / "model.safetensors").is_file()


def _modules() -> list[str]:
    """Every module of the package as its path under spine_hf/ without .py (`grades`, `data/imaging`)."""
    package = REPO / "spine_hf"
    return sorted(p.relative_to(package).with_suffix("").as_posix() for p in package.rglob("*.py")
                  if p.name != "__init__.py")  # fmt: skip


def _map_order() -> list[str]:
    """The package's modules in the order the README's map lists them."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `spine_hf/([\w/]+)\.py` \|", readme, re.MULTILINE)


def _wing(module: str, order: list[str]) -> str:
    """A module's wing: its folder, or for a top-level module `base` (mapped above every wing: the shared
    vocabulary) or `entry` (mapped below every wing: what users run)."""
    if "/" in module:
        return module.split("/")[0]
    first_wing = next(n for n, name in enumerate(order) if "/" in name)
    return "base" if order.index(module) < first_wing else "entry"


def _imports(module: str) -> set[str]:
    """The package modules `module` imports, at the top or inside a function, as `_modules()` names them."""
    import ast

    tree = ast.parse((REPO / "spine_hf" / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spine_hf"):
            path = node.module.removeprefix("spine_hf").lstrip(".").replace(".", "/")
            if path and (REPO / "spine_hf" / path).is_dir():  # from spine_hf.data import split
                found |= {f"{path}/{alias.name}" for alias in node.names}
            elif path:
                found.add(path)
            else:  # from spine_hf import setup_logging (the package itself) or a module
                found |= {alias.name for alias in node.names if (REPO / "spine_hf" / f"{alias.name}.py").is_file()}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("spine_hf.").replace(".", "/") for a in node.names
                      if a.name.startswith("spine_hf.")}  # fmt: skip
    return found


def test_readme_maps_every_module_once():
    order = _map_order()
    assert sorted(order) == _modules(), "README's map must list every module of spine_hf/ exactly once"


def test_the_map_lists_each_wing_in_one_block():
    wings = [_wing(name, _map_order()) for name in _map_order()]
    blocks = [wing for n, wing in enumerate(wings) if n == 0 or wings[n - 1] != wing]
    assert len(blocks) == len(set(blocks)), f"a wing's modules are split in the map: {blocks}"
    assert blocks[0] == "base" and blocks[-1] == "entry"


def test_imports_run_downhill_between_wings():
    """A wing imports only from itself and the wings the map lists above it (base first, entry points last)."""
    order = _map_order()
    ranks = {wing: n for n, wing in enumerate(dict.fromkeys(_wing(name, order) for name in order))}
    for module in order:
        rank = ranks[_wing(module, order)]
        uphill = sorted(m for m in _imports(module) if ranks[_wing(m, order)] > rank)
        assert not uphill, f"spine_hf/{module}.py imports {uphill}, from a wing below its own in the map"


def test_imports_run_downhill_within_a_wing():
    """Inside a wing, a module imports only the modules the map lists above it."""
    order = _map_order()
    for rank, module in enumerate(order):
        wing = _wing(module, order)
        uphill = sorted(m for m in _imports(module) if _wing(m, order) == wing and order.index(m) >= rank)
        assert not uphill, f"spine_hf/{module}.py imports {uphill}, which the map lists below it"


def test_every_module_has_its_own_test_file():
    """tests/ mirrors the wings: spine_hf/data/imaging.py is tested in tests/data/test_imaging.py."""
    for module in _modules():
        folder, _, name = module.rpartition("/")
        test = REPO / "tests" / folder / f"test_{name}.py"
        assert test.is_file(), f"spine_hf/{module}.py has no {test.relative_to(REPO)}"


def test_test_files_have_unique_names():
    """pytest imports test files by their base name (tests/ has no __init__.py), so two must never share one."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names))


def test_readme_says_research_use_only():
    assert "not a medical device" in (REPO / "README.md").read_text(encoding="utf-8")


def test_importing_the_package_stays_light():
    import subprocess
    import sys

    code = "import sys, spine_hf.cli; print(sorted(m for m in ('torch', 'datasets', 'timm') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _readme_commands() -> list[list[str]]:
    """Every command in the README's bash blocks as tokens: lines cut at `&&`, `||` and `&`, comments,
    parentheses and leading `NAME=value` settings removed."""
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.+?)\n```", readme, re.DOTALL):
        for line in block.splitlines():
            command: list[str] = []
            for token in [*shlex.split(line, comments=True), "&&"]:
                if token in ("&&", "||", "&"):
                    while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                        command.pop(0)
                    if command:
                        commands.append(command)
                    command = []
                elif token.strip("()[]"):
                    command.append(token.strip("()") if token.startswith("(") or token.endswith(")") else token)
    return commands


def _options(parser) -> tuple[set[str], dict]:
    """An argparse parser's option strings and its subcommands by name."""
    import argparse

    options, commands = set(), {}
    for action in parser._actions:
        options |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            commands |= action.choices
    return options, commands


def _config_keys() -> set[str]:
    """`--section.key` of every field of the training configuration, and `--config_path`."""
    from dataclasses import fields
    from typing import get_type_hints

    from spine_hf.config import Config

    sections = get_type_hints(Config)
    return {"--config_path"} | {f"--{name}.{f.name}" for name, kind in sections.items() for f in fields(kind)}


def _check_flags(words: list[str], allowed: set[str], where: str) -> None:
    for word in words:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert flag in allowed, f"README: `{where}` has no option {flag}"


def test_every_command_in_the_readme_names_real_commands_and_options():
    """`spine-hf`, `accelerate launch -m spine_hf.*`, `app.py` and `python -m bench` lines against their parsers."""
    from bench.__main__ import build_parser as bench_parser
    from spine_hf.app.demo import build_parser as app_parser
    from spine_hf.cli import build_parser
    from spine_hf.cv import build_parser as cv_parser

    config = _config_keys()
    cv_options = _options(cv_parser())[0] | config
    checked = 0
    for tokens in _readme_commands():
        program = tokens[0].rsplit("/", 1)[-1]
        if program == "spine-hf":
            words = tokens[1:]
            if words[0] in ("train", "cv"):
                _check_flags(words[1:], config if words[0] == "train" else cv_options, f"spine-hf {words[0]}")
            else:
                parser, name = build_parser(), "spine-hf"
                while True:
                    options, commands = _options(parser)
                    if not words or words[0] not in commands:
                        break
                    name, parser, words = f"{name} {words[0]}", commands[words[0]], words[1:]
                    if name == "spine-hf app":
                        parser = app_parser()
                assert not commands, f"README: `{name}` needs a subcommand ({sorted(commands)}), got {words[:1]}"
                _check_flags(words, _options(parser)[0], name)
        elif program == "accelerate" and "-m" in tokens:
            module = tokens[tokens.index("-m") + 1]
            assert module in ("spine_hf.train", "spine_hf.cv"), f"README: accelerate launches {module}"
            _check_flags(tokens[tokens.index("-m") + 2 :], config if module == "spine_hf.train" else cv_options, module)
        elif program.startswith("python") and tokens[1:3] == ["-m", "bench"]:
            parser = bench_parser()
            assert tokens[3] in next(a for a in parser._actions if a.dest == "what").choices
            _check_flags(tokens[4:], _options(parser)[0], f"python -m bench {tokens[3]}")
        elif program.startswith("python") and tokens[1:2] == ["app.py"]:
            _check_flags(tokens[2:], _options(app_parser())[0], "app.py")
        else:
            continue
        checked += 1
    assert checked >= 25  # the commands above are really found and checked


def test_no_tracker_numbers_in_shipped_files():
    """Users never see the tracker: settings and code say what they do in words, not which issue made them."""
    shipped = [REPO / "README.md", *(REPO / "configs").rglob("*.yaml"), *(REPO / "spine_hf").rglob("*.py"),
               *(REPO / "bench").glob("*.py"), *(REPO / "bench").glob("*.sh")]  # fmt: skip
    for path in shipped:
        hits = re.findall(r"issues? #?\d+", path.read_text(encoding="utf-8"), re.IGNORECASE)
        assert not hits, f"{path.relative_to(REPO)} names tracker numbers: {hits}"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchor of every heading: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_the_readme_links_to_sections_that_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    targets = {"README.md": _anchors(readme), "BENCHMARKS.md": _anchors((REPO / "BENCHMARKS.md").read_text())}
    links = re.findall(r"\]\((BENCHMARKS\.md)?#([\w-]+)\)", readme)
    assert len(links) >= 5
    for document, anchor in links:
        assert anchor in targets[document or "README.md"], f"README links to {document or 'README.md'}#{anchor}"
