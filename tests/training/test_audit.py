"""`spine-hf data audit`: flipped labels of a phantom set come out on top, and nothing is changed."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from factories import digest_tree

from spine_hf.cli import main
from spine_hf.training.audit import AUDIT_CSV, AUDIT_HTML, audit_labels

FLIPPED_PER_SIDE = 4


@pytest.fixture(scope="module")
def flipped_cv(tmp_path_factory) -> tuple[Path, set[str], Path]:
    """250 phantoms of 128 px whose first 4 Healthy and first 4 Severe files swapped grade folders, split
    0.8/0.2 by patient, converted and cross-validated in 2 folds: (cv folder, flipped names, dataset)."""
    from spine_hf.config import parse_config
    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.phantoms import make_phantoms
    from spine_hf.data.split import split_dataset
    from spine_hf.training.cross_validation import cross_validate

    root = tmp_path_factory.mktemp("audit")
    make_phantoms(root / "pool", per_grade=50, seed=7, size=128, second_view=0.0)
    moves = [
        (path, root / "pool" / target / path.name)
        for source, target in (("grade_0", "grade_4"), ("grade_4", "grade_0"))
        for path in sorted((root / "pool" / source).glob("*.png"))[:FLIPPED_PER_SIDE]
    ]
    for source, target in moves:  # chosen before any moves: patients.csv finds each by its unique name
        shutil.move(source, target)
    flipped = {source.name for source, _ in moves}
    assert len(flipped) == 2 * FLIPPED_PER_SIDE
    split_dataset(root / "pool", root / "split", ratios=(0.8, 0.2, 0.0), seed=0)
    convert_to_dataset(root / "split", root / "ds")
    args = ["--config_path", str(REPO / "configs" / "quickstart.yaml"), f"--data.dataset={root / 'ds'}",
            f"--train.output_dir={root / 'cv'}", "--model.image_size=128", "--train.epochs=20",
            "--train.batch_size=16", "--train.threads=1", "--data.test_split="]  # fmt: skip
    cross_validate(parse_config(args), folds=2, seed=0)
    return root / "cv", flipped, root / "ds"


def test_the_flipped_labels_rank_first_and_nothing_is_changed(flipped_cv, tmp_path):
    cv, flipped, dataset = flipped_cv
    before = digest_tree(dataset), digest_tree(cv)
    report = audit_labels(cv, tmp_path / "audit", show=20)
    assert (digest_tree(dataset), digest_tree(cv)) == before  # it only reads
    with (tmp_path / "audit" / AUDIT_CSV).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == report.count == 250 and [int(r["rank"]) for r in rows] == list(range(1, 251))
    ranks = sorted(int(r["rank"]) for r in rows if Path(r["file"]).name in flipped)
    # 8 swapped labels of 250: a random ranking puts 0.5 of them among the first 16 (3 or more: 1.5 % of the time).
    found = sum(rank <= 2 * len(flipped) for rank in ranks)
    assert found >= 3, ranks
    for row in rows[: 2 * len(flipped)]:
        if Path(row["file"]).name in flipped:  # a Healthy film filed as Severe, or the other way round
            given, predicted = int(row["given_grade"]), int(row["predicted_grade"])
            assert given in (0, 4) and abs(predicted - (4 - given)) <= 2  # graded nearer its true grade than its label
    assert sum(r["flagged"] == "True" for r in rows) == report.flagged >= found // 2
    sheet = (tmp_path / "audit" / AUDIT_HTML).read_text()
    assert sheet.count("<figure") == report.shown == 20 and sheet.count("data:image/png;base64,") == 20
    assert "not a medical device" in sheet and Path(rows[0]["file"]).name in sheet


def test_the_cli_writes_beside_the_cross_validation_and_refuses_an_unfinished_one(flipped_cv, tmp_path, capsys):
    cv, _, _ = flipped_cv
    copy = tmp_path / "cv"
    shutil.copytree(cv, copy)
    assert main(["data", "audit", str(copy), "--show", "5"]) == 0
    out = capsys.readouterr().out
    assert "flagged" in out and str(copy / "audit" / AUDIT_HTML) in out
    assert (copy / "audit" / AUDIT_CSV).is_file()
    assert main(["data", "audit", str(copy), "--show", "5"]) == 1  # the audit folder is there: not replaced
    assert "overwrite" in capsys.readouterr().err
    (copy / "oof_predictions.csv").unlink()
    assert main(["data", "audit", str(copy)]) == 1
    assert "every fold is done" in capsys.readouterr().err
