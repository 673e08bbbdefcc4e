"""Slide geometry of the simulated cohort: where each planted niche lies and where cells sit.

A slide is a rectangular field of view with a wavy tissue edge. Its niches are regions
drawn on a 4 µm raster and read off at every cell (see :mod:`cellniche_core.simulate` for
what each niche looks like); cells sit on a jittered, randomly rotated hexagonal lattice
thinned at random, denser in TLS and tumour, sparser in necrosis. Coordinates are in µm.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["DEMO_NICHES", "simulate_slide"]

DEMO_NICHES = (
    "tumour_core",
    "immune_margin",
    "stroma",
    "vascular",
    "tls",
    "necrotic",
)
CORE, MARGIN, STROMA, VASCULAR, TLS, NECROTIC = range(len(DEMO_NICHES))

# Relative cell density per niche (keep weight of a lattice site).
_DENSITY = np.array([1.15, 1.05, 0.85, 0.9, 1.4, 0.6])

_PIXEL_UM = 4.0  # raster resolution of the region maps
_AREA_PER_CELL_UM2 = 180.0  # ~5,500 cells / mm², 10-13 µm between neighbours
_LATTICE_KEEP = 0.8  # fraction of lattice sites that become cells
_FULL_SIZE_CELLS = 2500  # slides this large get full-size structures


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Canvas:
    """Raster of one slide: tissue mask, pixel-centre coordinates (µm) and the length
    scale of its structures (1 for full-size slides, < 1 for small ones)."""

    tissue: np.ndarray  # (rows, cols) bool
    x: np.ndarray  # (rows, cols) µm
    y: np.ndarray  # (rows, cols) µm
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.tissue.shape

    @property
    def width(self) -> float:
        return self.shape[1] * _PIXEL_UM

    @property
    def height(self) -> float:
        return self.shape[0] * _PIXEL_UM

    @property
    def area(self) -> int:
        """Tissue area in pixels."""
        return int(self.tissue.sum())

    def noise(self, rng: np.random.Generator, sigma_um: float) -> np.ndarray:
        """Gaussian random field, zero mean and unit variance, correlation ~sigma_um."""
        field = ndimage.gaussian_filter(rng.standard_normal(self.shape),
                                        self.scale * sigma_um / _PIXEL_UM)
        return (field - field.mean()) / (field.std() + 1e-12)

    def drop_small(self, mask: np.ndarray, min_side_um: float) -> np.ndarray:
        """Mask without its connected pieces smaller than a min_side_um square."""
        labels, n = ndimage.label(mask)
        if n == 0:
            return mask
        area = np.bincount(labels.ravel())[1:] * _PIXEL_UM**2
        keep = np.concatenate([[False], area >= (self.scale * min_side_um) ** 2])
        return keep[labels]

    def disc(self, radius_um: float) -> np.ndarray:
        r = max(1, int(round(self.scale * radius_um / _PIXEL_UM)))
        rows, cols = np.indices((2 * r + 1, 2 * r + 1)) - r
        return rows**2 + cols**2 <= r**2

    def pixel_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        row = np.clip((xy[:, 1] / _PIXEL_UM).astype(int), 0, self.shape[0] - 1)
        col = np.clip((xy[:, 0] / _PIXEL_UM).astype(int), 0, self.shape[1] - 1)
        return row, col


def simulate_slide(rng: np.random.Generator, n_cells: int, *, with_tls: bool,
                   with_necrosis: bool) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (n_cells, 2) in µm and niche codes (n_cells,) of one slide."""
    # Full-size structures need a full-size slide; smaller slides shrink them so that
    # every niche still fits (recovery benchmarks should use full-size slides).
    scale = min(1.0, np.sqrt(n_cells / _FULL_SIZE_CELLS))
    aspect = rng.uniform(0.8, 1.25)
    area = n_cells * _AREA_PER_CELL_UM2 / 0.83  # the wavy edge leaves ~17 % bare
    for _ in range(8):
        width, height = np.sqrt(area * aspect), np.sqrt(area / aspect)
        shape = (int(np.ceil(height / _PIXEL_UM)), int(np.ceil(width / _PIXEL_UM)))
        rows, cols = np.indices(shape)
        canvas = _Canvas(np.ones(shape, bool), (cols + 0.5) * _PIXEL_UM,
                         (rows + 0.5) * _PIXEL_UM, scale)
        canvas = replace(canvas, tissue=_tissue_mask(rng, canvas))
        sites = _lattice_sites(rng, width, height)
        on_tissue = canvas.tissue[canvas.pixel_of(sites)]
        if on_tissue.sum() * _LATTICE_KEEP >= n_cells:
            break
        area *= 1.1
    sites = sites[on_tissue]
    niche = _niche_map(rng, canvas, with_tls=with_tls,
                       with_necrosis=with_necrosis)[canvas.pixel_of(sites)]

    # Weighted sampling without replacement (exponential keys): denser tumour and
    # TLS, sparser necrosis, exactly n_cells cells.
    keys = rng.exponential(size=len(sites)) / _DENSITY[niche]
    keep = np.sort(np.argpartition(keys, n_cells - 1)[:n_cells])
    return sites[keep], niche[keep]


def _lattice_sites(rng: np.random.Generator, width: float, height: float) -> np.ndarray:
    """Jittered, randomly rotated hexagonal lattice covering the box."""
    spacing = np.sqrt(_AREA_PER_CELL_UM2 * _LATTICE_KEEP / (np.sqrt(3) / 2))
    half = 0.5 * np.hypot(width, height) + spacing
    rows = np.arange(-half, half, spacing * np.sqrt(3) / 2)
    gx, gy = np.meshgrid(np.arange(-half, half, spacing), rows)
    gx = gx + 0.5 * spacing * (np.arange(len(rows)) % 2)[:, None]
    theta = rng.uniform(0, np.pi / 3)
    c, s = np.cos(theta), np.sin(theta)
    x = c * gx.ravel() - s * gy.ravel() + width / 2
    y = s * gx.ravel() + c * gy.ravel() + height / 2
    # Bounded jitter keeps nuclei >= 0.4 lattice spacings apart, as real nuclei are.
    r = 0.3 * spacing * np.sqrt(rng.uniform(size=x.size))
    a = rng.uniform(0, 2 * np.pi, size=x.size)
    xy = np.column_stack([x + r * np.cos(a), y + r * np.sin(a)])
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    return xy[inside]


def _tissue_mask(rng: np.random.Generator, canvas: _Canvas) -> np.ndarray:
    """Tissue inside the field of view, with a wavy 8-50 µm edge of bare slide."""
    rows, cols = np.indices(canvas.shape)
    to_edge = _PIXEL_UM * np.minimum.reduce(
        [rows, cols, canvas.shape[0] - 1 - rows, canvas.shape[1] - 1 - cols]
    )
    wave = np.clip(0.5 + 0.35 * canvas.noise(rng, 60.0), 0, 1)
    return to_edge >= canvas.scale * (8.0 + 42.0 * wave)


def _niche_map(rng: np.random.Generator, canvas: _Canvas, *, with_tls: bool,
               with_necrosis: bool) -> np.ndarray:
    """Niche code of every raster pixel (-1 off tissue)."""
    # A mass whose shape leaves little room for necrosis is redrawn (a few tries, the
    # largest necrosis wins), so the patient-specific niche is never marginal.
    best = None
    for _ in range(6):
        regions, width_mod = _tumour_map(rng, canvas, with_necrosis=with_necrosis)
        necrotic_area = (regions == NECROTIC).sum()
        if best is None or necrotic_area > best[2]:
            best = regions, width_mod, necrotic_area
        if not with_necrosis or necrotic_area >= 0.11 * canvas.area:
            break
    regions, width_mod, _ = best
    if with_tls:
        _add_tls(rng, canvas, regions)
    _add_vascular_tract(rng, canvas, regions, width_mod)
    return regions


def _tumour_map(rng: np.random.Generator, canvas: _Canvas, *,
                with_necrosis: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tumour core, margin and necrosis on stroma; also the margin-width modulation."""
    tissue, L = canvas.tissue, canvas.scale
    side = min(canvas.width, canvas.height)

    # Tumour: one or two perturbed elliptical masses with an uneven invasive edge.
    # The necrotic patient gets one large mass so the necrosis has room.
    n_masses = 1 if with_necrosis else int(rng.integers(1, 3))
    field = np.zeros(canvas.shape)
    for _ in range(n_masses):
        cx, cy = rng.uniform(0.3, 0.7) * canvas.width, rng.uniform(0.3, 0.7) * canvas.height
        sx, sy = rng.uniform(0.18, 0.3, size=2) * side
        phi = rng.uniform(0, np.pi)
        dx, dy = canvas.x - cx, canvas.y - cy
        u = (np.cos(phi) * dx + np.sin(phi) * dy) / sx
        v = (-np.sin(phi) * dx + np.cos(phi) * dy) / sy
        field = np.maximum(field, np.exp(-0.5 * (u**2 + v**2)))
    field += 0.22 * canvas.noise(rng, 90.0) + 0.03 * canvas.noise(rng, 30.0)
    target = rng.uniform(0.48, 0.55) if with_necrosis else rng.uniform(0.28, 0.4)
    tumour = tissue & (field > np.quantile(field[tissue], 1 - target))
    tumour = canvas.drop_small(tumour, 150.0)
    holes = ndimage.binary_fill_holes(tumour) & ~tumour
    tumour |= holes & ~canvas.drop_small(holes, 120.0)

    # Invasive margin: a band of ~80 µm across the tumour boundary, of varying width.
    d_out = ndimage.distance_transform_edt(~tumour) * _PIXEL_UM
    d_in = ndimage.distance_transform_edt(tumour | ~tissue) * _PIXEL_UM
    width_mod = L * np.clip(1 + 0.15 * canvas.noise(rng, 80.0), 0.8, 1.2)
    w_in, w_out = rng.uniform(27, 31), rng.uniform(49, 54)
    margin = tissue & ((~tumour & (d_out <= w_out * width_mod))
                       | (tumour & (d_in <= w_in * width_mod)))
    regions = np.full(canvas.shape, -1, dtype=np.int64)
    regions[tissue] = STROMA
    regions[tumour] = CORE
    regions[margin] = MARGIN

    if with_necrosis:
        # Necrotic centre of the mass: >= 60 µm of viable tumour core between it and the
        # margin (or the tissue edge); opened so that it has no thin fingers.
        depth = ndimage.distance_transform_edt(tumour) * _PIXEL_UM
        eligible = (regions == CORE) & (depth >= w_in * width_mod + 60.0 * L)
        if eligible.any():
            score = ndimage.gaussian_filter(depth, L * 30.0 / _PIXEL_UM) \
                + 15.0 * L * canvas.noise(rng, 50.0)
            frac = min(1.0, rng.uniform(0.16, 0.19) * canvas.area / eligible.sum())
            necrosis = eligible & (score >= np.quantile(score[eligible], 1 - frac))
            necrosis = ndimage.binary_opening(necrosis, canvas.disc(35.0))
            regions[canvas.drop_small(necrosis, 100.0)] = NECROTIC
    return regions, width_mod


def _add_tls(rng: np.random.Generator, canvas: _Canvas, regions: np.ndarray) -> None:
    """Paint 2-6 round lymphoid aggregates (radius 75-115 µm) into the stroma."""
    L = canvas.scale
    want = rng.uniform(0.06, 0.09) * canvas.area
    for n_done in range(6):
        if n_done >= 2 and (regions == TLS).sum() >= want:
            break
        free = regions == STROMA
        # Room for a TLS centred at each pixel, kept >= 40 µm from earlier ones.
        blocked = ~free | ndimage.binary_dilation(regions == TLS, canvas.disc(40.0))
        room = (ndimage.distance_transform_edt(~blocked) * _PIXEL_UM) - 10.0 * L
        radius = min(L * rng.uniform(75, 115), room.max())
        if radius < 50.0 * L:
            break
        pick = rng.choice(np.flatnonzero(room >= radius))
        dx, dy = canvas.x - canvas.x.flat[pick], canvas.y - canvas.y.flat[pick]
        angle = np.arctan2(dy, dx)
        a1, a2 = rng.uniform(0, 2 * np.pi, size=2)
        edge = radius * (1 + 0.12 * np.sin(2 * angle + a1) + 0.07 * np.sin(3 * angle + a2))
        regions[free & (np.hypot(dx, dy) <= edge)] = TLS


def _add_vascular_tract(rng: np.random.Generator, canvas: _Canvas, regions: np.ndarray,
                        width_mod: np.ndarray) -> None:
    """Paint a curved vessel-rich band (110-140 µm wide) through the stroma.

    Of a few candidate curves, the one whose stromal part comes closest to the wanted
    size wins; a second tract is added when the stroma is too broken up for one.
    """
    want = rng.uniform(0.07, 0.1) * canvas.area
    for _ in range(2):
        stroma = regions == STROMA
        pixels = np.column_stack([canvas.x[stroma], canvas.y[stroma]])
        missing = want - (regions == VASCULAR).sum()
        best, best_err = None, np.inf
        for _ in range(8):
            dist, _ = cKDTree(_random_curve(rng, canvas.width, canvas.height)).query(pixels)
            band = np.zeros(canvas.shape, dtype=bool)
            band[stroma] = dist <= rng.uniform(55, 70) * width_mod[stroma]
            band = canvas.drop_small(band, 90.0)
            err = abs(band.sum() - missing)
            if err < best_err:
                best, best_err = band, err
        regions[best] = VASCULAR
        if (regions == VASCULAR).sum() >= 0.6 * want:
            break


def _random_curve(rng: np.random.Generator, width: float, height: float) -> np.ndarray:
    """(300, 2) points of a quadratic Bezier joining two different edges of the box."""
    def edge_point(edge: int) -> np.ndarray:
        t = rng.uniform(0.1, 0.9)
        return np.array([(t * width, 0.0), (t * width, height), (0.0, t * height),
                         (width, t * height)][edge])

    start_edge, end_edge = rng.choice(4, size=2, replace=False)
    p0, p2 = edge_point(start_edge), edge_point(end_edge)
    p1 = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
    t = np.linspace(0, 1, 300)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
