"""Landmark schemes as data: point count, mirror permutation, normalisers.

A scheme says how a point set is ordered. All indices are 0-based.

* ``mirror``: the permutation to apply after a horizontal flip. If ``pts`` are
  the landmarks of an image and ``flipped`` is the image flipped left-right
  (x -> W - 1 - x), the landmarks of ``flipped`` are ``(W - 1 - pts[:, 0],
  pts[:, 1])[mirror]``, i.e. new point i is the mirrored old point
  ``mirror[i]``. It is an involution (``mirror[mirror] == arange(n)``).
* ``norm_indices``: the two points whose distance normalises the NME by
  default (outer eye corners for 68 and 98 points, see each scheme).
* ``pupil_groups``: two groups of indices whose centroids stand for the pupils
  (the eye contours for 68 points, the annotated pupils for 98 and 29 points).
* ``eye_anchor``: the eye-contour points (the 12-point eye-anchor subset for 68).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LandmarkScheme", "SCHEMES", "get_scheme", "model_mirror", "IBUG68", "WFLW98", "COFW29", "AFLW19"]


def check_mirror(mirror, num_points: int, what: str) -> list[int]:
    """``mirror`` as a list of ints; ValueError naming ``what`` unless it is an
    involutive permutation of ``num_points`` points."""
    m = [int(i) for i in mirror]
    if sorted(m) != list(range(num_points)) or any(m[j] != i for i, j in enumerate(m)):
        raise ValueError(f"{what} is not an involutive permutation of {num_points} points")
    return m


def _perm_from_pairs(n: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(n))
    for a, b in pairs:
        if perm[a] != a or perm[b] != b:
            raise ValueError(f"index used twice in mirror pairs: {a}, {b}")
        perm[a], perm[b] = b, a
    return tuple(perm)


@dataclass(frozen=True)
class LandmarkScheme:
    name: str
    num_points: int
    mirror: tuple[int, ...]
    norm_indices: tuple[int, int]
    pupil_groups: tuple[tuple[int, ...], tuple[int, ...]]
    eye_anchor: tuple[int, ...]
    description: str = ""
    groups: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        check_mirror(self.mirror, self.num_points, f"scheme {self.name}: mirror")

    @property
    def mirror_array(self) -> np.ndarray:
        return np.asarray(self.mirror, dtype=np.int64)

    def flip_landmarks(self, landmarks: np.ndarray, width: int) -> np.ndarray:
        """Landmarks [..., N, 2] of an image of ``width`` columns after a
        left-right flip of the image (x -> width - 1 - x), re-ordered by the
        mirror permutation."""
        pts = np.array(landmarks, dtype=np.float64, copy=True)
        if pts.shape[-2:] != (self.num_points, 2):
            raise ValueError(f"scheme {self.name}: expected [..., {self.num_points}, 2], got {pts.shape}")
        pts[..., 0] = (width - 1) - pts[..., 0]
        return pts[..., self.mirror_array, :]


def _ibug68() -> LandmarkScheme:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw 0-16, 8 is the chin
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils; bridge 27-30 and 33 on the axis
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
    return LandmarkScheme(
        name="68",
        num_points=68,
        mirror=_perm_from_pairs(68, pairs),
        norm_indices=(36, 45),
        pupil_groups=(tuple(range(36, 42)), tuple(range(42, 48))),
        eye_anchor=tuple(range(36, 48)),
        description="iBUG / 300-W 68 points: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth",
        groups={"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36),
                "eyes": range(36, 48), "mouth": range(48, 68)},
    )


def _wflw98() -> LandmarkScheme:
    pairs = [(i, 32 - i) for i in range(16)]  # jaw 0-32, 16 is the chin
    pairs += [(33 + i, 46 - i) for i in range(5)]  # upper brow contours 33-37 / 42-46
    pairs += [(38 + i, 50 - i) for i in range(4)]  # lower brow contours 38-41 / 47-50
    pairs += [(55, 59), (56, 58)]  # nose bottom; 51-54 and 57 on the axis
    pairs += [(60 + i, 72 - i) for i in range(5)]  # eye contours 60-64 / 68-72
    pairs += [(65, 75), (66, 74), (67, 73)]
    pairs += [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86)]  # outer lips
    pairs += [(88, 92), (89, 91), (93, 95)]  # inner lips
    pairs += [(96, 97)]  # pupils
    return LandmarkScheme(
        name="98",
        num_points=98,
        mirror=_perm_from_pairs(98, pairs),
        norm_indices=(60, 72),
        pupil_groups=((96,), (97,)),
        eye_anchor=tuple(range(60, 76)),
        description="WFLW 98 points: 0-32 jaw, 33-50 brows, 51-59 nose, 60-75 eyes, 76-95 mouth, 96-97 pupils",
        groups={"jaw": range(0, 33), "brows": range(33, 51), "nose": range(51, 60),
                "eyes": range(60, 76), "mouth": range(76, 96), "pupils": range(96, 98)},
    )


def _cofw29() -> LandmarkScheme:
    # Layout (checked on the fixtures): 0/1 outer brow ends, 2/3 inner brow ends,
    # 4/5 and 6/7 brow top/bottom, 8/9 outer eye corners, 10/11 inner eye corners,
    # 12/13 and 14/15 lids, 16/17 pupils, 18/19 nose wings, 20 nose tip,
    # 21 nose bottom, 22/23 mouth corners, 24-27 lips, 28 chin.
    pairs = [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15),
             (16, 17), (18, 19), (22, 23)]
    return LandmarkScheme(
        name="29",
        num_points=29,
        mirror=_perm_from_pairs(29, pairs),
        # Outer eye corners (the inter-ocular convention of HRNet/LAB on COFW);
        # pass norm="pupils" to the metrics for the older inter-pupil convention.
        norm_indices=(8, 9),
        pupil_groups=((16,), (17,)),
        eye_anchor=tuple(range(8, 18)),
        description="COFW 29 points (RCPR layout)",
    )


def _aflw19() -> LandmarkScheme:
    pairs = [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)]
    return LandmarkScheme(
        name="19",
        num_points=19,
        mirror=_perm_from_pairs(19, pairs),
        norm_indices=(6, 11),  # AFLW is normally normalised by box size instead
        pupil_groups=((7,), (10,)),
        eye_anchor=tuple(range(6, 12)),
        description="AFLW 19 points: 0-5 brows, 6-11 eyes, 12-14 nose, 15-17 mouth, 18 chin",
    )


IBUG68 = _ibug68()
WFLW98 = _wflw98()
COFW29 = _cofw29()
AFLW19 = _aflw19()

SCHEMES: dict[str, LandmarkScheme] = {s.name: s for s in (IBUG68, WFLW98, COFW29, AFLW19)}
_ALIASES = {"ibug": "68", "300w": "68", "ibug68": "68", "wflw": "98", "cofw": "29", "aflw": "19"}


def get_scheme(scheme: "str | int | LandmarkScheme") -> LandmarkScheme:
    """A scheme by name ("68", "98", "29", "19", "ibug", "wflw", "cofw", "aflw"),
    by point count, or passed through."""
    if isinstance(scheme, LandmarkScheme):
        return scheme
    key = str(scheme).lower()
    key = _ALIASES.get(key, key)
    if key not in SCHEMES:
        raise ValueError(f"unknown landmark scheme {scheme!r}; known: {sorted(SCHEMES)} or {sorted(_ALIASES)}")
    return SCHEMES[key]


def model_mirror(meta: dict) -> list[int] | None:
    """The mirror permutation of a model's landmarks (flip test): ``meta["mirror"]``
    if the model carries one, else that of the scheme ``meta["scheme"]`` names,
    else that of the known scheme with ``meta["num_landmarks"]`` points; None
    when none fits. ValueError for a ``meta["mirror"]`` that is not an
    involutive permutation of the model's points."""
    k = int(meta["num_landmarks"])
    if meta.get("mirror") is not None:
        return check_mirror(meta["mirror"], k, "model meta 'mirror'")
    for name in (meta.get("scheme"), k):
        try:
            sch = get_scheme(name)
        except ValueError:
            continue
        if sch.num_points == k:
            return list(sch.mirror)
    return None
