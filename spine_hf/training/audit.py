"""`spine-hf data audit`: the images whose given grade the out-of-fold predictions contradict most.

    spine-hf data audit outputs/knee/cv [--data DATASET] [--out DIR] [--show 100]

Confident learning (Northcutt, Jiang & Chuang 2021, through the `cleanlab` package) on the out-of-fold
probabilities of `spine-hf cv`: every image was graded by a model that never saw it, so a confident
disagreement with its given grade points at a reading worth a second look (or at an image the model
cannot grade). Every image is ranked by its label quality (cleanlab's self-confidence: the probability
the out-of-fold model gives the given grade; lowest first), and cleanlab's estimate of how many labels
are wrong marks the top of that list as likely issues.

It writes, into a new folder (default ``CV/audit``):

* ``audit.csv``: every image, ranked: file, patient, fold, given and predicted grade, the probability
  of each, the quality score and whether cleanlab flags it;
* ``audit.html``: a contact sheet of the top images (thumbnails with given and predicted grade and
  the probabilities) for a reader to review.

It only reads: no label is changed and no file is moved. Relabel in the grade folders (or the labels
CSV) after review, then `split`/`convert` again.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spine_hf.grades import GRADE_NAMES
from spine_hf.outputs import staged_folder

AUDIT_CSV = "audit.csv"
AUDIT_HTML = "audit.html"
THUMBNAIL = 160


@dataclass
class AuditReport:
    """What `audit_labels` found and wrote."""

    out: Path
    count: int
    # Images cleanlab flags as likely mislabelled, and how many the contact sheet shows.
    flagged: int
    shown: int
    # Row positions (in the cross-validation's pool order) from the most to the least suspicious.
    ranking: list[int]


def audit_labels(cv_folder: str | os.PathLike, out: str | os.PathLike | None = None, *, data=None,
                 show: int = 100, overwrite: bool = False) -> AuditReport:  # fmt: skip
    """Rank the images of a finished cross-validation by how much their out-of-fold predictions contradict
    their given grade; write ``audit.csv`` and the contact sheet ``audit.html`` (the `show` most
    suspicious images, at least every flagged one up to that many) into `out`.

    Args:
        cv_folder: a `spine-hf cv` folder whose folds are all done.
        out: a new or empty folder (default ``cv_folder/audit``).
        data: the converted dataset the images come from (default: the one the cross-validation used).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from spine_hf.outputs import check_new_output
    from spine_hf.predict.out_of_fold import OOF_FILE, read_oof_file
    from spine_hf.training.cross_validation import CV_FILE

    cv_folder = Path(cv_folder)
    if not (cv_folder / OOF_FILE).is_file():
        raise ValueError(f"{cv_folder} has no {OOF_FILE}: run `spine-hf cv` until every fold is done, then audit it")
    out = Path(out) if out is not None else cv_folder / "audit"
    check_new_output(out, overwrite)
    oof = read_oof_file(cv_folder)
    probabilities, grades = oof["probabilities"], oof["grade"]
    if data is None:
        import yaml

        settings = json.loads((cv_folder / CV_FILE).read_text(encoding="utf-8"))
        data = yaml.safe_load(settings["config"])["data"]["dataset"]
    quality = get_label_quality_scores(grades, probabilities, method="self_confidence")
    ranking = np.argsort(quality, kind="stable").tolist()
    flagged = np.zeros(len(grades), dtype=bool)
    present = np.unique(grades)
    if len(present) > 1:  # cleanlab estimates the noise among the grades present (numbered 0..K-1 for it)
        among = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        flagged = find_label_issues(np.searchsorted(present, grades), among, filter_by="prune_by_noise_rate")
    shown = ranking[: max(0, show)]
    with staged_folder(out, overwrite) as staging:
        _write_csv(staging / AUDIT_CSV, oof, ranking, quality, flagged)
        images = _thumbnails(data, oof, shown)
        (staging / AUDIT_HTML).write_text(_sheet(oof, shown, images, quality, flagged), encoding="utf-8")
    return AuditReport(out, len(grades), int(flagged.sum()), len(shown), ranking)


def _write_csv(path: Path, oof: dict, ranking, quality, flagged) -> None:
    probabilities, grades = oof["probabilities"], oof["grade"]
    with path.open("w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["rank", "file", "patient", "fold", "given_grade", "predicted_grade", "p_given",
                         "p_predicted", "label_quality", "flagged"])  # fmt: skip
        for rank, i in enumerate(ranking, start=1):
            predicted = int(probabilities[i].argmax())
            writer.writerow([rank, oof["file"][i], oof["patient"][i], int(oof["fold"][i]), int(grades[i]), predicted,
                             f"{probabilities[i, grades[i]]:.6f}", f"{probabilities[i, predicted]:.6f}",
                             f"{quality[i]:.6f}", bool(flagged[i])])  # fmt: skip


def _thumbnails(data, oof: dict, positions: list[int]) -> dict[int, str]:
    """PNG data URLs of the canonical images at `positions`, at most `THUMBNAIL` px on the long side."""
    from spine_hf.data.dataset_folder import decode_split, load_grade_dataset

    dataset = load_grade_dataset(data)
    found = {}
    for split in dict.fromkeys(oof["split"][i] for i in positions):
        mine = [i for i in positions if oof["split"][i] == split]
        for i, image in zip(mine, decode_split(dataset[split].select([oof["row"][i] for i in mine])), strict=True):
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            found[i] = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return found


def _sheet(oof: dict, shown, images, quality, flagged) -> str:
    """The contact sheet: one card per image, most suspicious first."""
    probabilities, grades = oof["probabilities"], oof["grade"]
    count, n_flagged = len(grades), int(flagged.sum())
    cards = []
    for rank, i in enumerate(shown, start=1):
        given, predicted = int(grades[i]), int(probabilities[i].argmax())
        bars = "".join(
            f'<div class="bar{" given" if g == given else ""}"><span style="width:{100 * p:.0f}%"></span>'
            f"{g} {GRADE_NAMES[g]} {p:.2f}</div>"
            for g, p in enumerate(probabilities[i])
        )
        cards.append(
            f'<figure class="{"flagged" if flagged[i] else ""}"><img src="{images[i]}" alt="">'
            f"<figcaption><b>#{rank}</b> {html.escape(oof['file'][i])}<br>patient {html.escape(oof['patient'][i])},"
            f" fold {int(oof['fold'][i])}<br>given <b>{given} {GRADE_NAMES[given]}</b>, predicted "
            f"<b>{predicted} {GRADE_NAMES[predicted]}</b><br>quality {quality[i]:.3f}"
            f"{' (flagged)' if flagged[i] else ''}{bars}</figcaption></figure>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>spine-hf label audit</title>
<style>
body {{ font: 13px sans-serif; margin: 1em; }}
main {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; width: 200px; border: 1px solid #ccc; padding: 6px; }}
figure.flagged {{ border: 2px solid #c33; }}
img {{ display: block; margin: 0 auto 4px; max-width: {THUMBNAIL}px; }}
.bar {{ position: relative; font-size: 11px; }}
.bar span {{ position: absolute; left: 0; top: 0; bottom: 0; background: #9bd; z-index: -1; }}
.bar.given {{ font-weight: bold; }}
</style></head><body>
<h1>Label audit</h1>
<p>Research software, not a medical device. The {len(shown)} images (of {count}) whose given grade their out-of-fold
prediction contradicts most, most suspicious first; {n_flagged} are flagged by confident learning (red border).
Each was graded by a model that never saw it. Nothing was changed: review them, and relabel where the reading
was wrong.</p>
<main>
{"".join(cards)}
</main></body></html>
"""
