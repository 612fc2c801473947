"""Pixels of the synthetic benchmark: garments, patterns, backgrounds and photometry, rendered
with vectorised numpy over a batch of images (one pass per shape class and per pattern class).

Coordinates: u right, v down, garment space roughly [-1, 1]^2. Images depend only on their
instances and view parameters, never on the batch they are rendered in.
"""

from typing import Dict, Sequence

import numpy as np

from flam_tf.data.synthetic.catalogue import (
    COLORS,
    DARK_INKS,
    JITTER_INDEX,
    JITTER_SHADE_RGB,
    LIGHT_COLORS,
    LIGHT_INKS,
    PALETTE,
    PATTERNS,
    SHAPES,
    TOPS,
    TRAITS,
    VIEW_BACKGROUND_RGB,
    VIEW_CAST_RGB,
    VIEW_INDEX,
    VIEW_OCCLUDER_RGB,
    Instance,
)

# Fraction of the image side the garment frame [-1, 1] spans at view scale 1.
_FRAME_FILL = 0.92
# Clutter of a street background: rectangles per view, placed by hashing the view's noise seed
# with these multipliers into _CLUTTER_HASH_LEVELS levels per rectangle coordinate and colour.
_CLUTTER_RECTANGLES = 2
_CLUTTER_HASH_PRIMES = np.array([2654435761, 40503, 2246822519, 3266489917, 668265263, 374761393])
_CLUTTER_HASH_LEVELS = 1000
# Sensor noise of street photos: standard deviation, and the second seed word of its tile bank.
_SENSOR_NOISE_STD = 0.025
_NOISE_BANK_KEY = 20261127


def _inside(d, aa):
    """Soft inside-ness of a signed distance d (negative inside), anti-aliased over `aa`."""
    return np.clip(0.5 - d / aa, 0.0, 1.0)


def _box(u, v, u0, u1, v0, v1):
    """Signed distance (Chebyshev) to the axis-aligned box [u0, u1] x [v0, v1]."""
    return np.maximum(np.maximum(u0 - u, u - u1), np.maximum(v0 - v, v - v1))


def _capsule(u, v, su, sv, du, dv, length, half_width):
    """Distance to a rectangle from (su, sv) along unit direction (du, dv)."""
    t = (u - su) * du + (v - sv) * dv
    n = np.abs((u - su) * dv - (v - sv) * du)
    return np.maximum(np.maximum(-t, t - length), n - half_width)


def _garment(u, v, shape: str, tr: Dict[str, np.ndarray], jit: np.ndarray, aa):
    """Mask and shading of one shape class for a group of images.

    Args:
        u, v: garment coordinates, float [n, P, P].
        shape: the shape class name of the whole group.
        tr: trait name -> int array [n, 1, 1].
        jit: jitter, float [n, 1, 1, len(JITTER_FIELDS)].
        aa: anti-aliasing width in garment units, [n, 1, 1].

    Returns:
        (mask [n,P,P] in [0,1], shade [n,P,P] multiplicative, ink_override [n,P,P] in [0,1]
        where a detail such as a logo patch covers the pattern with a contrast colour).
    """
    fit = np.choose(tr["fit"], [0.86, 1.0, 1.16]) * jit[..., JITTER_INDEX["width"]]
    length = np.choose(tr["length"], [-0.12, 0.0, 0.14]) * jit[..., JITTER_INDEX["height"]]
    shade = np.ones_like(u)
    if shape in TOPS:
        top = -0.62
        long_sleeve = shape != "t-shirt"
        hem = {
            "t-shirt": 0.5,
            "shirt": 0.58,
            "sweater": 0.52,
            "hoodie": 0.55,
            "jacket": 0.45,
            "coat": 0.86,
        }[shape] + length * (0.6 if shape == "coat" else 1.0)
        ws = 0.40 * fit * (1.08 if shape in ("jacket", "coat") else 1.0)
        wb = ws * (1.12 if shape == "coat" else 0.98)
        frac = np.clip((v - top) / (hem - top), 0.0, 1.0)
        d = np.maximum(np.maximum(top - v, v - hem), np.abs(u) - (ws + (wb - ws) * frac))
        base_len = 0.85 if long_sleeve else 0.32
        sl = base_len * np.choose(tr["sleeve"], [0.8, 1.0, 1.12])
        hw = 0.12 * fit
        for side in (-1.0, 1.0):
            du, dv = side * np.sin(0.5), np.cos(0.5)
            d = np.minimum(d, _capsule(u, v, side * (ws - 0.06), top + 0.06, du, dv, sl, hw))
            if shape == "sweater":  # ribbed cuffs
                t = (u - side * (ws - 0.06)) * du + (v - top - 0.06) * dv
                shade *= 1 - 0.25 * ((t > sl - 0.09) & (t < sl))
        if shape == "hoodie":  # hood behind the neck
            d = np.minimum(d, np.sqrt((u / 0.24) ** 2 + ((v - top + 0.02) / 0.2) ** 2) - 1)
            shade *= 1 - 0.3 * (np.sqrt((u / 0.16) ** 2 + ((v - top + 0.04) / 0.13) ** 2) < 1)
        mask = _inside(d, aa)
        # Neckline cut: round, v or square.
        neck = np.choose(tr["neckline"], [0, 1, 2])
        cut_round = np.sqrt(u**2 + (v - top) ** 2) - 0.13
        cut_v = np.maximum(np.abs(u) * 1.6 + (v - top) - 0.26, top - 0.1 - v)
        cut_square = _box(u, v, -0.12, 0.12, top - 0.2, top + 0.1)
        cut = np.where(neck == 0, cut_round, np.where(neck == 1, cut_v, cut_square))
        if shape != "hoodie":
            mask = mask * (1 - _inside(cut, aa))
        if shape == "sweater":
            shade *= 1 - 0.25 * ((v > hem - 0.09) & (np.abs(u) < ws + 0.1))
        if shape == "shirt":  # collar and button placket
            collar = (np.abs(np.abs(u) - 0.1) < 0.07) & (v > top - 0.04) & (v < top + 0.12)
            shade = np.where(collar, 1.25, shade) * (1 - 0.3 * (np.abs(u) < 0.018))
        if shape in ("jacket", "coat"):  # open front, lapels, zip or second button row
            shade *= 1 - 0.55 * (np.abs(u) < 0.03)
            lapel = (np.abs(np.abs(u) - 0.12 + (v - top) * 0.3) < 0.03) & (v < top + 0.35)
            shade *= 1 - 0.3 * lapel
        if shape == "hoodie":  # kangaroo pocket outline
            pocket = _box(u, v, -0.22, 0.22, hem - 0.3, hem - 0.08)
            shade *= 1 - 0.3 * (np.abs(pocket) < 0.025)
        chest_v = top + 0.3
        waist_v = hem - 0.2
    elif shape == "dress":
        top, waist = -0.6, -0.12
        hem = 0.62 + length * 1.3
        ws, wwaist, whem = 0.27 * fit, 0.22 * fit, 0.58 * fit
        frac_top = np.clip((v - top) / (waist - top), 0, 1)
        frac_skirt = np.clip((v - waist) / (hem - waist), 0, 1)
        half = np.where(
            v < waist, ws + (wwaist - ws) * frac_top, wwaist + (whem - wwaist) * frac_skirt
        )
        d = np.maximum(np.maximum(top - v, v - hem), np.abs(u) - half)
        for side in (-1.0, 1.0):  # straps, cap sleeves or short sleeves
            sl = np.choose(tr["sleeve"], [0.22, 0.16, 0.3])
            hw = np.choose(tr["sleeve"], [0.03, 0.09, 0.1])
            ang = np.choose(tr["sleeve"], [0.0, 0.7, 0.6])
            su = side * (ws - 0.05)
            d = np.minimum(
                d,
                _capsule(
                    u,
                    v,
                    su,
                    top + np.choose(tr["sleeve"], [-0.2, 0.02, 0.02]),
                    side * np.sin(ang),
                    np.cos(ang),
                    sl,
                    hw,
                ),
            )
        mask = _inside(d, aa)
        neck = tr["neckline"]
        cut_v = np.maximum(np.abs(u) * 1.4 + (v - top) - 0.25, top - 0.1 - v)
        cut = np.where(
            neck == 0,
            np.sqrt(u**2 + (v - top) ** 2) - 0.12,
            np.where(neck == 1, cut_v, _box(u, v, -0.11, 0.11, top - 0.2, top + 0.08)),
        )
        mask = mask * (1 - _inside(cut, aa))
        shade *= 1 - 0.2 * (np.abs(v - waist) < 0.025)  # waist seam
        chest_v, waist_v = top + 0.25, waist + 0.25
    else:  # bottoms: skirt, trousers, shorts
        waist = -0.72 if shape != "skirt" else -0.6
        wwaist = 0.36 * fit
        if shape == "skirt":
            hem = 0.1 + length * 2.2 + 0.15
            whem = 0.56 * fit
            frac = np.clip((v - waist) / (hem - waist), 0, 1)
            d = np.maximum(
                np.maximum(waist - v, v - hem), np.abs(u) - (wwaist + (whem - wwaist) * frac)
            )
        else:
            hem = (0.9 + length * 0.4) if shape == "trousers" else (0.02 + length * 1.2)
            hip = -0.35
            d = _box(u, v, -wwaist, wwaist, waist, hip)
            leg_w = (0.17 if shape == "trousers" else 0.2) * fit
            for side in (-1.0, 1.0):
                spread = 0.08 if shape == "trousers" else 0.18
                du, dv = side * np.sin(spread), np.cos(spread)
                su = side * (wwaist - leg_w)
                d = np.minimum(d, _capsule(u, v, su, hip - 0.05, du, dv, hem - hip + 0.05, leg_w))
                # Cuffed hem (sleeve trait 1): a darker band at the end of the leg.
                t = (u - su) * du + (v - hip + 0.05) * dv
                across = np.abs((u - su) * dv - (v - hip + 0.05) * du)
                cuff = (tr["sleeve"] == 1) & (t > hem - hip - 0.04) & (across < leg_w)
                shade *= 1 - 0.3 * cuff
        mask = _inside(d, aa)
        if shape == "skirt":
            slit = (tr["sleeve"] == 2) & (np.abs(u - 0.15) < 0.02) & (v > hem - 0.25)
            mask = mask * (1 - slit)
        # Waistband: plain / belt / drawstring.
        band = (v > waist) & (v < waist + 0.09)
        shade *= 1 - np.where(tr["neckline"] == 1, 0.55, 0.15) * band
        buckle = (tr["neckline"] == 1) & (np.abs(u) < 0.05) & band
        shade = np.where(buckle, 1.6, shade)
        strings = (
            (tr["neckline"] == 2)
            & (np.abs(np.abs(u) - 0.05) < 0.015)
            & (v > waist)
            & (v < waist + 0.25)
        )
        shade *= 1 - 0.45 * strings
        chest_v, waist_v = waist + 0.22, waist + 0.3
    # Hidden detail: none / pockets / buttons / logo patch.
    detail = tr["detail"]
    pockets = np.minimum(
        np.abs(_box(u, v, 0.08, 0.26, waist_v - 0.1, waist_v + 0.08)),
        np.abs(_box(u, v, -0.26, -0.08, waist_v - 0.1, waist_v + 0.08)),
    )
    shade *= 1 - 0.35 * ((detail == 1) & (pockets < 0.02))
    buttons = (
        (np.abs(u - 0.05) < 0.035)
        & (np.abs(((v - chest_v) / 0.15) % 1.0 - 0.5) < 0.2)
        & (v > chest_v - 0.1)
        & (v < waist_v + 0.15)
    )
    shade = np.where((detail == 2) & buttons, 1.5, shade)
    patch = _box(u, v, 0.1, 0.26, chest_v - 0.06, chest_v + 0.08) < 0
    logo = ((detail == 3) & patch).astype(u.dtype)
    return mask, shade, logo


def _pattern(u, v, pattern: str, jit: np.ndarray, aa):
    """Ink coverage of one pattern class for a group of images, float [n, P, P] in [0, 1]."""
    scale = jit[..., JITTER_INDEX["pat_scale"]]
    angle = jit[..., JITTER_INDEX["pat_angle"]]
    pu, pv = jit[..., JITTER_INDEX["pat_phase_u"]], jit[..., JITTER_INDEX["pat_phase_v"]]

    def stripes(theta, period, width, phase):
        b = -u * np.sin(theta) + v * np.cos(theta)
        x = (b / period + phase) % 1.0
        # Distance to the stripe band, in garment units, then anti-aliased.
        dist = np.maximum(x - width, -x) * period
        dist = np.minimum(dist, (1.0 - x) * period)  # wrap-around neighbour
        return _inside(np.where(x < width, -np.minimum(x, width - x) * period, dist), aa)

    if pattern == "solid":
        return np.zeros_like(u)
    if pattern == "striped":
        return stripes(angle, 0.3 * scale, 0.42, pu)
    if pattern == "pinstriped":
        return stripes(np.pi / 2 + angle * 0.5, 0.2 * scale, 0.16, pu)
    if pattern == "checked":
        return np.clip(
            0.55 * stripes(angle, 0.32 * scale, 0.5, pu)
            + 0.55 * stripes(np.pi / 2 + angle, 0.32 * scale, 0.5, pv),
            0,
            1,
        )
    if pattern == "diagonal":
        return stripes(np.pi / 4 + angle, 0.3 * scale, 0.4, pu)
    if pattern == "dotted":
        period = 0.26 * scale
        a = (u / period + pu) % 1.0 - 0.5
        b = (v / period + pv + 0.5 * (np.floor(u / period + pu) % 2)) % 1.0 - 0.5
        return _inside(np.sqrt(a**2 + b**2) * period - 0.075 * scale, aa)
    if pattern == "zigzag":
        px = 0.3 * scale
        tri = np.abs((u / px + pu) % 1.0 - 0.5) * 2.0  # triangle wave in [0, 1]
        period = 0.3 * scale
        x = ((v + tri * 0.16 * scale) / period + pv) % 1.0
        return _inside((np.abs(x - 0.2) - 0.16) * period, aa)
    if pattern == "floral":
        period = 0.38 * scale
        cu, cv = u / period + pu, v / period + pv
        cu = cu + 0.5 * (np.floor(cv) % 2)
        a, b = (cu % 1.0 - 0.5) * period, (cv % 1.0 - 0.5) * period
        r = np.sqrt(a**2 + b**2)
        theta = np.arctan2(b, a) + angle * 3
        petals = 0.13 * scale * (0.55 + 0.45 * np.abs(np.cos(2.5 * theta)))
        flower = _inside(r - petals, aa)
        centre = _inside(r - 0.035 * scale, aa)
        return np.clip(flower - 0.7 * centre, 0, 1)
    if pattern == "camouflage":
        field = np.zeros_like(u)
        seed = jit[..., JITTER_INDEX["camo_seed"]]
        for k in range(6):  # plane waves in spread directions sum to irregular blotches
            ang = (seed * 0.618 * (k + 1)) % 0.5 + k * np.pi / 6
            freq = (11.0 + 1.6 * k) / scale  # blotches ~0.2 garment units across
            phase = (seed * 0.37 * (k + 3)) % (2 * np.pi)
            field = field + np.sin(freq * (u * np.cos(ang) + v * np.sin(ang)) + phase)
        # Three tones: base, ink, half ink.
        # About 30% ink and 20% half ink: the garment colour stays the dominant one.
        return np.clip((field - 0.8) * 3, 0, 1) + 0.5 * np.clip((-field - 1.4) * 3, 0, 1)
    if pattern == "colorblock":
        ang = jit[..., JITTER_INDEX["block_angle"]] + np.pi / 2
        off = jit[..., JITTER_INDEX["block_offset"]]
        return _inside(-(u * np.cos(ang) + v * np.sin(ang) - off - 0.25), aa)
    raise ValueError(f"Unknown pattern. Received: pattern={pattern!r}")


def render(instances: Sequence[Instance], views: np.ndarray, image_size: int) -> np.ndarray:
    """Renders one image per (instance, view parameters) pair.

    Args:
        instances: n instances.
        views: float [n, len(VIEW_FIELDS)] from `view_params`.
        image_size: P.

    Returns:
        uint8 [n, P, P, 3].
    """
    n, size = len(instances), image_size
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    f = np.float32
    grid = (np.arange(size, dtype=f) + 0.5) / size * 2.0 - 1.0
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    vp = views[:, None, None, :].astype(f)
    jit = np.stack([i.jitter for i in instances]).astype(f)[:, None, None, :]
    scale, rot = vp[..., VIEW_INDEX["scale"]], vp[..., VIEW_INDEX["rotation"]]
    x = gx[None] - vp[..., VIEW_INDEX["shift_u"]]
    y = gy[None] - vp[..., VIEW_INDEX["shift_v"]]
    x = np.where(vp[..., VIEW_INDEX["mirror"]] > 0.5, -x, x)
    u = (np.cos(rot) * x + np.sin(rot) * y) / (_FRAME_FILL * scale)
    v = (-np.sin(rot) * x + np.cos(rot) * y) / (_FRAME_FILL * scale)
    aa = (2.0 / size) / (_FRAME_FILL * scale)
    shapes = np.array([i.shape for i in instances])
    patterns = np.array([i.pattern for i in instances])
    traits = {t: np.array([i.traits[t] for i in instances])[:, None, None] for t in TRAITS}
    mask = np.zeros((n, size, size), f)
    shade = np.ones((n, size, size), f)
    logo = np.zeros((n, size, size), f)
    for s in np.unique(shapes):
        idx = np.nonzero(shapes == s)[0]
        m, sh, lg = _garment(
            u[idx], v[idx], SHAPES[s], {t: a[idx] for t, a in traits.items()}, jit[idx], aa[idx]
        )
        mask[idx], shade[idx], logo[idx] = m, sh, lg
    ink = np.zeros((n, size, size), f)
    for p in np.unique(patterns):
        idx = np.nonzero(patterns == p)[0]
        ink[idx] = _pattern(u[idx], v[idx], PATTERNS[p], jit[idx], aa[idx])
    # Colours: base shade with jitter; the ink contrasts with the base.
    colors = np.array([i.color for i in instances])
    brightness = jit[:, 0, 0, JITTER_INDEX["brightness"], None]
    base = PALETTE[colors] * (1.0 + jit[:, 0, 0, JITTER_SHADE_RGB])
    base = np.clip(base * (1.0 + brightness), 0.0, 1.0)
    light = np.array([COLORS[c] in LIGHT_COLORS for c in colors])
    ink_choice = jit[:, 0, 0, JITTER_INDEX["ink"]].astype(int)
    second = np.where(light[:, None], DARK_INKS[ink_choice], LIGHT_INKS[ink_choice])
    block = patterns == PATTERNS.index("colorblock")  # colour block: another palette colour
    second[block] = PALETTE[(colors[block] + 3 + ink_choice[block]) % len(PALETTE)]
    base4, second4 = base[:, None, None, :], second[:, None, None, :]
    garment = base4 + (second4 - base4) * ink[..., None]
    with_logo = np.nonzero(logo.reshape(n, -1).any(axis=1))[0]  # only those images pay for it
    if len(with_logo):
        patch = second4[with_logo] * 0.6 + 0.4 * (1 - second4[with_logo])
        garment[with_logo] = np.where(logo[with_logo, ..., None] > 0, patch, garment[with_logo])
    fold_freq = jit[..., JITTER_INDEX["fold_freq"]]
    fold_phase = jit[..., JITTER_INDEX["fold_phase"]]
    folds = 1.0 + 0.06 * np.sin(fold_freq * u + fold_phase)
    edge = 1.0 - 0.5 * (4.0 * mask * (1.0 - mask))  # darker silhouette edge
    garment *= (shade * folds * edge)[..., None]
    # Background: flat for shop views, textured with clutter for street views.
    bg = np.broadcast_to(vp[..., VIEW_BACKGROUND_RGB], (n, size, size, 3)).copy()
    street = vp[:, 0, 0, VIEW_INDEX["street"]] > 0.5
    if street.any():
        sv = vp[street]
        ang = sv[..., VIEW_INDEX["tex_angle"]]
        freq = sv[..., VIEW_INDEX["tex_freq"]]
        ph = sv[..., VIEW_INDEX["tex_phase"]]
        wave = np.sin(freq * (gx * np.cos(ang) + gy * np.sin(ang)) * np.pi + ph)
        wave2 = np.sin(2.3 * freq * (gx * np.sin(ang) - gy * np.cos(ang)) + 2 * ph)
        tex = (1.0 + 0.18 * wave + 0.1 * np.sign(wave2)) * (0.85 + 0.15 * (gy[None] + 1))
        sbg = bg[street] * tex[..., None]
        # Clutter: flat rectangles per view (shelves, people, signs), from a hash of its seed.
        seeds = sv[:, 0, 0, VIEW_INDEX["noise_seed"]].astype(np.int64)
        for k in range(_CLUTTER_RECTANGLES):
            hashed = (seeds[:, None] * (k + 3) * _CLUTTER_HASH_PRIMES) % _CLUTTER_HASH_LEVELS
            r = (hashed / _CLUTTER_HASH_LEVELS).astype(f)[:, None, None, :]
            rect = (np.abs(gx[None] - (r[..., 0] * 2 - 1)) < 0.15 + 0.3 * r[..., 2]) & (
                np.abs(gy[None] - (r[..., 1] * 2 - 1)) < 0.15 + 0.3 * r[..., 3]
            )
            col = np.concatenate([r[..., 4:6], 1 - r[..., 4:5]], -1)
            sbg = np.where(rect[..., None], col, sbg)
        bg[street] = sbg
    img = bg + (garment - bg) * mask[..., None]
    # Occlusion (street): a flat object in front of part of the garment.
    occ = np.nonzero(vp[:, 0, 0, VIEW_INDEX["occlude"]] > 0.5)[0]
    if len(occ):
        ov = vp[occ]
        half_w, half_h = ov[..., VIEW_INDEX["occ_w"]] / 2, ov[..., VIEW_INDEX["occ_h"]] / 2
        orect = (np.abs(gx[None] - ov[..., VIEW_INDEX["occ_u"]]) < half_w) & (
            np.abs(gy[None] - ov[..., VIEW_INDEX["occ_v"]]) < half_h
        )
        img[occ] = np.where(orect[..., None], ov[..., VIEW_OCCLUDER_RGB], img[occ])
    # Lighting and colour cast, then sensor noise on street photos.
    img *= vp[..., VIEW_INDEX["gain"], None]
    img += vp[..., VIEW_CAST_RGB]
    if street.any():
        bank = _noise_bank(size)
        tile = vp[street][:, 0, 0, VIEW_INDEX["noise_seed"]].astype(np.int64) % len(bank)
        img[street] += bank[tile]
    np.clip(img, 0.0, 1.0, out=img)
    return (img * 255.0 + 0.5).astype(np.uint8)


_NOISE_BANKS: Dict[int, np.ndarray] = {}


def _noise_bank(size: int, tiles: int = 64) -> np.ndarray:
    """Sensor-noise tiles, float32 [tiles, size, size, 3], fixed for a size (deterministic).

    A street view adds the tile its noise seed picks, rather than fresh noise: images stay
    byte-identical for a seed, and the noise within an image is i.i.d. per pixel.
    """
    if size not in _NOISE_BANKS:
        rng = np.random.default_rng([size, _NOISE_BANK_KEY])
        _NOISE_BANKS[size] = rng.normal(0.0, _SENSOR_NOISE_STD, (tiles, size, size, 3)).astype(
            np.float32
        )
    return _NOISE_BANKS[size]
