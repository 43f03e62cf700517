"""Shared fixtures: tiny phantoms, the real knee data when it is there, and no network."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

# Tests never reach the Hub: everything they load is local.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, str(Path(__file__).parent))  # for tests/factories.py

# A Hub token planted for the whole run (subprocesses inherit it). Nothing the project prints, logs,
# raises or writes may contain it: `pytest_sessionfinish` searches every captured output and every
# file the run wrote, and fails the run on a hit. Built at run time, so no source line holds it.
PLANTED_TOKEN = "hf_" + "".join(("pLaNtEd", "SeCrEt", "c0ffee", "42"))
os.environ["HF_TOKEN"] = PLANTED_TOKEN
_CAPTURED: list[str] = []

REPO = Path(__file__).resolve().parents[1]
KNEE = REPO.parent / "shared" / "data" / "knee-kl224"
# What a whole run may write under its temporary folder (one wrote 1.1 GiB): `pytest_sessionfinish` fails a
# run that writes more. A run writing 5 GiB once filled a CI machine's disk, and every test after it errored.
RUN_WRITES_AT_MOST_GIB = 2


@pytest.fixture(scope="session")
def phantom_pool(tmp_path_factory) -> Path:
    """A pool of 64-pixel phantoms, 6 per grade, with patients.csv. Do not modify it."""
    from spine_hf.data.phantoms import make_phantoms

    out = tmp_path_factory.mktemp("phantoms") / "pool"
    make_phantoms(out, per_grade=6, seed=3, size=64)
    return out


@pytest.fixture(scope="session")
def phantom_split(tmp_path_factory, phantom_pool) -> Path:
    """`phantom_pool` split 0.6/0.2/0.2 by patient. Do not modify it."""
    from spine_hf.data.split import split_dataset

    out = tmp_path_factory.mktemp("phantoms") / "split"
    split_dataset(phantom_pool, out, ratios=(0.6, 0.2, 0.2), seed=0)
    return out


@pytest.fixture
def raw(tmp_path) -> Path:
    """A flat folder of six 32-pixel PNGs (img0..img5.png) and one in a sub-folder (sub/deep.png)."""
    from factories import write_png

    folder = tmp_path / "raw"
    for i in range(6):
        write_png(folder / f"img{i}.png", seed=i)
    write_png(folder / "sub" / "deep.png", seed=50)
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """35 lateral phantoms of 64 px, split so that validation has an odd number of images, converted."""
    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.phantoms import make_phantoms
    from spine_hf.data.split import split_dataset

    root = tmp_path_factory.mktemp("train")
    make_phantoms(root / "pool", per_grade=7, seed=5, size=64, second_view=0.0)
    split_dataset(root / "pool", root / "split", ratios=(0.6, 0.2, 0.2), seed=1)
    convert_to_dataset(root / "split", root / "ds")
    return root / "ds"


def tiny_run_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    """`spine_hf.train` arguments for a seconds-long run of the quick start's recipe on `tiny_dataset`."""
    return [
        "--config_path", str(REPO / "configs" / "quickstart.yaml"),
        f"--data.dataset={dataset}", f"--train.output_dir={out}",
        "--model.image_size=64", "--train.batch_size=8", "--train.eval_batch_size=16", "--train.threads=1",
        *extra,
    ]  # fmt: skip


@pytest.fixture
def knee() -> Path:
    """The real knee radiographs beside the repository; skips when they are not there."""
    if not (KNEE / "val").is_dir():
        pytest.skip(f"real data not found at {KNEE}")
    return KNEE


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, phantom_split) -> Path:
    """A timm test_resnet trained for 3 epochs on 64-pixel phantoms: (model folder, dataset folder)."""
    from spine_hf.config import parse_config
    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.training.loop import train

    root = tmp_path_factory.mktemp("trained")
    convert_to_dataset(phantom_split, root / "dataset")
    args = ["--config_path", str(REPO / "configs" / "quickstart.yaml"), f"--data.dataset={root / 'dataset'}",
            f"--train.output_dir={root / 'run'}", "--model.image_size=64", "--train.epochs=3",
            "--train.batch_size=8", "--train.ema_decay=0"]  # fmt: skip
    train(parse_config(args))
    return root / "run" / "best"


@pytest.fixture(scope="session")
def trusted_model(tmp_path_factory, trained_model) -> Path:
    """`trained_model` calibrated on 80 more 64-pixel phantoms split in halves: the referral describes the
    40 of `train`; the temperature, grade ranges (80 %) and referral threshold (10 %) are fitted on the 40
    of `validation` (the model folder; its dataset is the folder beside it)."""
    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.phantoms import make_phantoms
    from spine_hf.data.split import split_dataset
    from spine_hf.predict.calibration import calibrate_model

    root = tmp_path_factory.mktemp("trusted")
    make_phantoms(root / "pool", per_grade=16, seed=21, size=64)
    split_dataset(root / "pool", root / "split", ratios=(0.5, 0.5, 0.0), seed=0)
    convert_to_dataset(root / "split", root / "dataset")
    calibrate_model(trained_model, root / "dataset", root / "calibrated", coverage=0.8, referral_rate=0.1)
    return root / "calibrated"


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory, trusted_model) -> Path:
    """`trusted_model` exported by `spine-hf export` (fp32 ONNX, with its grade ranges and referral)."""
    from spine_hf.publish.export import export_onnx

    out = tmp_path_factory.mktemp("exported") / "onnx"
    export_onnx(trusted_model, out, calibration_data=trusted_model.parent / "dataset")
    return out


@pytest.fixture(scope="session")
def running_app(trained_model, tmp_path_factory):
    """The Gradio app serving `trained_model` on 127.0.0.1 (uploads up to 5 MB): its URL."""
    from spine_hf.app.demo import build_app

    app = build_app(str(trained_model), examples_dir=tmp_path_factory.mktemp("examples"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, max_file_size="5mb", quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def pytest_runtest_logreport(report):
    if report.when == "teardown":  # by then a report holds every section of the test's three phases
        _CAPTURED.append(f"=== {report.nodeid}")
        _CAPTURED.extend(f"--- {report.nodeid} {title}\n{text}" for title, text in report.sections)
    if report.longrepr is not None:
        _CAPTURED.append(f"--- {report.nodeid} {report.when} failure\n{report.longrepr}")


def pytest_report_header(config):
    """Free disk where the run writes: a run that fills it errors in every test that writes anything after."""
    base = Path(config.option.basetemp or tempfile.gettempdir())
    free = shutil.disk_usage(next(p for p in (base, *base.parents) if p.exists())).free / 2**30
    return f"free disk under {base}: {free:.1f} GiB (a whole run may write up to {RUN_WRITES_AT_MOST_GIB} GiB there)"


def pytest_sessionfinish(session, exitstatus):
    """Search the run's captured output and written files for the planted token; keep the log; fail a run
    that wrote more than `RUN_WRITES_AT_MOST_GIB`, naming its biggest folders.

    Nothing here may raise: pytest would print a traceback instead of the summary of what failed."""
    log = "\n".join(_CAPTURED)
    try:
        (REPO / "outputs").mkdir(exist_ok=True)
        (REPO / "outputs" / "test-run.log").write_text(log, encoding="utf-8", errors="backslashreplace")
    except OSError as err:
        print(f"\ncould not keep the run's log in outputs/test-run.log: {err}", file=sys.stderr)
    leaks = [block.split("\n", 1)[0] for block in _CAPTURED if PLANTED_TOKEN in block]
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = factory.getbasetemp() if factory is not None and factory._basetemp is not None else None
    found, written = _search_written(basetemp, PLANTED_TOKEN.encode()) if basetemp else ([], Counter())
    leaks += found
    if leaks:
        print("\nTHE PLANTED HUB TOKEN LEAKED INTO:\n  " + "\n  ".join(leaks), file=sys.stderr)
        session.exitstatus = 1
    total = sum(written.values())
    if total > RUN_WRITES_AT_MOST_GIB * 2**30:
        print(f"\nTHE RUN WROTE {total / 2**20:.0f} MiB under {basetemp}, more than {RUN_WRITES_AT_MOST_GIB} GiB: "
              "a machine with little free disk fails every test after it fills up. Biggest folders:\n  "
              + "\n  ".join(f"{name}: {size / 2**20:.0f} MiB" for name, size in written.most_common(5)),
              file=sys.stderr)  # fmt: skip
        session.exitstatus = 1


def _search_written(root: Path, token: bytes) -> tuple[list[str], Counter[str]]:
    """Files under `root` whose bytes hold `token` (or that could not be searched), and the bytes written in
    each of `root`'s folders."""
    found, written = [], Counter()
    for path in root.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            size = path.stat().st_size
            top = path.relative_to(root).parts[0]
            written[top] += size
            if size < 200_000_000 and token in path.read_bytes():
                found.append(str(path))
        except FileNotFoundError:  # removed while the search ran: it holds nothing now
            continue
        except OSError as err:
            found.append(f"{path} (could not be searched: {err})")
    return found, written
