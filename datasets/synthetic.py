"""The embedded default dataset: small, RS-like scene images generated deterministically.

Eight land-cover classes drawn as 64 px aerial textures, with nuisance variation (orientation,
scale, colour, haze, noise) and confusable pairs (forest / meadow, lake / river, residential /
road), so that a kNN classifier on an untrained embedding is far from perfect. The files go through
the same folder loader as real data. No licence restrictions: the images are generated here.
"""
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("agriculture", "bare_soil", "forest", "lake", "meadow", "residential", "river", "road")
VERSION = "synthetic-v1"


def _grid(size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return y, x


def _smooth_noise(rng, size, cells):
    """Bilinearly upsampled uniform noise: low-frequency texture in [0, 1]."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    pos = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(pos.astype(int), cells - 1)
    t = pos - i
    rows = coarse[i] * (1 - t)[:, None] + coarse[i + 1] * t[:, None]
    return rows[:, i] * (1 - t) + rows[:, i + 1] * t


def _colour(rng, base, spread=0.08):
    return np.clip(np.asarray(base, np.float32) + rng.normal(0, spread, 3), 0, 1)


def _paint(canvas, mask, colour):
    canvas[mask] = colour


def _agriculture(rng, s):
    y, x = _grid(s)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 9)
    stripes = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle))) > rng.uniform(-0.3, 0.3)
    img = np.where(stripes[..., None], _colour(rng, (0.45, 0.6, 0.25)), _colour(rng, (0.7, 0.6, 0.35)))
    return img * (0.85 + 0.3 * _smooth_noise(rng, s, 4)[..., None])


def _bare_soil(rng, s):
    tex = 0.6 * _smooth_noise(rng, s, 6) + 0.4 * _smooth_noise(rng, s, 20)
    return _colour(rng, (0.65, 0.5, 0.35)) * (0.7 + 0.5 * tex[..., None])


def _blobs(rng, s, count, radius, colour, canvas):
    y, x = _grid(s)
    for cy, cx, r in zip(rng.random(count), rng.random(count), rng.uniform(*radius, count)):
        d2 = (y - cy) ** 2 + (x - cx) ** 2
        shade = np.clip(1 - d2 / r**2, 0, 1)[..., None]
        canvas[:] = np.where(shade > 0, colour * (0.6 + 0.5 * shade), canvas)
    return canvas


def _forest(rng, s):
    canvas = np.broadcast_to(_colour(rng, (0.1, 0.25, 0.1)), (s, s, 3)).copy()
    return _blobs(rng, s, rng.integers(40, 90), (0.04, 0.09), _colour(rng, (0.2, 0.45, 0.18)), canvas)


def _meadow(rng, s):
    img = _colour(rng, (0.4, 0.55, 0.25)) * (0.75 + 0.5 * _smooth_noise(rng, s, 5)[..., None])
    return _blobs(rng, s, rng.integers(0, 8), (0.03, 0.07), _colour(rng, (0.2, 0.4, 0.15)), img)


def _water(rng, s, colour):
    y, x = _grid(s)
    ripple = 0.04 * np.sin(2 * np.pi * rng.uniform(8, 16) * (x + 0.3 * y) + rng.uniform(0, 6))
    return colour * (0.85 + 0.25 * _smooth_noise(rng, s, 3)[..., None]) + ripple[..., None]


def _lake(rng, s):
    y, x = _grid(s)
    img = _meadow(rng, s)
    cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.3, 0.55)]
    wobble = 0.06 * _smooth_noise(rng, s, 4)
    inside = (y - cy) ** 2 + (x - cx) ** 2 < (r + wobble) ** 2
    return np.where(inside[..., None], _water(rng, s, _colour(rng, (0.1, 0.25, 0.4))), img)


def _river(rng, s):
    y, x = _grid(s)
    img = _meadow(rng, s) if rng.random() < 0.5 else _agriculture(rng, s)
    centre = 0.5 + 0.2 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * y + rng.uniform(0, 1)))
    band = np.abs(x - centre) < rng.uniform(0.06, 0.14)
    img = np.where(band[..., None], _water(rng, s, _colour(rng, (0.12, 0.28, 0.4))), img)
    return np.transpose(img, (1, 0, 2)) if rng.random() < 0.5 else img


def _residential(rng, s):
    y, x = _grid(s)
    period, angle = rng.uniform(0.12, 0.22), rng.uniform(0, np.pi / 2)
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    fu, fv = (u / period) % 1, (v / period) % 1
    roofs = (fu > 0.25) & (fu < 0.85) & (fv > 0.25) & (fv < 0.85)
    img = _meadow(rng, s) * 0.9
    street = (fu < 0.12) | (fv < 0.12)
    img = np.where(street[..., None], _colour(rng, (0.45, 0.45, 0.45), 0.05), img)
    roof_colour = _colour(rng, (0.65, 0.35, 0.3), 0.15)
    return np.where(roofs[..., None], roof_colour * (0.8 + 0.4 * _smooth_noise(rng, s, 12)[..., None]), img)


def _road(rng, s):
    y, x = _grid(s)
    img = _bare_soil(rng, s) if rng.random() < 0.5 else _meadow(rng, s)
    for _ in range(rng.integers(1, 3)):
        angle, offset, width = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3), rng.uniform(0.04, 0.08)
        d = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle) - offset
        img = np.where((np.abs(d) < width)[..., None], _colour(rng, (0.35, 0.35, 0.37), 0.04), img)
        img = np.where((np.abs(d) < 0.008)[..., None], np.float32(0.9), img)
    return img


DRAW = {
    "agriculture": _agriculture, "bare_soil": _bare_soil, "forest": _forest, "lake": _lake,
    "meadow": _meadow, "residential": _residential, "river": _river, "road": _road,
}


def render(name, rng, size):
    """One image of class ``name`` as uint8 (size, size, 3), with haze, noise and a random flip/rotation."""
    img = DRAW[name](rng, size).astype(np.float32)
    haze = rng.uniform(0, 0.35)
    img = (1 - haze) * img + haze * _colour(rng, (0.6, 0.6, 0.62), 0.05)
    img = img * rng.uniform(0.7, 1.2) + rng.normal(0, 0.05, img.shape)
    img = np.rot90(img, rng.integers(4))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_synthetic(root, per_class=100, size=64, seed=0):
    """Generate the dataset under ``root`` once; later calls find it and return at once.

    ``root/<class>/<class>_<k>.png``. Written to a temporary folder and renamed, so an interrupted
    generation never leaves a half dataset behind.
    """
    stamp = f"{VERSION} per_class={per_class} size={size} seed={seed}"
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker) and Path(marker).read_text() == stamp:
        return root
    tmp = root.rstrip(os.sep) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(tmp, name))
        for k in range(per_class):
            rng = np.random.default_rng([seed, label, k])
            Image.fromarray(render(name, rng, size)).save(os.path.join(tmp, name, f"{name}_{k:03d}.png"))
    with open(os.path.join(tmp, ".complete"), "w") as f:
        f.write(stamp)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root
