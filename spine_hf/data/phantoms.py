"""Synthetic spine radiographs with a known severity grade (`spine-hf data phantoms`): lateral lumbar views
graded by degeneration (here), or full-spine AP films graded by the Cobb angle of a drawn curve (`phantoms_ap`).

These are drawings, not patients: they let every part of the project be run, tested and demonstrated
without private data. Nothing learned or measured on them says anything about real radiographs.

Each phantom shows L1-L5 and the top of the sacrum in a lateral view: vertebral bodies with a
cortical rim and trabecular texture, posterior elements, intervertebral discs, soft tissue with
bowel gas, a lordotic curve, pose and exposure variation, blur and noise. A continuous severity
``grade + N(0, 0.35)`` drives what a reader grades on, worst at the lower levels as in real spines:

* disc-space narrowing (full height at 0, about a quarter at 4);
* osteophytes at the anterior (and, later, posterior) vertebral corners, absent at 0, beak-like at 4;
* endplate sclerosis (a bright band along the endplates) growing in width and density;
* deformity: endplate irregularity, anterior wedging and, at the top grades, an anterolisthesis.

Neighbouring grades therefore overlap a little, as they do between human readers. Output is a
pool ``OUT/grade_N/phXXXXX_a.png`` plus ``OUT/patients.csv``; about a quarter of the patients have a
second view (``_b``) and a share of the files are 16-bit PNG so that path is always exercised. AP
phantoms are `size` pixels high and 2.2-3 times narrower, and patients.csv carries each film's Cobb
angle as drawn and as read (`cobb_drawn`, `cobb_read`), so that their labels can be checked.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from spine_hf.data.drawing import blur, inside, local, rounded_box, smooth_noise
from spine_hf.data.layout import write_patients
from spine_hf.data.parallel import map_cpu
from spine_hf.data.phantoms_ap import render_ap, sample_ap_anatomy
from spine_hf.grades import NUM_GRADES, grade_folder
from spine_hf.outputs import staged_folder

DESCRIPTION = "Synthetic spine phantom made by spine-hf; not an image of a patient."
# What a phantom shows: a lateral lumbar view, or a full-spine AP film.
VIEWS = ("lateral", "ap")
# Fraction of each disc's normal height lost at grade 4, per level L1-2 ... L5-S1.
_LEVEL_WEIGHT = np.array([0.7, 0.8, 0.9, 1.0, 1.0])


@dataclass(frozen=True)
class PhantomReport:
    out: Path
    # grade -> images written
    counts: list[int]
    patients: int
    sixteen_bit: int
    seconds: float


def make_phantoms(
    out: str | os.PathLike,
    *,
    per_grade: int = 40,
    seed: int = 0,
    size: int = 256,
    share_16bit: float = 0.25,
    second_view: float = 0.25,
    view: str = "lateral",
) -> PhantomReport:
    """Write `per_grade` phantoms of each grade into ``OUT/grade_N/`` and ``OUT/patients.csv``: lateral views
    `size` pixels square, or (`view="ap"`) full-spine AP films `size` pixels high.

    The same arguments always give the same files. `OUT` must not hold a previous set.
    """
    if per_grade < 1 or size < 32:
        raise ValueError("per_grade must be at least 1 and size at least 32 pixels")
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
    sample, render = (sample_ap_anatomy, render_ap) if view == "ap" else (_sample_anatomy, render_phantom)
    extra: dict[str, dict] = {}
    start = time.perf_counter()
    out = Path(out)
    patients: dict[str, str] = {}
    counts = [0] * NUM_GRADES
    patient_number = 0
    jobs = []  # each patient's views, planned in order, then drawn on every core (the same files as in order)
    with staged_folder(out) as staging:  # refuses a non-empty OUT; appears only when complete
        for grade in range(NUM_GRADES):
            folder = staging / grade_folder(grade)
            folder.mkdir(parents=True, exist_ok=True)
            while counts[grade] < per_grade:
                patient_number += 1
                rng = np.random.default_rng([seed, grade, patient_number])
                anatomy = sample(rng, grade)
                views = 2 if rng.random() < second_view and counts[grade] + 2 <= per_grade else 1
                names = [f"ph{patient_number:05d}_{letter}.png" for letter in "ab"[:views]]
                jobs.append((render, anatomy, rng, size, share_16bit, [folder / name for name in names]))
                for name in names:
                    patients[f"{grade_folder(grade)}/{name}"] = f"ph{patient_number:05d}"
                    if "cobb_read" in anatomy:  # AP films: the angle their grade comes from
                        extra[f"{grade_folder(grade)}/{name}"] = {
                            "cobb_drawn": f"{anatomy['cobb_drawn']:.2f}",
                            "cobb_read": f"{anatomy['cobb_read']:.2f}",
                        }
                counts[grade] += views
        sixteen = sum(sum(deep) for deep in map_cpu(_draw, jobs))
        write_patients(staging, patients, extra)
    return PhantomReport(out, counts, patient_number, sixteen, time.perf_counter() - start)


def _draw(job: tuple) -> list[bool]:
    """Render and save one patient's views (in a worker); whether each was written as 16-bit PNG."""
    render, anatomy, rng, size, share_16bit, paths = job
    written = []
    for path in paths:
        pixels = render(anatomy, rng, size)
        deep = bool(rng.random() < share_16bit)
        _save_png(path, pixels, deep)
        written.append(deep)
    return written


def _save_png(path: Path, pixels: np.ndarray, sixteen_bit: bool) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", DESCRIPTION)
    if sixteen_bit:
        Image.fromarray(np.round(pixels * 65535).astype(np.uint16)).save(path, pnginfo=info)
    else:
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(path, pnginfo=info)


def _sample_anatomy(rng: np.random.Generator, grade: int) -> dict:
    """Everything about one patient's spine; views of the same patient share it."""
    severity = float(np.clip(grade + rng.normal(0.0, 0.35), -0.5, 4.5))
    u = np.clip(severity / 4.0, 0.0, 1.1)
    per_level = np.clip(u * _LEVEL_WEIGHT + rng.normal(0.0, 0.05, 5), 0.0, 1.1)
    return {
        "body_height": rng.uniform(0.105, 0.12),
        "aspect": rng.uniform(1.25, 1.45),
        "lordosis": rng.uniform(0.03, 0.07),
        "disc": 0.32 * (1.0 - 0.75 * per_level) * rng.uniform(0.9, 1.1, 5),
        "osteophyte": np.clip((per_level - 0.2) / 0.8, 0.0, None) * 0.38 * rng.uniform(0.8, 1.2, 5),
        "sclerosis": per_level**1.5,
        "irregularity": per_level,
        "wedge": np.where(rng.random(5) < 0.5, np.clip((u - 0.5) / 0.5, 0.0, 1.0) * 0.25, 0.0),
        "listhesis": float(np.clip((u - 0.7) / 0.3, 0.0, 1.0) * 0.16 * rng.uniform(0.6, 1.2)),
        "bone": rng.uniform(0.85, 1.1),
        "tissue": rng.uniform(0.25, 0.35),
        "gas": rng.integers(1, 5),
        "texture_seed": int(rng.integers(1 << 31)),
    }


def render_phantom(anatomy: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """One view of a patient as a float image in 0..1 (bone bright)."""
    pixel = 1.0 / size
    coords = (np.arange(size) + 0.5) * pixel
    x, y = np.meshgrid(coords, coords)
    # Pose: rotate, scale and shift the sampling grid around the image centre.
    angle = np.deg2rad(rng.uniform(-7.0, 7.0))
    scale = rng.uniform(0.92, 1.08)
    dx, dy = rng.uniform(-0.04, 0.04, 2)
    cx, cy = x - 0.5 - dx, y - 0.5 - dy
    x = (np.cos(angle) * cx + np.sin(angle) * cy) / scale + 0.5
    y = (-np.sin(angle) * cx + np.cos(angle) * cy) / scale + 0.5
    soft = pixel / scale

    texture = np.random.default_rng(anatomy["texture_seed"])
    attenuation = _soft_tissue(x, y, anatomy, texture, size)
    attenuation += _spine(x, y, anatomy, texture, soft)
    attenuation = blur(attenuation, 0.7 * size / 256)

    exposure = rng.uniform(2.0, 2.8)
    image = 1.0 - np.exp(-exposure * attenuation)
    image = image / (1.0 - np.exp(-exposure * 1.9))
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    image = image * rng.uniform(0.85, 1.0) + rng.uniform(0.0, 0.06)
    image += rng.normal(0.0, rng.uniform(0.008, 0.025), image.shape)
    return np.clip(image, 0.0, 1.0)


def _soft_tissue(x, y, anatomy, texture, size):
    # The body: a broad ellipse, thicker at the back, fading towards the film edges.
    body = np.clip(1.0 - ((x - 0.52) / 0.62) ** 2 - ((y - 0.5) / 0.9) ** 2, 0.0, 1.0) ** 0.5
    tissue = anatomy["tissue"] * body * (1.0 + 0.25 * (x - 0.5))
    tissue += 0.05 * smooth_noise(texture, size, cells=6)
    for _ in range(int(anatomy["gas"])):  # bowel gas in front of the spine
        gx, gy = texture.uniform(0.05, 0.3), texture.uniform(0.1, 0.9)
        rx, ry = texture.uniform(0.03, 0.08, 2)
        tissue -= 0.12 * np.exp(-(((x - gx) / rx) ** 2 + ((y - gy) / ry) ** 2))
    return np.clip(tissue, 0.0, None)


def _spine(x, y, anatomy, texture, soft):
    height = anatomy["body_height"]
    width = height * anatomy["aspect"]
    discs = anatomy["disc"] * height
    # Stack L1..L5 top to bottom, centred on the film, then the sacrum.
    span = 5 * height + discs[:4].sum()
    centres_y = []
    top = 0.5 - span / 2 - 0.03
    for level in range(5):
        centres_y.append(top + height / 2)
        top += height + (discs[level] if level < 4 else 0.0)

    def centre_x(cy):  # lordosis: the lumbar curve bulges forward (to the left) mid-way
        return 0.52 - anatomy["lordosis"] * np.sin(np.pi * (cy - centres_y[0]) / (centres_y[-1] - centres_y[0] + 1e-9))

    def tilt(cy):
        step = 1e-3
        return np.arctan2(centre_x(cy + step) - centre_x(cy - step), 2 * step)

    total = np.zeros_like(x)
    bone = anatomy["bone"]
    trabecular = smooth_noise(texture, x.shape[0], cells=40)
    for level, cy in enumerate(centres_y):
        cx = centre_x(cy) - (anatomy["listhesis"] * height if level == 3 else 0.0)  # L4 slips forward
        u, v = local(x, y, cx, cy, tilt(cy))
        below = level  # disc below this body: L1-2 ... L5-S1
        above = level - 1
        profile = _endplate_profile(texture, u / (width / 2), anatomy["irregularity"], level)
        half = height / 2 * (1.0 - anatomy["wedge"][level] * (1.0 - u / (width / 2)) / 2) + profile
        distance = rounded_box(u, v, width / 2, half, 0.12 * height)
        body = inside(distance, soft)
        shell = body * (1.0 - inside(distance + 0.05 * height, soft))
        total += bone * body * (0.36 + 0.1 * trabecular) + bone * 0.32 * shell
        # Endplate sclerosis: a dense band along the endplates that face a degenerated disc.
        for disc_index, sign in ((above, -1.0), (below, 1.0)):
            if 0 <= disc_index < 5:
                band = 0.05 * height + 0.09 * height * anatomy["sclerosis"][disc_index]
                near = inside(np.abs(v - sign * half) - band, soft) * body
                total += bone * 0.38 * anatomy["sclerosis"][disc_index] * near
        # Osteophytes at the anterior corners (posterior ones from moderate grades on).
        for disc_index, sign in ((above, -1.0), (below, 1.0)):
            if 0 <= disc_index < 5 and anatomy["osteophyte"][disc_index] > 0:
                length = anatomy["osteophyte"][disc_index] * height
                for side, factor in ((-1.0, 1.0), (1.0, 0.45)):
                    spur = length * factor
                    if spur < 0.02 * height:
                        continue
                    ou = u - side * (width / 2 + 0.25 * spur)
                    ov = v - sign * (half + 0.15 * spur)
                    rot = -side * sign * 0.6
                    pu = np.cos(rot) * ou + np.sin(rot) * ov
                    pv = -np.sin(rot) * ou + np.cos(rot) * ov
                    total += bone * 0.6 * inside(np.hypot(pu / (0.55 * spur), pv / (0.22 * spur)) - 1.0, 0.15)
        # Posterior elements: pedicle and facet behind the body, fainter.
        pu, pv = u - (width / 2 + 0.28 * width), v + 0.1 * height
        total += bone * 0.22 * inside(np.hypot(pu / (0.22 * width), pv / (0.3 * height)) - 1.0, 0.2)
        su, sv = u - (width / 2 + 0.75 * width), v + 0.05 * height
        total += bone * 0.16 * inside(np.hypot(su / (0.3 * width), sv / (0.22 * height)) - 1.0, 0.2)
        # The disc below: soft tissue slightly denser than fat, darker when degenerated (vacuum).
        if level < 4:
            dv = v - (half + discs[level] / 2)
            disc = inside(rounded_box(u, dv, width / 2 * 0.97, discs[level] / 2, 0.3 * discs[level]), soft)
            total += 0.08 * disc * (1.0 - 0.6 * anatomy["irregularity"][level])
    # Sacrum: a tilted block below L5-S1.
    last = centres_y[-1] + height / 2 + discs[4]
    u, v = local(x, y, centre_x(centres_y[-1]) + 0.1 * width, last + 0.9 * height, tilt(centres_y[-1]) + 0.3)
    half = 0.9 * height * (1.0 - 0.25 * (v / (0.9 * height) + 1.0))  # narrows towards the coccyx
    distance = rounded_box(u, v - 0.0, width / 2 * 1.05, 0.9 * height, 0.1 * height)
    distance = np.maximum(distance, np.abs(u) - (width / 2) * (1.0 - 0.35 * np.clip(v / (0.9 * height), 0, 1)))
    sacrum = inside(distance, soft) * (half > -1)
    total += bone * (0.3 + 0.08 * trabecular) * sacrum + bone * 0.25 * sacrum * (
        1.0 - inside(distance + 0.05 * height, soft)
    )
    return total


def _endplate_profile(texture, position, irregularity, level):
    """Small bumps along the endplate that grow with degeneration."""
    amount = max(float(irregularity[min(level, 4)]), float(irregularity[max(level - 1, 0)]))
    phase = texture.uniform(0, 2 * np.pi, 2)
    return 0.006 * amount * (np.sin(7.0 * position + phase[0]) + 0.6 * np.sin(13.0 * position + phase[1]))
