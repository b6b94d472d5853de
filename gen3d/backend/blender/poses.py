"""Camera pose sampling for dataset rendering: the modes of 3D-DST (blender_addons.md section 5), random orbits
(Zero123 / LRM renders) and the fixed rings of multi-view methods (:data:`RINGS`).

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

#: 3D-DST mode -> (azimuth range in degrees, polar-angle distribution (mean, sd, low, high) or None for uniform)
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


def orbit_poses(n: int, *, elevation: tuple[float, float] = (-90.0, 90.0), distance: tuple[float, float] = (1.5, 2.2),
                seed: int = 0) -> list[Pose]:
    """``n`` poses uniform over the sphere's band between the ``elevation`` limits (degrees; clipped to ±89),
    uniform in azimuth over [-180, 180) and in ``distance``, looking at the origin: Zero123's Objaverse renders
    (the full sphere, radius 1.5-2.2) by default, LRM-style bands by choice."""
    if n < 1:
        raise ValueError(f"number of views must be positive, got {n}")
    rng = np.random.default_rng(seed)
    lo, hi = np.sin(np.radians(elevation))
    el = np.clip(np.degrees(np.arcsin(rng.uniform(lo, hi, n))), -89.0, 89.0)
    az = rng.uniform(-180.0, 180.0, n)
    dist = rng.uniform(*distance, n)
    return [Pose(float(a), float(e), float(d)) for a, e, d in zip(az, el, dist)]


@dataclass(frozen=True)
class Ring:
    """A published fixed set of views: per-view elevations and azimuths (degrees, our orbit convention), the
    camera distance (units of the normalised object, longest side 1) and vertical field of view."""

    elevations: tuple[float, ...]
    azimuths: tuple[float, ...]
    distance: float
    fov_deg: float


#: The fixed rings. Azimuths are relative to view 0's object-facing direction, which we put at azimuth 0 (the
#: front view, camera on -Y); threestudio/MVDream's Z-up frame (azimuth 0 on +X) is ours turned 90° about Z, with
#: the same azimuth numbers. FoV 49.1° is Zero123's 35 mm lens on a 32 mm sensor.
RINGS: dict[str, Ring] = {
    # Instant3D: a 2x2 grid of 4 views at elevation 20°, 90° apart (GRM's reproduction: radius 2.7, FoV 50°).
    "instant3d": Ring((20.0,) * 4, (0.0, 90.0, 180.0, 270.0), 2.7, 50.0),
    # MVDream: 4 orthogonal views; get_camera's default elevation 15°, azimuths 0/90/180/270 (its cameras have unit
    # distance and no fixed FoV, so distance and FoV here are ours).
    "mvdream": Ring((15.0,) * 4, (0.0, 90.0, 180.0, 270.0), 2.0, 49.1),
    # SyncDreamer: 16 views at one elevation (30° in its camera-16.pkl), 22.5° steps, distance 1.5, focal 280 px
    # at 256² (FoV 49.1°).
    "syncdreamer": Ring((30.0,) * 16, tuple(22.5 * i for i in range(16)), 1.5, 49.1),
    # Zero123++ v1.2: 6 views at azimuths 30-330° (60° steps) relative to the input, elevations alternating
    # +20°/-10°, FoV 30° (InstantMesh's cameras for its outputs: radius 4.0).
    "zero123pp": Ring((20.0, -10.0) * 3, (30.0, 90.0, 150.0, 210.0, 270.0, 330.0), 4.0, 30.0),
}


def ring_poses(name: str, *, elevation: float | None = None, distance: float | None = None) -> list[Pose]:
    """The poses of ring ``name`` (:data:`RINGS`); ``elevation`` replaces a single-elevation ring's elevation
    (SyncDreamer's "given elevation"), ``distance`` the ring's distance."""
    ring = RINGS[name]
    if elevation is not None and len(set(ring.elevations)) > 1:
        raise ValueError(f"ring {name!r} has several elevations {sorted(set(ring.elevations))}; it takes no elevation")
    els = [elevation] * len(ring.elevations) if elevation is not None else ring.elevations
    d = ring.distance if distance is None else distance
    return [Pose(float(((a + 180.0) % 360.0) - 180.0), float(e), float(d)) for e, a in zip(els, ring.azimuths)]
