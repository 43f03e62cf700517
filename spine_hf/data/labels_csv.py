"""Reading a labels CSV (``file,grade[,patient_id]``): the rows of `organize` and the patient ids of `split --groups`.

A header is optional: with one, columns are found by name (``file``/``filename``/``path``,
``grade``/``label``, ``patient_id``/``patient``); without one, the columns are file, grade and
patient id in that order. The delimiter (``,``, ``;`` or tab) is sniffed. A CSV that is not UTF-8
is read byte for byte, as Python keeps file names, so its names still match the files on disk.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

FILE_COLUMNS = ("file", "filename", "file_name", "path", "image", "image_path")
GRADE_COLUMNS = ("grade", "label", "kl_grade", "kl", "severity")
PATIENT_COLUMNS = ("patient_id", "patient", "patientid", "subject_id", "subject")


def read_label_rows(labels: Path, need_grade: bool = True) -> list[tuple[int, str, str, str]]:
    """(line, file, grade, patient id) for every data row of a labels CSV.

    With a header, columns are found by name (the grade column only when `need_grade`); without
    one, they are file, grade, patient id in that order.
    """
    data = labels.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # A CSV in a legacy encoding names files whose names on disk are usually in the same one:
        # keeping the bytes (as Python keeps file names) matches them exactly.
        logger.warning("%s is not UTF-8; its file names are matched to the files byte for byte", labels)
        text = data.decode("utf-8", errors="surrogateescape")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    table = [(n, row) for n, row in enumerate(csv.reader(text.splitlines(), dialect), 1) if any(row)]
    if not table:
        raise ValueError(f"{labels}: the CSV has no rows")
    header = [cell.strip().lower() for cell in table[0][1]]
    if any(name in header for name in FILE_COLUMNS):
        file_column = _column(header, FILE_COLUMNS)
        grade_column = _column(header, GRADE_COLUMNS)
        patient_column = _column(header, PATIENT_COLUMNS)
        if grade_column is None and need_grade:
            raise ValueError(f"{labels}: no grade column ({', '.join(GRADE_COLUMNS)}) in the header {header}")
        table = table[1:]
    else:
        file_column, grade_column, patient_column = 0, 1, 2
    rows = []
    for line, row in table:
        cells = [cell.strip() for cell in row]

        def cell(index: int | None, cells=cells) -> str:
            return cells[index] if index is not None and index < len(cells) else ""

        rows.append((line, cell(file_column), cell(grade_column), cell(patient_column)))
    return rows


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    return next((header.index(name) for name in names if name in header), None)


def read_patient_ids(path: Path) -> dict[str, str]:
    """{file: patient id} from a CSV with file and patient id columns (`split --groups`)."""
    rows = read_label_rows(path, need_grade=False)
    if not any(patient for *_, patient in rows):
        raise ValueError(f"{path}: no patient ids found; it needs file and patient_id columns")
    return {name: patient for _, name, _, patient in rows if patient}
