"""Tests of the itergen pose sampler P_lambda (itergen_ns.itergen.pose_sampler), DESIGN §4.

Cameras are synthetic: inward-looking OpenGL cameras on a circular orbit (radius 3, elevation 20 degrees) about a
known, off-origin centre with world z up, so the orbit the sampler estimates and every generated pose can be checked
against ground truth. The three inputs sit at azimuths 0, 30 and 60 degrees, i.e. the object is seen from one side.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from itergen_ns.data.camera_utils import look_at
from itergen_ns.diffusion.sampling import ClipStatistics
from itergen_ns.itergen.pose_sampler import FALLBACK_DEGREES_PER_FRAME, Orbit, PoseSampler, PoseSamplerConfig

CENTRE = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
UP = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
RADIUS, ELEVATION = 3.0, 20.0
G = 8


def orbit_camera(azimuth: float, elevation: float = ELEVATION, radius: float = RADIUS) -> torch.Tensor:
    """OpenGL c2w [3, 4] on the ground-truth orbit, looking at CENTRE."""
    az, el = math.radians(azimuth), math.radians(elevation)
    offset = radius * torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return look_at(CENTRE + offset.double(), CENTRE, UP)


def inputs(azimuths=(0.0, 30.0, 60.0)) -> torch.Tensor:
    return torch.stack([orbit_camera(a) for a in azimuths]).float()


def sampler(seed: int = 0, input_c2w=None, **kwargs) -> PoseSampler:
    cfg = PoseSamplerConfig(**dict(dict(degrees_per_frame=4.0, elevation_step_degrees=0.5), **kwargs))
    return cfg.setup(input_c2w=inputs() if input_c2w is None else input_c2w, seed=seed)


def azimuths_of(s: PoseSampler, clip: torch.Tensor) -> np.ndarray:
    return np.array([s.orbit.azimuth(c) for c in clip])


def signed_delta(a: float, b: float) -> float:
    """b - a on the circle, in (-180, 180]."""
    return (b - a + 180.0) % 360.0 - 180.0


def gap_to_inputs(azimuth: float, input_azimuths=(0.0, 30.0, 60.0)) -> float:
    return min(abs(signed_delta(azimuth, a)) for a in input_azimuths)


def test_orbit_recovers_centre_and_up_axis():
    orbit = Orbit.from_cameras(inputs())
    assert torch.allclose(orbit.centre, CENTRE, atol=1e-5)
    assert torch.allclose(orbit.up, UP, atol=1e-5)
    # azimuths are measured from the first input, counter-clockwise about up
    got = [Orbit.azimuth(orbit, orbit_camera(a)) for a in (0.0, 30.0, 60.0, 200.0)]
    np.testing.assert_allclose(got, [0.0, 30.0, 60.0, 200.0], atol=1e-4)
    assert orbit.elevation(orbit_camera(0.0)) == pytest.approx(ELEVATION, abs=1e-4)


def test_orbit_from_one_camera_is_level_given_its_elevation():
    cam = look_at(torch.tensor([3.0, 0.0, 1.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64), UP)
    elevation = math.degrees(math.atan2(1.0, 3.0))
    orbit = Orbit.from_cameras(cam[None], elevation_prior_degrees=elevation)
    # the point on the optical axis nearest the world origin, which is the origin itself here
    assert torch.allclose(orbit.centre, torch.zeros(3, dtype=torch.float64), atol=1e-6)
    # zero roll + the right elevation give the true vertical, not the camera's own (tilted) up vector
    assert torch.allclose(orbit.up, UP, atol=1e-9)
    assert not torch.allclose(orbit.up, cam[:, 1], atol=0.1)
    assert orbit.elevation(cam) == pytest.approx(elevation, abs=1e-9)
    # a wrong prior tilts the axis by the error, in the camera's vertical plane
    tilted = Orbit.from_cameras(cam[None], elevation_prior_degrees=elevation + 10.0)
    assert math.degrees(math.acos(float(torch.dot(tilted.up, UP)))) == pytest.approx(10.0, abs=1e-6)


def test_orbit_from_two_cameras_is_orthogonal_to_their_baseline():
    cams = torch.stack([orbit_camera(0.0), orbit_camera(40.0)])
    orbit = Orbit.from_cameras(cams, elevation_prior_degrees=ELEVATION + 8.0)  # even with a wrong prior
    base = cams[1, :, 3] - cams[0, :, 3]
    assert abs(float(torch.dot(orbit.up, base))) < 1e-9
    assert math.degrees(math.acos(float(torch.dot(orbit.up, UP)))) < 8.0


def test_each_input_starts_a_chain_and_chains_are_continuous():
    s = sampler()
    clips = [s.next_clip(G) for _ in range(6)]
    assert all(c.shape == (G, 3, 4) for c in clips)
    for i in range(3):  # clip i starts exactly at input i, clip i+3 where clip i ended
        assert torch.equal(clips[i][0], inputs()[i])
        assert torch.equal(clips[i + 3][0], clips[i][-1]), "each chain continues where its last clip ended"
    for clip in clips:  # consecutive frames are one azimuth step apart: a video-like trajectory
        az = azimuths_of(s, clip)
        steps = [abs(signed_delta(a, b)) for a, b in zip(az[:-1], az[1:])]
        np.testing.assert_allclose(steps, 4.0, atol=0.05)


def test_step_and_elevation_prior_come_from_the_training_clips():
    stats = ClipStatistics(
        degrees_per_frame=1.8,
        mean_elevation_degrees=ELEVATION,
        elevation_std_degrees=3.0,
        zoom_log_std=0.0,
        num_clips=5,
    )
    s = PoseSamplerConfig(elevation_step_degrees=0.0).setup(input_c2w=inputs()[:1], seed=0, clip_statistics=stats)
    assert torch.allclose(s.orbit.up, UP, atol=1e-6)  # level: prior = the true elevation
    clip = s.next_clip(G)
    az = azimuths_of(s, clip)
    np.testing.assert_allclose([abs(signed_delta(a, b)) for a, b in zip(az[:-1], az[1:])], 1.8, atol=1e-3)
    # an explicit setting wins over the statistics; without statistics the documented fallback applies
    assert (
        PoseSamplerConfig(degrees_per_frame=3.0).setup(input_c2w=inputs(), clip_statistics=stats).degrees_per_frame
        == 3.0
    )
    assert PoseSamplerConfig().setup(input_c2w=inputs()).degrees_per_frame == FALLBACK_DEGREES_PER_FRAME


def test_clips_move_outward_to_uncovered_azimuths():
    s = sampler(input_c2w=inputs()[:1])  # one chain: from input 0
    s.orbit = Orbit.from_cameras(inputs())  # the true orbit, so azimuths can be checked exactly
    s.reset_coverage()
    for a in (30.0, 60.0):
        s.cover(a, s.config.input_coverage_degrees)
    travelled, gaps, new_fractions = 0.0, [], []
    for _ in range(8):
        covered_before = s.covered.copy()
        clip = s.next_clip(G)
        az = azimuths_of(s, clip)
        # inputs cover [-15, 75]: from input 0 the nearest uncovered side is negative azimuth, and later clips
        # keep going that way (the way they came is covered by now)
        assert all(signed_delta(az[0], a) < 0 for a in az[1:]), az
        travelled += signed_delta(az[0], az[-1])
        new_fractions.append(np.mean([not covered_before[int(round(a)) % 360] for a in az[1:]]))
        gaps.append(gap_to_inputs(az[-1]))
    assert new_fractions[0] >= 0.5 and min(new_fractions[1:]) == 1.0, new_fractions
    assert travelled == pytest.approx(-8 * (G - 1) * 4.0, abs=0.5)  # 224 deg into the 270-deg uncovered arc
    # until the middle of the uncovered arc (135 deg from both edges), every clip ends farther from the inputs
    assert all(b > a + 20 for a, b in zip(gaps[:4], gaps[1:5])), gaps


def test_orbit_is_swept_then_coverage_restarts():
    s = sampler(degrees_per_frame=10.0)
    for _ in range(40):
        s.next_clip(G)
        if s.covered.all():
            break
    assert s.covered.all(), "clips should sweep the whole uncovered orbit"
    s.next_clip(G)  # fully covered: coverage resets to the inputs and a new round starts
    assert not s.covered.all()


def test_generated_cameras_keep_looking_at_the_centre_with_zoom_and_elevation():
    s = sampler(zoom_probability=1.0, zoom_range=(0.7, 0.8), elevation_step_degrees=3.0, seed=3)
    s.zoom_log_std = 0.0
    lo, hi = s.elevation_bounds
    assert (lo, hi) == pytest.approx((ELEVATION - 15.0, ELEVATION + 15.0), abs=1e-3)
    for _ in range(5):
        clip = s.next_clip(G).double()
        dist = (clip[:, :, 3] - CENTRE).norm(dim=-1)
        ratio = dist[-1] / dist[0]
        assert 0.7 - 1e-6 <= ratio <= 0.8 + 1e-6  # zoomed in over the clip
        assert torch.all(dist[1:] < dist[:-1])  # monotonically
        for c in clip:
            to_centre = (CENTRE - c[:, 3]) / (CENTRE - c[:, 3]).norm()
            assert torch.dot(to_centre, -c[:, 2]) > 1 - 1e-6  # optical axis through the centre
            assert torch.allclose(c[:, :3].T @ c[:, :3], torch.eye(3, dtype=torch.float64), atol=1e-6)
            assert lo - 1e-6 <= s.orbit.elevation(c) <= hi + 1e-6


def test_random_order_differs():
    ordered = sampler(seed=0)
    rand = sampler(order="random", seed=0)
    o_clips = [ordered.next_clip(G) for _ in range(4)]
    r_clips = [rand.next_clip(G) for _ in range(4)]
    ins = inputs()
    # random clips start at random orbit positions, not at inputs nor at the last clip's end
    assert min((r_clips[0][0] - x).abs().max() for x in ins) > 1e-3
    assert all((b[0] - a[-1]).abs().max() > 1e-3 for a, b in zip(r_clips[:-1], r_clips[1:]))
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(o_clips, r_clips))
    starts = [rand.orbit.azimuth(c[0]) for c in r_clips]
    assert max(starts) - min(starts) > 60.0  # spread around the object
    # ...but deterministic for a seed
    again = sampler(order="random", seed=0)
    assert all(torch.equal(a, again.next_clip(G)) for a in r_clips)


def test_plan_is_the_sequence_of_next_clips():
    planned = sampler(seed=5).plan(5, G)
    iterative = sampler(seed=5)
    assert all(torch.equal(p, iterative.next_clip(G)) for p in planned)


def test_same_seed_same_clips_and_no_inputs_is_an_error():
    a, b = sampler(seed=7, zoom_probability=0.5), sampler(seed=7, zoom_probability=0.5)
    for _ in range(3):
        assert torch.equal(a.next_clip(G), b.next_clip(G))
    c = sampler(seed=8, zoom_probability=0.5)  # the seed is the run's: another seed, other clips
    assert not torch.equal(sampler(seed=7, zoom_probability=0.5).plan(3, G)[2], c.plan(3, G)[2])
    with pytest.raises(ValueError, match="at least one input camera"):
        PoseSamplerConfig().setup(input_c2w=torch.zeros(0, 3, 4))


# --- level orbits on CO3D-like procedural captures (true up = world z, known to the test only) -----------------
BAND_MARGIN_DEGREES = {1: 35.0, 2: 15.0, 6: 10.0}
"""Sampled cameras stay within the full capture's elevation band widened by this much (measured worst case over
the 8 captures below: 29.1 / 10.4 / 5.9 deg). With 1 input the error of the elevation prior (training mean
~24 deg vs. a capture's 8-40 deg) tilts the orbit, hence the wider margin; the old rule (the camera's own up as
the orbit axis) went 56 deg below the band."""


def procedural_capture(seed: int, num_frames: int = 36) -> torch.Tensor:
    from itergen_ns.data.procedural.orbit import sample_orbit

    rng = np.random.default_rng(seed)
    return torch.from_numpy(sample_orbit(rng, num_frames, (0.0, 0.0, 0.4), 3.0, look_jitter=0.05))


def true_elevations(c2w: torch.Tensor, centre=(0.0, 0.0, 0.4)) -> np.ndarray:
    rel = c2w.double()[:, :, 3] - torch.tensor(centre, dtype=torch.float64)
    return np.degrees(np.arcsin((rel[:, 2] / rel.norm(dim=-1)).numpy()))


@pytest.mark.parametrize("num_inputs", [1, 2, 6])
def test_sampled_cameras_stay_in_the_capture_elevation_band(num_inputs):
    from itergen_ns.diffusion.clip_stats import measure_clip_statistics

    stats = measure_clip_statistics([procedural_capture(seed).numpy() for seed in range(100, 110)], G)
    worst, worst_old = 0.0, 0.0
    for seed in range(8):
        capture = procedural_capture(seed)
        band = true_elevations(capture)
        idx = np.linspace(0, len(capture), num_inputs, endpoint=False).astype(int)
        s = PoseSamplerConfig().setup(input_c2w=capture[idx].float(), seed=seed, clip_statistics=stats)
        clips = torch.cat([s.next_clip(G) for _ in range(12)])
        el = true_elevations(clips)
        worst = max(worst, band.min() - el.min(), el.max() - band.max())
        if num_inputs == 1:  # the camera's own up as the orbit axis (the old rule) leaves the band far behind
            s.orbit.up = capture[idx[0], :, 1].double()
            worst_old = max(
                worst_old, band.min() - true_elevations(torch.cat([s.next_clip(G) for _ in range(12)])).min()
            )
    assert worst <= BAND_MARGIN_DEGREES[num_inputs], worst
    if num_inputs == 1:
        assert worst_old > BAND_MARGIN_DEGREES[1] + 10, worst_old
