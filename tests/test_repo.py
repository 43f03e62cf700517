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


def test_readme_maps_every_module():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for module in sorted((REPO / "spine_hf").glob("*.py")):
        if module.name != "__init__.py":
            assert f"spine_hf/{module.name}" in readme, f"README does not map {module.name}"


def _map_order() -> list[str]:
    """The package's modules in the order the README's map lists them."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `spine_hf/(\w+)\.py` \|", readme, re.MULTILINE)


def test_imports_run_downhill_in_the_order_of_the_map():
    """A module imports (at the top or inside a function) only modules the map lists above it."""
    import ast

    order = _map_order()
    assert sorted(order) == sorted(p.stem for p in (REPO / "spine_hf").glob("*.py") if p.stem != "__init__")
    for rank, name in enumerate(order):
        tree = ast.parse((REPO / "spine_hf" / f"{name}.py").read_text(encoding="utf-8"))
        imported = {
            node.module.split(".")[1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spine_hf.")
        }
        uphill = sorted(module for module in imported if module not in order[:rank])
        assert not uphill, f"spine_hf/{name}.py imports {uphill}, which the map lists below it"


def test_every_module_has_its_own_test_file():
    for name in _map_order():
        assert (REPO / "tests" / f"test_{name}.py").is_file(), f"spine_hf/{name}.py has no tests/test_{name}.py"


def test_readme_says_research_use_only():
    assert "not a medical device" in (REPO / "README.md").read_text(encoding="utf-8")


def test_importing_the_package_stays_light():
    import subprocess
    import sys

    code = "import sys, spine_hf.cli; print(sorted(m for m in ('torch', 'datasets', 'timm') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
