"""The promises the repository makes about itself."""

from __future__ import annotations

import re

from conftest import REPO


def _readme_test_command() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", readme, re.DOTALL)
    assert match, "README.md must mark its test command with <!-- test-command -->"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim():
    command = _readme_test_command()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


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
