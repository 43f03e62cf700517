"""Synthetic full-spine AP radiographs graded by the Cobb angle of a drawn scoliotic curve.

Drawings, not patients (as `phantoms`): nothing learned on them says anything about real films. What
they give the project is spine-shaped data: tall films (height:width 2.2-3:1, drawn per phantom) from
the cervicothoracic junction to the sacrum, whose grade lives in the shape of the whole spine, so
that the input shape and resolution matter as they do for real scoliosis films.

Each phantom shows C7-L5 in a frontal view: vertebral bodies that widen towards the lumbar spine,
pedicles and spinous processes, ribs from the thoracic vertebrae, the lungs and the heart's shadow,
the pelvis (iliac wings, sacrum, femoral heads), the torso's soft tissue, a tube's heel effect along
the film, pose and exposure variation, blur and noise. The spine follows one lateral curve (a half
sine between its end vertebrae, thoracic, thoracolumbar or lumbar, to either side) that fades above
and below. Each vertebra is drawn tilted as the curve's tangent at its centre, so the Cobb angle
actually drawn (`cobb_drawn`) is the largest difference in tilt between two vertebrae, as a reader
measures it on the endplates.

The grade is the band of the Cobb angle a reader measured (`cobb_read`: the drawn angle plus a
reader's error of `READER_SD` degrees, the spread between human readers), so films near a cut-off
can fall in the neighbouring grade, as they do between readers: 0 Healthy below 10 degrees (not a
scoliosis), 1 Doubtful 10-20, 2 Minimal 20-30, 3 Moderate 30-45, 4 Severe from 45 (`COBB_CUTOFFS`).
"""

from __future__ import annotations

import numpy as np

from spine_hf.data.drawing import blur, inside, local, rounded_box, smooth_noise

# Cobb angles (degrees) where grades 1..4 start: the usual none (<10) / mild / moderate / severe (>=45) bands,
# the mild range split in two so that there are five grades.
COBB_CUTOFFS = (10.0, 20.0, 30.0, 45.0)
# A reader's measurement error (degrees, one standard deviation): 2-3 degrees within and about 3-5 between readers.
READER_SD = 2.5
# C7, T1-T12, L1-L5.
LEVELS = 18
THORACIC = range(1, 13)
# The largest curve drawn (degrees).
MAX_COBB = 75.0


def cobb_grade(angle: float) -> int:
    """The grade of a Cobb angle: the band it falls in (`COBB_CUTOFFS`)."""
    return int(np.searchsorted(COBB_CUTOFFS, angle, side="right"))


def sample_ap_anatomy(rng: np.random.Generator, grade: int) -> dict:
    """One patient's spine whose read Cobb angle falls in `grade`'s band; views of the patient share it."""
    aspect = rng.uniform(2.2, 3.0)  # height:width of the film
    top, bottom = rng.uniform(0.06, 0.10), rng.uniform(0.76, 0.82)  # C7's top, S1's top (heights of the film)
    relative = 0.75 + 0.5 * np.arange(LEVELS) / (LEVELS - 1)  # bodies grow towards the lumbar spine
    disc_share = np.where(np.arange(LEVELS) < 13, 0.2, 0.3)  # lumbar discs are thicker
    unit = (bottom - top) / float((relative * (1 + disc_share)).sum())
    bodies, discs = relative * unit, relative * disc_share * unit
    centres = top + np.cumsum(bodies + discs) - discs - bodies / 2
    width = 1.0 / aspect
    lo, hi = ([0.0, *COBB_CUTOFFS, MAX_COBB])[grade : grade + 2]
    kind = rng.choice(["thoracic", "thoracolumbar", "lumbar"], p=[0.5, 0.3, 0.2])
    upper, lower = {"thoracic": (4, 12), "thoracolumbar": (8, 15), "lumbar": (11, 17)}[kind]
    upper = int(rng.integers(upper - 1, upper + 2))
    lower = int(min(LEVELS - 1, rng.integers(lower - 1, lower + 2)))
    side = rng.choice([-1.0, 1.0], p=[0.3, 0.7])  # to the patient's right (image left), mostly
    wobble = rng.normal(0.0, 0.0015, LEVELS)  # small irregularity of a real spine's line
    while True:  # until the reader's angle falls in the grade's band: films near a cut-off may come from the next
        target = rng.uniform(max(0.0, lo - 4.0), min(MAX_COBB, hi + 4.0) if grade < 4 else hi)
        offsets = _curve(centres, upper, lower, target, side) + wobble
        tilts = _tilts(centres, offsets)
        drawn = float(np.degrees(tilts.max() - tilts.min()))
        read = float(np.clip(drawn + rng.normal(0.0, READER_SD), 0.0, None))
        if cobb_grade(read) == grade:
            break
    return {
        "aspect": aspect,
        "centres": centres,
        "bodies": bodies,
        "discs": discs,
        "offsets": offsets,  # lateral deviation of each vertebra from the midline (heights of the film)
        "tilts": tilts,  # radians
        "cobb_drawn": drawn,
        "cobb_read": read,
        "curve": f"{kind} {'right' if side > 0 else 'left'}",
        "midline": width / 2 + rng.uniform(-0.01, 0.01),
        "half_width": (0.018 + 0.012 * np.arange(LEVELS) / (LEVELS - 1)) * rng.uniform(0.9, 1.1),
        "thorax": rng.uniform(0.14, 0.17),
        "pelvis": rng.uniform(0.13, 0.16),
        "bone": rng.uniform(0.85, 1.1),
        "tissue": rng.uniform(0.25, 0.35),
        "texture_seed": int(rng.integers(1 << 31)),
    }


def _curve(centres: np.ndarray, upper: int, lower: int, cobb: float, side: float) -> np.ndarray:
    """Lateral offsets of the vertebrae: a half sine between the end vertebrae `upper` and `lower` whose tangents
    there differ by `cobb` degrees, fading above and below them."""
    start, end = centres[upper], centres[lower]
    length = end - start
    amplitude = length / np.pi * np.tan(np.radians(cobb) / 2)
    phase = np.pi * (centres - start) / length
    outside = np.where(centres < start, (centres - start) / (0.5 * length), 0.0)
    outside = np.where(centres > end, (centres - end) / (0.5 * length), outside)
    return side * amplitude * np.sin(phase) * np.exp(-(outside**2))


def _tilts(centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each vertebra's tilt (radians): the angle of the spine's line through its neighbours."""
    return np.arctan(np.gradient(offsets, centres))


def render_ap(anatomy: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """One AP view of a patient as a float image in 0..1 (bone bright), `size` pixels high."""
    rows, columns = size, max(16, round(size / anatomy["aspect"]))
    pixel = 1.0 / size
    y, x = np.meshgrid((np.arange(rows) + 0.5) * pixel, (np.arange(columns) + 0.5) * pixel, indexing="ij")
    # Pose: a small rotation, scale and shift around the film's centre.
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    scale = rng.uniform(0.95, 1.05)
    middle_x, middle_y = columns * pixel / 2 + rng.uniform(-0.01, 0.01), 0.5 + rng.uniform(-0.015, 0.015)
    cx, cy = x - middle_x, y - middle_y
    x = (np.cos(angle) * cx + np.sin(angle) * cy) / scale + columns * pixel / 2
    y = (-np.sin(angle) * cx + np.cos(angle) * cy) / scale + 0.5
    soft = pixel / scale

    texture = np.random.default_rng(anatomy["texture_seed"])
    attenuation = _torso(x, y, anatomy, texture, (rows, columns))
    attenuation += _skeleton(x, y, anatomy, texture, soft, (rows, columns))
    attenuation = blur(attenuation, 0.7 * size / 512)
    exposure = rng.uniform(2.0, 2.8)
    image = 1.0 - np.exp(-exposure * attenuation)
    image = image / (1.0 - np.exp(-exposure * 1.9))
    heel = 1.0 + rng.uniform(-0.12, 0.12) * (y - 0.5)  # the tube's heel effect along a long film
    image = np.clip(image * heel, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    image = image * rng.uniform(0.85, 1.0) + rng.uniform(0.0, 0.06)
    image += rng.normal(0.0, rng.uniform(0.008, 0.025), image.shape)
    return np.clip(image, 0.0, 1.0)


def _torso(x, y, anatomy, texture, shape):
    """Soft tissue (shoulders, waist, hips), the lungs darker and the heart's shadow denser."""
    midline, centres = anatomy["midline"], anatomy["centres"]
    shoulders, hips = anatomy["thorax"] * 1.25, anatomy["pelvis"] * 1.2
    half = np.interp(y, [0.0, 0.15, 0.55, 0.85, 1.0], [shoulders * 0.7, shoulders, shoulders * 0.78, hips, hips])
    body = np.clip(1.0 - ((x - midline) / half) ** 2, 0.0, 1.0) ** 0.5
    tissue = anatomy["tissue"] * body + 0.04 * smooth_noise(texture, shape, 8)
    spine_x = midline + np.interp(y, centres, anatomy["offsets"])
    lung_top, lung_bottom = centres[1] - 0.01, centres[11]
    for sign in (-1.0, 1.0):  # two lungs beside the spine, domed at the diaphragm
        lx = spine_x + sign * anatomy["thorax"] * 0.5
        ly = (lung_top + lung_bottom) / 2
        across, along = (x - lx) / (anatomy["thorax"] * 0.42), (y - ly) / ((lung_bottom - lung_top) / 2)
        lung = np.clip(1.0 - across**2 - along**2, 0.0, 1.0) ** 0.5
        tissue -= 0.16 * lung
    heart = np.exp(-(((x - spine_x + 0.03) / 0.06) ** 2 + ((y - centres[9]) / 0.05) ** 2))
    tissue += 0.08 * heart
    return np.clip(tissue, 0.0, None)


def _skeleton(x, y, anatomy, texture, soft, shape):
    total = np.zeros_like(x)
    bone, midline = anatomy["bone"], anatomy["midline"]
    trabecular = smooth_noise(texture, shape, 60)
    for level, centre in enumerate(anatomy["centres"]):
        cx, tilt = midline + anatomy["offsets"][level], anatomy["tilts"][level]
        half_w, half_h = anatomy["half_width"][level], anatomy["bodies"][level] / 2
        u, v = local(x, y, cx, centre, -tilt)  # endplates perpendicular to the spine's line
        distance = rounded_box(u, v, half_w, half_h, 0.2 * half_h)
        body = inside(distance, soft)
        rim = body * (1.0 - inside(distance + 0.12 * half_h, soft))
        total += bone * body * (0.3 + 0.08 * trabecular) + bone * 0.3 * rim
        for sign in (-1.0, 1.0):  # pedicles: oval rings near the body's upper corners
            ring = np.hypot((u - sign * 0.62 * half_w) / (0.2 * half_w), (v + 0.25 * half_h) / (0.35 * half_h)) - 1.0
            total += bone * 0.25 * inside(np.abs(ring) - 0.3, 0.15)
            # transverse processes, longer in the lumbar spine
            reach = half_w * (1.6 if level >= 13 else 1.25)
            bar = rounded_box(u - sign * reach * 0.75, v + 0.1 * half_h, reach * 0.45, 0.18 * half_h, 0.1 * half_h)
            total += bone * 0.14 * inside(bar, soft)
        spinous = np.hypot(u / (0.18 * half_w), (v - 0.15 * half_h) / (0.45 * half_h)) - 1.0
        total += bone * 0.2 * inside(spinous, 0.2)
        if level in THORACIC:  # a rib to each side: an arc out from the spine and down along the chest wall
            for sign in (-1.0, 1.0):
                span = anatomy["thorax"] * (0.55 + 0.45 * min(1.0, level / 6)) * (1.0 - 0.25 * max(0, level - 8) / 4)
                drop = 0.03 + 0.004 * level
                ex, ey = cx + sign * half_w * 1.2, centre + drop  # the arc's top is at the vertebra
                ellipse = np.hypot((x - ex) / span, (y - ey) / drop) - 1.0
                outward = (sign * (x - ex) >= 0) & (y <= ey + 0.3 * drop)
                total += bone * 0.2 * inside(np.abs(ellipse) * drop - 0.003, soft) * outward
    # The pelvis: iliac wings as rimmed ovals, the sacrum between them, the femoral heads below.
    sacrum_y = anatomy["centres"][-1] + anatomy["bodies"][-1] / 2 + anatomy["discs"][-1]
    sacrum_x = midline + anatomy["offsets"][-1] * 0.5
    depth = y - sacrum_y  # the sacrum: a wedge narrowing downwards from S1
    narrowing = 0.045 * (1.0 - 5.0 * np.clip(depth, 0, 0.1))
    sacrum = np.maximum(np.abs(depth - 0.05) - 0.05, np.abs(x - sacrum_x) - narrowing)
    total += bone * 0.28 * inside(sacrum, soft)
    for sign in (-1.0, 1.0):
        wing = np.hypot((x - sacrum_x - sign * anatomy["pelvis"] * 0.6) / (anatomy["pelvis"] * 0.5),
                        (y - sacrum_y - 0.035) / 0.075) - 1.0  # fmt: skip
        total += bone * (0.14 * inside(wing, 0.03) + 0.25 * inside(np.abs(wing) - 0.06, 0.03))
        head = np.hypot(x - sacrum_x - sign * anatomy["pelvis"] * 0.75, y - sacrum_y - 0.15) - 0.03
        total += bone * 0.35 * inside(head, soft)
    return total
