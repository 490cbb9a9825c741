"""Training augmentation: one random similarity transform per sample (rotation,
scale, translation, horizontal flip), colour jitter and occluding rectangles.

The geometric part is a 2x3 matrix in crop pixels, composed with the crop
matrix (see crops.py) so the image is warped once from the original and the
landmarks are moved by exactly the same matrix. A flip also re-orders the
landmarks with the scheme's mirror permutation, so point 36 stays "the right
eye's outer corner" of the flipped face.

Everything random comes from the ``numpy.random.Generator`` passed in, so a
seeded generator gives identical output.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pyflm.data.crops import compose_affine, similarity_matrix, transform_points, warp_image
from pyflm.data.schemes import get_scheme

__all__ = [
    "AugmentConfig",
    "PAPER1",
    "PAPER2",
    "AugmentParams",
    "AugmentResult",
    "sample_params",
    "augmentation_matrix",
    "augment_geometry",
    "color_jitter",
    "occlude",
    "augment",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (all uniform).

    rotation_deg: angle in [-r, r] degrees. scale_range: zoom factor of the
    face in the crop (< 1 shrinks it, showing more context). translation:
    shift in [-t, t] x output size, per axis. flip_prob: probability of a
    horizontal flip. brightness / contrast / saturation: factors in
    [1 - v, 1 + v] (0 disables). occlusion_prob: probability of adding
    occluders, then 1..occlusion_max rectangles whose sides are
    occlusion_size fractions of the output size, filled with a random colour.
    """

    rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.6, 1.0)
    translation: float = 0.0
    flip_prob: float = 0.5
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    occlusion_prob: float = 0.0
    occlusion_max: int = 1
    occlusion_size: tuple[float, float] = (0.1, 0.4)

    def __post_init__(self):
        lo, hi = self.scale_range
        if not (0 < lo <= hi):
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if not 0 <= self.flip_prob <= 1 or not 0 <= self.occlusion_prob <= 1:
            raise ValueError("probabilities must be in [0, 1]")
        for name in ("rotation_deg", "translation", "brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.brightness >= 1 or self.contrast >= 1 or self.saturation > 1:
            raise ValueError("brightness and contrast must be < 1, saturation <= 1")
        a, b = self.occlusion_size
        if not (0 < a <= b <= 1) or self.occlusion_max < 1:
            raise ValueError("occlusion_size must satisfy 0 < lo <= hi <= 1 and occlusion_max >= 1")

    def replace(self, **kw) -> "AugmentConfig":
        return replace(self, **kw)


# Paper 1: +-30 degrees, scale 0.6-1.0; paper 2: +-50 degrees, scale 0.8-1.2.
PAPER1 = AugmentConfig(rotation_deg=30.0, scale_range=(0.6, 1.0), translation=0.05, flip_prob=0.5,
                       brightness=0.2, contrast=0.2, saturation=0.2)
PAPER2 = AugmentConfig(rotation_deg=50.0, scale_range=(0.8, 1.2), translation=0.05, flip_prob=0.5,
                       brightness=0.2, contrast=0.2, saturation=0.2, occlusion_prob=0.3, occlusion_max=2)


@dataclass
class AugmentParams:
    angle_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # crop pixels
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    occluders: list = field(default_factory=list)  # [(x0, y0, x1, y1, colour)], crop px, half-open


@dataclass
class AugmentResult:
    image: np.ndarray
    landmarks: np.ndarray  # [N, 2] in output pixels, mirror-permuted if flipped
    matrix: np.ndarray  # 2x3 original image px -> output px
    params: AugmentParams


def _size(out_size) -> tuple[int, int]:
    return (int(out_size), int(out_size)) if np.isscalar(out_size) else (int(out_size[0]), int(out_size[1]))


def sample_params(rng: np.random.Generator, cfg: AugmentConfig, out_size) -> AugmentParams:
    """Draw one set of augmentation parameters (fixed draw order, so results
    depend only on the generator state and the config)."""
    w, h = _size(out_size)
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
    scale = rng.uniform(*cfg.scale_range)
    shift = (rng.uniform(-cfg.translation, cfg.translation) * w,
             rng.uniform(-cfg.translation, cfg.translation) * h)
    flip = bool(rng.random() < cfg.flip_prob)
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    occluders = []
    if rng.random() < cfg.occlusion_prob:
        for _ in range(int(rng.integers(1, cfg.occlusion_max + 1))):
            rw = max(1, int(round(rng.uniform(*cfg.occlusion_size) * w)))
            rh = max(1, int(round(rng.uniform(*cfg.occlusion_size) * h)))
            x0 = int(rng.integers(0, w - rw + 1))
            y0 = int(rng.integers(0, h - rh + 1))
            colour = tuple(float(v) for v in rng.random(3))  # fraction of the value range
            occluders.append((x0, y0, x0 + rw, y0 + rh, colour))
    return AugmentParams(float(angle), float(scale), (float(shift[0]), float(shift[1])), flip,
                         float(b), float(c), float(s), occluders)


def augmentation_matrix(params: AugmentParams, out_size) -> np.ndarray:
    """Crop px -> crop px: mirror (if flip) about the crop centre, rotate by
    angle, scale about the centre, then shift."""
    w, h = _size(out_size)
    c = ((w - 1) / 2, (h - 1) / 2)
    target = (c[0] + params.shift[0], c[1] + params.shift[1])
    return similarity_matrix(params.scale, params.angle_deg, c, target, flip=params.flip)


def color_jitter(image: np.ndarray, brightness: float = 1.0, contrast: float = 1.0,
                 saturation: float = 1.0) -> np.ndarray:
    """Brightness (multiply), contrast (blend with the mean grey level),
    saturation (blend each pixel with its grey value, colour images only),
    in that order. Grey = mean of the channels (independent of RGB/BGR order).
    uint8 in -> uint8 out (rounded, clipped); float in -> float out, clipped
    to [0, 1] if the input was within it."""
    img = np.asarray(image)
    is_u8 = img.dtype == np.uint8
    x = img.astype(np.float32)
    x = x * brightness
    if contrast != 1.0:
        x = x.mean() + (x - x.mean()) * contrast
    if saturation != 1.0 and x.ndim == 3 and x.shape[2] >= 3:
        grey = x[..., :3].mean(axis=2, keepdims=True)
        x[..., :3] = grey + (x[..., :3] - grey) * saturation
    if is_u8:
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if img.size and img.min() >= 0 and img.max() <= 1:
        x = np.clip(x, 0, 1)
    return x.astype(img.dtype, copy=False)


def occlude(image: np.ndarray, occluders) -> np.ndarray:
    """Fill rectangles [(x0, y0, x1, y1, colour)] (half-open, crop px; colour
    as fractions of the value range: 255 for uint8, 1 for floats)."""
    out = np.array(image, copy=True)
    top = 255.0 if out.dtype == np.uint8 else 1.0
    for x0, y0, x1, y1, colour in occluders:
        col = np.asarray(colour, dtype=np.float64) * top
        if out.ndim == 2:
            out[y0:y1, x0:x1] = col.mean()
        else:
            ch = out.shape[2]
            col = np.resize(col, ch)
            out[y0:y1, x0:x1, :] = col.astype(out.dtype) if out.dtype != np.uint8 else np.rint(col).astype(np.uint8)
    return out


def augment_geometry(landmarks, crop_matrix, out_size, scheme, params: AugmentParams) -> tuple[np.ndarray, np.ndarray]:
    """(matrix 2x3 image px -> output px, landmarks [N, 2] in output px, mirror
    permuted on a flip): the geometric half of :func:`augment`, for callers
    that warp the image elsewhere (:mod:`pyflm.data.device_warp`)."""
    m = compose_affine(augmentation_matrix(params, out_size), crop_matrix)
    pts = transform_points(m, np.asarray(landmarks, dtype=np.float64))
    if params.flip:
        pts = pts[get_scheme(scheme).mirror_array]
    return m, pts


def augment(image: np.ndarray, landmarks, crop_matrix, out_size, scheme, rng: np.random.Generator,
            cfg: AugmentConfig = PAPER1, border_value=0, params: AugmentParams | None = None) -> AugmentResult:
    """Crop and augment one sample.

    ``crop_matrix`` maps the original image to the un-augmented crop of
    ``out_size``; the random transform is applied on top of it, the image is
    warped once (bilinear, constant border) and the landmarks [N, 2] move by
    the same matrix (then mirror-permuted on a flip). Colour jitter and
    occluders touch the image only. Pass ``params`` to replay a draw.
    """
    sch = get_scheme(scheme)
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (sch.num_points, 2):
        raise ValueError(f"landmarks must be [{sch.num_points}, 2] for scheme {sch.name}, got {pts.shape}")
    if params is None:
        params = sample_params(rng, cfg, out_size)
    m, new_pts = augment_geometry(pts, crop_matrix, out_size, sch.name, params)
    out = warp_image(image, m, _size(out_size), border_value=border_value)
    if (params.brightness, params.contrast, params.saturation) != (1.0, 1.0, 1.0):
        out = color_jitter(out, params.brightness, params.contrast, params.saturation)
    if params.occluders:
        out = occlude(out, params.occluders)
    return AugmentResult(out, new_pts, m, params)
