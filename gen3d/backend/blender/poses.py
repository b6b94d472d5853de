"""Camera pose sampling for dataset rendering, in the modes of 3D-DST (blender_addons.md section 5).

A pose is (azimuth, elevation, distance, roll) in degrees / normalised units around an object normalised to a
longest side of 1 at the origin. Angles follow :mod:`backend.geometry.cameras`' orbit convention: azimuth 0 is
the camera on -Y (Blender's front view), counter-clockwise seen from above; elevation is positive above the
object. 3D-DST's polar angle phi from +Z is ``90 - elevation``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import truncnorm

#: mode -> (azimuth range in degrees, polar-angle distribution (mean, sd, low, high) or None for uniform)
MODES: dict[int, tuple[tuple[float, float], tuple[float, float, float, float] | None]] = {
    1: ((0.0, 360.0), (90.0, 30.0, 0.0, 180.0)),
    2: ((-195.0, 15.0), (90.0, 30.0, 0.0, 180.0)),
    3: ((0.0, 360.0), (60.0, 20.0, 0.0, 195.0)),
    4: ((-195.0, 15.0), (60.0, 20.0, 0.0, 195.0)),
    5: ((0.0, 360.0), None),
}


@dataclass(frozen=True)
class Pose:
    azimuth: float
    elevation: float
    distance: float
    roll: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def seed_for(model_id: str, seed: int) -> int:
    """A stable per-model seed, so every worker (local or Ray) samples the same poses for the same model."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{model_id}".encode()).digest()[:8], "little")


def _truncnorm(rng: np.random.Generator, mean: float, sd: float, low: float, high: float, n: int) -> np.ndarray:
    a, b = (low - mean) / sd, (high - mean) / sd
    return truncnorm.rvs(a, b, loc=mean, scale=sd, size=n, random_state=rng)


def sample_poses(n: int, *, mode: int = 1, distance: float = 2.5, random_distance: bool = False,
                 roll_sd: float = 0.0, azimuth_offset: float = 0.0, elevation_offset: float = 0.0,
                 seed: int = 0) -> list[Pose]:
    """``n`` poses drawn in 3D-DST ``mode`` (1-5).

    Azimuth is uniform over the mode's range; the polar angle from +Z follows the mode's truncated normal (or is
    uniform in mode 5, i.e. uniform on the sphere); ``random_distance`` draws the distance from a truncated normal
    (sd 0.5 within [d - 0.5, d + 1.5]) as 3D-DST does without ``--disable_random_distance``; ``roll_sd`` > 0 adds an
    in-plane rotation from N(0, roll_sd). Offsets are added as the per-model CSV offsets are.
    """
    if mode not in MODES:
        raise ValueError(f"pose mode must be one of {sorted(MODES)}, got {mode}")
    if n < 1:
        raise ValueError(f"number of views must be positive, got {n}")
    rng = np.random.default_rng(seed)
    (az_lo, az_hi), polar = MODES[mode]
    az = rng.uniform(az_lo, az_hi, n) + azimuth_offset
    if polar is None:
        phi = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    else:
        phi = _truncnorm(rng, *polar, n)
    el = np.clip(90.0 - phi + elevation_offset, -89.0, 89.0)
    dist = _truncnorm(rng, distance, 0.5, distance - 0.5, distance + 1.5, n) if random_distance else np.full(n, distance)
    roll = rng.normal(0.0, roll_sd, n) if roll_sd > 0 else np.zeros(n)
    return [Pose(float(((a + 180.0) % 360.0) - 180.0), float(e), float(d), float(r))
            for a, e, d, r in zip(az, el, dist, roll)]
