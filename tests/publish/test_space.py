"""`spine-hf push --space`: the demo Space's files, its upload at the HfApi boundary, and the Space's own
app.py run from those files against an offline Hub cache, answering a gradio_client call."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from factories import fake_hf_api, hub_cache

from spine_hf.cli import main
from spine_hf.publish.space import push_space, write_space


def test_the_dry_run_lists_every_file_and_uploads_nothing(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    fake_api, calls = fake_hf_api()
    monkeypatch.setattr(huggingface_hub, "HfApi", fake_api)
    space = tmp_path / "space"
    assert main(["push", "--space", "me/demo", "--model", "me/grader", "--dry-run", "--save-to", str(space)]) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "spaces/me/demo (private, serving me/grader)" in out and calls == []
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert listed == {p.relative_to(space).as_posix() for p in space.rglob("*") if p.is_file()}
    assert {
        "README.md",
        "app.py",
        "requirements.txt",
        "spine_hf/app/demo.py",
        "spine_hf/predict/inference.py",
    } <= listed
    card = (space / "README.md").read_text()
    front = card.split("---\n")[1]
    for line in ("sdk: gradio", "app_file: app.py", "- me/grader", "sdk_version: "):
        assert line in front
    assert "not a medical device" in card
    assert '"me/grader"' in (space / "app.py").read_text()
    pinned = (space / "requirements.txt").read_text().split()
    assert all("==" in line for line in pinned) and {"gradio", "torch", "timm", "transformers"} <= {
        line.split("==")[0] for line in pinned
    }


def test_the_onnx_space_needs_no_torch_and_bad_ids_are_refused(tmp_path, trained_model):
    write_space("me/grader-onnx", tmp_path / "onnx", backend="onnx")
    names = {line.split("==")[0] for line in (tmp_path / "onnx" / "requirements.txt").read_text().split()}
    assert "onnxruntime" in names and not names & {"torch", "torchvision", "timm", "transformers"}
    with pytest.raises(ValueError, match="push the model folder first"):
        write_space(str(trained_model), tmp_path / "local")  # the Space loads a repo id, not a folder here
    with pytest.raises(ValueError, match="--space 'nameonly'"):
        push_space("nameonly", "me/grader", dry_run=True)
    with pytest.raises(OSError, match="not empty"):
        write_space("me/grader", tmp_path / "onnx")  # never written into an existing folder


def test_push_space_creates_a_private_gradio_space(monkeypatch, capsys):
    import huggingface_hub

    token = "hf_PLANTED_space_token_456"
    fake_api, calls = fake_hf_api()
    monkeypatch.setattr(huggingface_hub, "HfApi", fake_api)
    plan = push_space("me/demo", "me/grader", token=token)
    assert calls[0] == ("init", token)
    assert calls[1] == ("create_repo", "me/demo", {"repo_type": "space", "space_sdk": "gradio", "private": True,
                                                  "exist_ok": True})  # fmt: skip
    upload = calls[2][1]
    assert upload["repo_id"] == "me/demo" and upload["repo_type"] == "space"
    assert {"README.md", "app.py", "requirements.txt"} <= {path for path, _ in plan}
    push_space("me/demo", "me/grader", private=False)
    assert calls[4][2]["private"] is False
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err


# Makes this environment look like the Space's fresh one: a distribution that requirements.txt (with what it
# depends on) does not install cannot be imported, so an optional import falls back as it would there and a
# needed one fails. Writes what the app imported, and what it was refused, when it exits.
SITECUSTOMIZE = """
import atexit, json, os, sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def installed_by(requirements):
    wanted, found = [line.split("==")[0] for line in open(requirements).read().split()], set()
    while wanted:
        name = canonicalize_name(wanted.pop())
        if name in found:
            continue
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        found.add(name)
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                wanted.append(requirement.name)
    return found


INSTALLED, OWNERS, REFUSED = installed_by(os.environ["SPACE_REQUIREMENTS"]), metadata.packages_distributions(), set()


class NotInTheSpace:
    # Wraps each import finder: a module of a distribution the Space would lack is found by none of them.

    def __init__(self, finder):
        self.finder = finder

    def __getattr__(self, name):
        return getattr(self.finder, name)

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top != "spine_hf" and top in OWNERS and not any(canonicalize_name(d) in INSTALLED for d in OWNERS[top]):
            REFUSED.add(top)
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None


sys.meta_path[:] = [NotInTheSpace(finder) for finder in sys.meta_path]
if sys.argv[0].endswith("app.py"):
    atexit.register(lambda: open(os.environ["SPACE_IMPORTS"], "w").write(json.dumps(
        {"imported": sorted({name.split(".")[0] for name in sys.modules}), "refused": sorted(REFUSED)})))
"""


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_space_runs_its_own_app_from_the_uploaded_files(backend, trusted_model, exported_model, phantom_split,
                                                            tmp_path):  # fmt: skip
    """`python app.py` in the folder the dry run lists, the model fetched by repo id from an offline cache,
    graded through gradio_client, with nothing importable that its requirements.txt would not install."""
    from gradio_client import Client, handle_file

    repo_id = f"spine-org/grader-{backend}"
    cache = hub_cache(tmp_path / "hub", repo_id, exported_model if backend == "onnx" else trusted_model)
    space = tmp_path / "space"
    push_space("me/demo", repo_id, backend=backend, dry_run=True, save_to=space)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home"),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": str(tmp_path / "site"), "SPACE_IMPORTS": str(tmp_path / "imports.json"),
           "SPACE_REQUIREMENTS": str(space / "requirements.txt")}  # fmt: skip
    env.pop("SPINE_HF_MODEL", None)
    bundled = subprocess.run([sys.executable, "-c", "import spine_hf; print(spine_hf.__file__)"], cwd=space, env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
    assert bundled.stdout.strip().startswith(str(space))  # the Space's own copy, not this checkout's
    # A shell's background job starts with Ctrl-C ignored, and Python then never raises KeyboardInterrupt: the app
    # gets Ctrl-C's default back, so that it stops below wherever the suite runs.
    server = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        _wait_for_port(port, server)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        image = next((phantom_split / "test").rglob("*.png"))
        headline, label, _shown = client.predict(handle_file(str(image)), False, repo_id, api_name="/grade")
    finally:
        server.send_signal(signal.SIGINT)  # Gradio closes cleanly on Ctrl-C, so the import list gets written
        log = server.communicate(timeout=60)[0]
    assert headline.startswith("## Grade") and "range" in headline, log[-2000:]
    confidences = {entry["label"]: entry["confidence"] for entry in label["confidences"]}
    assert len(confidences) == 5 and sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)
    modules = json.loads((tmp_path / "imports.json").read_text())
    assert ("torch" in modules["imported"]) == (backend == "torch"), modules
    assert "spine_hf" in modules["imported"] and "gradio" in modules["imported"]


def _wait_for_port(port: int, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the Space's app.py exited: {server.stdout.read()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError("the Space's app.py did not start serving in time")
