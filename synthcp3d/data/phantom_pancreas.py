"""Procedural CT-like abdominal phantom with pancreas and tumour labels, written as MSD Task07.

Each case is a contrast-enhanced (portal-venous-like) abdominal CT in Hounsfield units: body outline,
subcutaneous and visceral fat, muscle wall, liver, spleen, kidneys, spine, aorta and IVC, bowel loops
with gas and fluid, a splenic vein running behind the pancreas, and a lobulated, curved pancreas
(head near the duodenum, body over the aorta, tail towards the spleen) holding one or two hypodense
tumours (solid masses at the parenchyma's HU minus their contrast) whose size (a few mm to several cm)
and contrast (from obvious to nearly invisible) vary widely. Acquisition: anisotropic voxels, slice-thickness
blur, correlated noise, int16 HU.

Following TorchIO, random parameters are drawn apart from their application:
:func:`sample_case` draws a :class:`PancreasCase` (plain numbers, saved to ``phantom_meta.json``),
:func:`render_case` turns it into ``(image, label, affine)`` deterministically.

Anatomy lives in RAS+ world millimetres (+x towards the patient's right, +y anterior, +z superior,
origin near the body centre). Voxels are placed through an LPS-like affine ``diag(-sx, -sy, sz)``, as
in many DICOM-converted NIfTI files, so downstream code must honour the affine
(``Orientationd("RAS")``) rather than assume an axis order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from synthcp3d.data.io import write_nifti

__all__ = ["PancreasCase", "Lesion", "make_pancreas_dataset", "render_case", "sample_case"]

LABELS = {"0": "background", "1": "pancreas", "2": "cancer"}
# A 512x512x90 CT at ~0.8 x 0.8 x 2.2 mm spans ~410 x 410 x 200 mm; smaller grids keep that field of view
# (coarser voxels) unless ``field_of_view_mm`` narrows it, e.g. to a pancreas-centred region of interest.
_REF_SIZE = (512, 512, 90)


@dataclass
class Lesion:
    """One tumour: position along the pancreas centreline, radii (mm) and HU drop below parenchyma."""

    t: float
    radii_mm: tuple[float, float, float]
    contrast_hu: float
    offset_mm: tuple[float, float, float]
    necrosis: float


@dataclass
class PancreasCase:
    """Random parameters of one phantom case (all lengths in mm, intensities in HU)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    center_mm: tuple[float, float, float]
    body_axes_mm: tuple[float, float]
    fat_mm: float
    organ_hu: dict[str, float]
    pancreas_ctrl_mm: list[tuple[float, float, float]]
    pancreas_radius_mm: tuple[float, float, float]
    lobulation: float
    lesions: list[Lesion]
    noise_hu: float
    blur_mm: tuple[float, float, float]
    texture_seed: int
    extras: dict[str, float] = field(default_factory=dict)


def sample_case(
    rng: np.random.Generator,
    size: tuple[int, int, int],
    field_of_view_mm: tuple[float, float, float] | None = None,
    roi_center: str = "body",
    tumour_radius_mm: tuple[float, float] = (3.0, 22.0),
    contrast_scale: float = 1.0,
) -> PancreasCase:
    """Draw the random parameters of one case.

    Args:
        rng: NumPy generator; the same state gives the same case.
        size: voxel grid ``(X, Y, Z)``, each at least 8.
        field_of_view_mm: physical extent of the grid. Default: a whole abdomen (~360-460 mm in-plane,
            ~135-270 mm in z), i.e. ~0.7-0.9 mm x 1.5-3 mm voxels at 512x512x90, coarser for smaller grids.
        roi_center: ``"body"`` centres the grid on the body, ``"pancreas"`` on the pancreas (a
            coarse-stage region of interest, for a small ``field_of_view_mm``).
        tumour_radius_mm: ``(lo, hi)`` range of the log-uniform mean tumour radius (default 3-22 mm).
        contrast_scale: factor on every tumour's HU drop below the parenchyma (default 1: today's bands,
            5-20 / 20-50 / 50-110 HU; e.g. 0.5 gives subtler tumours).

    Returns:
        The case's parameters; :func:`render_case` turns them into a volume.
    """
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 8:
        raise ValueError(f"size must be three integers >= 8, got {size}")
    if field_of_view_mm is None:
        sxy = rng.uniform(0.7, 0.9) * _REF_SIZE[0] / size[0]
        spacing = (sxy, sxy, rng.uniform(1.5, 3.0) * _REF_SIZE[2] / size[2])
    else:
        if len(field_of_view_mm) != 3 or min(field_of_view_mm) <= 0:
            raise ValueError(f"field_of_view_mm must be three positive lengths, got {field_of_view_mm}")
        spacing = tuple(float(f) / s for f, s in zip(field_of_view_mm, size, strict=True))
    r_lo, r_hi = (float(v) for v in tumour_radius_mm)
    if not 0 < r_lo <= r_hi:
        raise ValueError(f"tumour_radius_mm must be (lo, hi) with 0 < lo <= hi, got {tumour_radius_mm}")
    if not float(contrast_scale) > 0:
        raise ValueError(f"contrast_scale must be > 0, got {contrast_scale}")

    # Pancreas centreline through four control points (RAS mm): head beside the duodenum on the
    # patient's right, neck in front of the portal confluence, body over the aorta, tail towards the
    # splenic hilum on the left, running posterior and superior.
    ctrl = [
        (rng.uniform(28, 42), rng.uniform(-22, -10), rng.uniform(-22, -10)),
        (rng.uniform(2, 14), rng.uniform(-8, 4), rng.uniform(-10, 0)),
        (rng.uniform(-40, -25), rng.uniform(-14, -4), rng.uniform(-4, 8)),
        (rng.uniform(-92, -75), rng.uniform(-40, -25), rng.uniform(6, 22)),
    ]

    lesions = []
    for _ in range(2 if rng.random() < 0.25 else 1):
        # log-uniform radius, 3-22 mm by default; another range maps the same draw onto [r_lo, r_hi], so the random
        # stream stays the default one and a case differs from its default twin in its tumours only
        draw = rng.uniform(np.log(3.0), np.log(22.0))
        r0 = float(np.exp(draw))
        u = (draw - np.log(3.0)) / (np.log(22.0) - np.log(3.0))
        r = r0 if (r_lo, r_hi) == (3.0, 22.0) else float(np.exp(np.log(r_lo) + u * (np.log(r_hi) - np.log(r_lo))))
        band = int(rng.choice(3, p=[0.2, 0.3, 0.5]))  # nearly invisible / subtle / obvious
        contrast = float(rng.uniform(*[(5, 20), (20, 50), (50, 110)][band])) * float(contrast_scale)
        t = float(rng.uniform(0.0, 1.0))
        radii = tuple(float(r * rng.uniform(0.7, 1.3)) for _ in range(3))
        offset = tuple(float(v) for v in rng.normal(0.0, 2.5, 3))
        necrosis = float(rng.uniform(0.0, 1.0)) if r0 > 12 else 0.0  # drawn where the default radius draws it
        lesions.append(Lesion(t=t, radii_mm=radii, contrast_hu=contrast, offset_mm=offset,
                              necrosis=necrosis if r > 12 else 0.0))  # fmt: skip

    if roi_center == "pancreas":
        center = tuple(float(v) for v in np.mean(np.asarray(ctrl), axis=0))
    elif roi_center == "body":
        center = (0.0, rng.uniform(-15, 0), float(np.mean([p[2] for p in ctrl]) + rng.uniform(-15, 15)))
    else:
        raise ValueError(f"roi_center must be 'body' or 'pancreas', got {roi_center!r}")

    hu_ranges = {
        "fat": (-115, -80), "muscle": (40, 60), "liver": (95, 130), "spleen": (100, 135),
        "kidney": (150, 200), "aorta": (140, 230), "ivc": (110, 165), "bone": (350, 600),
        "marrow": (150, 260), "pancreas": (85, 125), "bowel_wall": (60, 110), "bowel_fluid": (0, 35),
        "splenic_vein": (120, 175), "duodenum": (15, 55), "csf": (0, 15),
    }  # fmt: skip
    return PancreasCase(
        size=size,
        spacing=tuple(float(s) for s in spacing),
        center_mm=tuple(float(c) for c in center),
        body_axes_mm=(float(rng.uniform(140, 180)), float(rng.uniform(100, 130))),
        fat_mm=float(rng.uniform(8, 30)),
        organ_hu={k: float(rng.uniform(*v)) for k, v in hu_ranges.items()},
        pancreas_ctrl_mm=[tuple(float(v) for v in p) for p in ctrl],
        pancreas_radius_mm=(float(rng.uniform(11, 16)), float(rng.uniform(7, 11)), float(rng.uniform(6, 10))),
        lobulation=float(rng.uniform(0.1, 0.45)),
        lesions=lesions,
        noise_hu=float(rng.uniform(6, 18)),
        blur_mm=(float(rng.uniform(0.4, 1.0)), float(rng.uniform(0.4, 1.0)), float(rng.uniform(1.0, 2.5))),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def case_affine(case: PancreasCase) -> np.ndarray:
    """Voxel-to-RAS affine ``diag(-sx, -sy, sz)`` (LPS-stored, as DICOM conversions write) centred on the ROI."""
    a = np.diag([-case.spacing[0], -case.spacing[1], case.spacing[2], 1.0])
    a[:3, 3] = np.asarray(case.center_mm) - a[:3, :3] @ ((np.asarray(case.size) - 1) / 2.0)
    return a


def _smooth_noise(
    rng: np.random.Generator, size: tuple[int, ...], spacing: tuple[float, ...], scale_mm: float
) -> np.ndarray:
    """Unit-variance Gaussian noise with correlation length ~``scale_mm``, shape ``size`` (float32)."""
    coarse = tuple(max(2, int(np.ceil(n * s / scale_mm)) + 2) for n, s in zip(size, spacing, strict=True))
    field_ = rng.standard_normal(coarse).astype(np.float32)
    out = ndimage.zoom(field_, [n / c for n, c in zip(size, coarse, strict=True)], order=1, grid_mode=True,
                       mode="grid-constant")[tuple(slice(0, n) for n in size)]  # fmt: skip
    out -= out.mean()
    return out / (out.std() + 1e-6)


def _ellipsoid(x, y, z, c, r) -> np.ndarray:
    """Normalised squared radius ``sum(((p - c) / r)^2)`` broadcast over the grid (<1 inside)."""
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2


def _centreline(ctrl: list[tuple[float, float, float]], step_mm: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Densely sampled cubic spline through ``ctrl``: points ``(M, 3)`` mm and their parameter ``t`` in [0, 1]."""
    from scipy.interpolate import CubicSpline

    p = np.asarray(ctrl, dtype=np.float64)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    spline = CubicSpline(chord / chord[-1], p, bc_type="natural")
    t = np.linspace(0.0, 1.0, max(16, int(chord[-1] / step_mm)))
    return spline(t), t


def _tube_distance(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray], points: np.ndarray, pad_mm: float
) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice, slice]]:
    """Distance (mm) from each voxel of the bounding box of ``points`` (+ ``pad_mm``) to the polyline.

    Returns distances and the index of the nearest centreline point, both over the box, and the box's
    slices into the full grid. A k-d tree keeps this O(voxels log points) instead of voxels x points.
    """
    from scipy.spatial import cKDTree

    box = []
    for axis, coord in enumerate(grid):
        c = coord.ravel()
        inside = np.nonzero((c >= points[:, axis].min() - pad_mm) & (c <= points[:, axis].max() + pad_mm))[0]
        box.append(slice(int(inside.min()), int(inside.max()) + 1) if inside.size else slice(0, 0))
    sub = [coord.ravel()[s] for coord, s in zip(grid, box, strict=True)]
    shape = tuple(len(s) for s in sub)
    if 0 in shape:
        return np.full(shape, np.inf, np.float32), np.zeros(shape, np.int64), tuple(box)
    mesh = np.stack(np.meshgrid(*sub, indexing="ij"), axis=-1).reshape(-1, 3)
    dist, idx = cKDTree(points).query(mesh)
    return dist.reshape(shape).astype(np.float32), idx.reshape(shape), tuple(box)


def render_case(case: PancreasCase) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one case deterministically.

    Returns:
        ``image`` int16 HU ``(X, Y, Z)``, ``label`` uint8 ``(X, Y, Z)`` in {0 background, 1 pancreas,
        2 cancer} with at least one cancer voxel, and the 4x4 voxel-to-RAS ``affine``.
    """
    rng = np.random.default_rng(case.texture_seed)
    hu = case.organ_hu
    affine = case_affine(case)
    idx = [np.arange(n, dtype=np.float32) for n in case.size]
    x = (affine[0, 0] * idx[0] + affine[0, 3])[:, None, None]
    y = (affine[1, 1] * idx[1] + affine[1, 3])[None, :, None]
    z = (affine[2, 2] * idx[2] + affine[2, 3])[None, None, :]
    shape, sp = case.size, case.spacing
    texture = _smooth_noise(rng, shape, sp, 3.0)

    # Body: elliptic cross-section slowly varying along z; subcutaneous fat, muscle wall, visceral fat.
    a, b = case.body_axes_mm
    wobble = 1.0 + 0.04 * np.sin(z / 40.0)
    body_r = (x / (a * wobble)) ** 2 + ((y + 10) / (b * wobble)) ** 2
    inner = (x / (a * wobble - case.fat_mm)) ** 2 + ((y + 10) / (b * wobble - case.fat_mm)) ** 2
    visceral = (x / (a * wobble - case.fat_mm - 10)) ** 2 + ((y + 10) / (b * wobble - case.fat_mm - 10)) ** 2
    img = np.full(shape, -1000.0, np.float32)
    img[np.broadcast_to(body_r < 1, shape)] = hu["fat"]
    img[np.broadcast_to(inner < 1, shape)] = hu["muscle"]
    img[np.broadcast_to(visceral < 1, shape)] = hu["fat"]
    for side in (-1, 1):  # paraspinal muscles
        img[np.broadcast_to(_ellipsoid(x, y, 0 * z, (side * 38, -95, 0), (28, 22, 1)) < 1, shape)] = hu["muscle"]

    def paint(mask: np.ndarray, value: float, texture_hu: float = 6.0) -> None:
        m = np.broadcast_to(mask, shape)
        img[m] = value + texture_hu * texture[m]

    pz = float(np.mean([p[2] for p in case.pancreas_ctrl_mm]))
    # Bowel loops and stomach: tube-like isosurfaces of a smooth field, gas and fluid inside, enhancing walls.
    bowel_field = _smooth_noise(rng, shape, sp, 14.0)
    gas_field = _smooth_noise(rng, shape, sp, 8.0)
    belly = np.broadcast_to((visceral < 0.92) & (y > 5), shape)
    loop = belly & (np.abs(bowel_field) < 0.35)
    wall = loop & (np.abs(bowel_field) > 0.22)
    img[loop] = np.where(gas_field[loop] > 0.9, -850.0, hu["bowel_fluid"] + 15 * texture[loop])
    img[wall] = hu["bowel_wall"]
    stomach = _ellipsoid(x, y, z, (-45, 20, pz + 55), (45, 35, 40)) < 1
    paint(stomach, hu["bowel_fluid"], 10)
    paint(stomach & (y > 40), -850, 20)

    # Solid organs and vessels.
    paint(_ellipsoid(x, y, z, (88, 0, pz + 55), (62, 85, 75)) < 1, hu["liver"])
    paint(_ellipsoid(x, y, z, (-92, -42, pz + 35), (32, 48, 52)) < 1, hu["spleen"])
    for side in (-1, 1):
        kidney = _ellipsoid(x, y, z, (side * 62, -50, pz - 25), (26, 24, 52))
        paint(kidney < 1, hu["kidney"], 10)
        paint(kidney < 0.35, hu["kidney"] - 60, 10)
    paint(((x + 18) / 11) ** 2 + ((y + 42) / 11) ** 2 < 1, hu["aorta"], 4)
    paint(((x - 22) / 14) ** 2 + ((y + 36) / 10) ** 2 < 1, hu["ivc"], 4)
    vertebra = (x / 22) ** 2 + ((y + 72) / 19) ** 2 < 1
    disc = np.abs(((z - pz) % 32.0) - 16.0) > 13.5
    paint(vertebra, hu["marrow"], 25)
    paint(vertebra & ((x / 22) ** 2 + ((y + 72) / 19) ** 2 > 0.7), hu["bone"], 40)
    paint(vertebra & disc, hu["muscle"] + 30, 10)
    paint((x / 8) ** 2 + ((y + 100) / 8) ** 2 < 1, hu["csf"], 3)

    # Pancreas: lobulated tube around the centreline with interdigitating fat.
    label = np.zeros(shape, np.uint8)
    points, t = _centreline(case.pancreas_ctrl_mm)
    r_head, r_body, r_tail = case.pancreas_radius_mm
    radius_t = np.interp(t, [0.0, 0.18, 0.45, 1.0], [r_head, r_head * 0.8, r_body, r_tail])
    dist, nearest, box = _tube_distance((x, y, z), points, pad_mm=r_head * 1.6 + 20)
    lob = _smooth_noise(rng, dist.shape, sp, 4.0)
    radius = radius_t[nearest] * (1.0 + case.lobulation * 0.6 * lob)
    panc = dist < radius
    # Duodenum: a fluid-filled C-loop hugging the head (hypodense like a tumour: a real distractor).
    head = np.asarray(case.pancreas_ctrl_mm[0])
    duo_pts, _ = _centreline([tuple(head + d) for d in ([12, 18, 30], [r_head + 10, 0, 5], [8, -6, -28],
                                                        [-18, 4, -34])])  # fmt: skip
    duo_dist, _, duo_box = _tube_distance((x, y, z), duo_pts, pad_mm=12)
    img_duo = img[duo_box]
    img_duo[duo_dist < 9] = hu["bowel_wall"]
    img_duo[duo_dist < 6.5] = hu["duodenum"]
    # Splenic vein along the posterior surface of body and tail.
    sv_pts = points[t > 0.3] + np.array([0.0, -1.0, 0.0]) * (radius_t[t > 0.3, None] + 3.0)
    sv_dist, _, sv_box = _tube_distance((x, y, z), sv_pts, pad_mm=8)
    img[sv_box][sv_dist < 3.5] = hu["splenic_vein"]

    sub = img[box]
    fat_pockets = (_smooth_noise(rng, dist.shape, sp, 2.0) > 2.0 - 1.5 * case.lobulation) & panc
    sub[panc] = hu["pancreas"] + 8.0 * texture[box][panc]
    sub[fat_pockets] = hu["fat"] * 0.5
    label[box][panc] = 1

    # Tumours: irregular ellipsoids on the pancreas with soft, ambiguous edges and optional necrosis.
    for lesion in case.lesions:
        c = points[int(round(lesion.t * (len(points) - 1)))] + np.asarray(lesion.offset_mm)
        vox = np.linalg.solve(affine, np.append(c, 1.0))[:3]
        vox = np.clip(vox, 0, np.asarray(shape) - 1)  # keep the lesion centre inside the grid
        c = (affine @ np.append(vox, 1.0))[:3]
        rr = np.maximum(np.asarray(lesion.radii_mm), 0.6 * np.asarray(sp))
        q = np.sqrt(_ellipsoid(x, y, z, c, rr))
        near = np.broadcast_to(q < 2.0, shape)
        edge = _smooth_noise(rng, shape, sp, max(2.0, rr.min() / 2))[near]
        qn = q[near] / (1.0 + 0.25 * edge)
        inside = qn < 1.0
        weight = 1.0 / (1.0 + np.exp(np.clip((qn - 1.0) / 0.12, -50, 50)))  # soft edge
        # A solid mass that replaces the tissue it grows into, at the parenchyma's HU minus its contrast (necrotic
        # core darker): subtle against the pancreas, plain against fat. Darkening whatever lies underneath instead
        # put most of a large tumour below the HU window's floor (fat minus contrast), where no segmenter can see it.
        mass = (hu["pancreas"] - lesion.contrast_hu * (1.0 + lesion.necrosis * np.clip(1.0 - 2 * qn, 0, 1))
                + 8.0 * texture[near])
        img[near] = ((1.0 - weight) * img[near] + weight * mass).astype(np.float32)
        lab_near = label[near]
        lab_near[inside] = 2
        label[near] = lab_near
        if not (label == 2).any():  # smaller than a voxel: label the voxel at its centre
            label[tuple(np.round(vox).astype(int))] = 2

    # Acquisition: slice-profile/partial-volume blur, correlated noise, int16 HU.
    img = ndimage.gaussian_filter(img, [b / s for b, s in zip(case.blur_mm, sp, strict=True)], mode="nearest")
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.7)
    img += noise * (case.noise_hu / (noise.std() + 1e-6))
    image = np.clip(np.round(img), -1024, 3071).astype(np.int16)
    return image, label, affine


def make_pancreas_dataset(
    out: str | Path,
    num_cases: int = 12,
    size: tuple[int, int, int] = (96, 96, 48),
    seed: int = 0,
    num_test: int | None = None,
    field_of_view_mm: tuple[float, float, float] | None = None,
    roi_center: str = "body",
    progress: bool = True,
    tumour_radius_mm: tuple[float, float] = (3.0, 22.0),
    contrast_scale: float = 1.0,
    hidden_test_labels: str | None = None,
) -> Path:
    """Write an MSD Task07-style dataset of phantom cases and return its root.

    Layout: ``dataset.json``, ``imagesTr/pancreas_XXX.nii.gz``, ``labelsTr/pancreas_XXX.nii.gz``,
    ``imagesTs/pancreas_XXX.nii.gz`` (unlabelled, as in MSD) and ``phantom_meta.json`` with every case's
    parameters and tumour statistics. Case ``i`` depends only on ``(seed, i)``.

    Args:
        out: output folder (created).
        num_cases: number of labelled training cases (>= 1).
        size: voxel grid ``(X, Y, Z)``.
        seed: random seed.
        num_test: unlabelled test cases, default ``max(1, num_cases // 4)``.
        field_of_view_mm, roi_center, tumour_radius_mm, contrast_scale: see :func:`sample_case` (the defaults
            draw the parameters of earlier versions exactly).
        progress: show a progress bar.
        hidden_test_labels: also write the test cases' ground-truth labels into ``<out>/<hidden_test_labels>/``
            (e.g. ``"labelsTs_hidden"``), a folder that ``dataset.json`` does not reference, so that a study can
            score held-out cases while the pipeline never sees their labels. Default None: no test labels.
    """
    from tqdm.auto import tqdm

    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    num_test = max(1, num_cases // 4) if num_test is None else int(num_test)
    root = Path(out)
    if hidden_test_labels is not None:
        hidden = Path(hidden_test_labels)
        if hidden.is_absolute() or len(hidden.parts) != 1 or hidden.name in ("", ".", "..", "imagesTr", "labelsTr",
                                                                             "imagesTs"):  # fmt: skip
            raise ValueError(f"hidden_test_labels must be a new folder name inside out, got {hidden_test_labels!r}")
    root.mkdir(parents=True, exist_ok=True)
    training, test, meta = [], [], {}
    for i in tqdm(range(num_cases + num_test), desc="pancreas phantom", unit="case", disable=not progress):
        case = sample_case(np.random.default_rng([seed, i]), size, field_of_view_mm, roi_center,
                           tumour_radius_mm=tumour_radius_mm, contrast_scale=contrast_scale)  # fmt: skip
        image, label, affine = render_case(case)
        name = f"pancreas_{i + 1:03d}.nii.gz"
        if i < num_cases:
            write_nifti(root / "imagesTr" / name, image, affine)
            write_nifti(root / "labelsTr" / name, label, affine)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            write_nifti(root / "imagesTs" / name, image, affine)
            test.append(f"./imagesTs/{name}")
            if hidden_test_labels is not None:
                write_nifti(root / hidden_test_labels / name, label, affine)
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        meta[name.split(".")[0]] = {
            "params": asdict(case),
            "pancreas_ml": float((label == 1).sum() * voxel_ml),
            "tumour_ml": float((label == 2).sum() * voxel_ml),
            "tumour_voxels": int((label == 2).sum()),
        }
    dataset = {
        "name": "Pancreas",
        "description": "synthcp3d procedural phantom in the MSD Task07 layout (not patient data)",
        "reference": "synthcp3d",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "numTraining": num_cases,
        "numTest": num_test,
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=4))
    (root / "phantom_meta.json").write_text(json.dumps({"seed": seed, "size": list(size), "cases": meta}, indent=1))
    return root
