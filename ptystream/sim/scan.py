"""A complete simulated scan from a profile: ground truth, positions, stage and detector."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptystream import optics
from ptystream.config import Profile
from ptystream.sim import trajectories
from ptystream.sim.detector import DetectorModel
from ptystream.sim.devices import PtychoDetector, SampleStage, make_beamline
from ptystream.sim.plans import ptycho_scan
from ptystream.sim.sample import GroundTruth, make_ground_truth

__all__ = ["SimulatedScan", "build_simulation", "simulated_read_noise"]


@dataclass
class SimulatedScan:
    """Everything a simulated experiment needs; :meth:`plan` is the Bluesky plan to run."""

    profile: Profile
    truth: GroundTruth
    positions_m: np.ndarray
    stage: SampleStage
    detector: PtychoDetector

    def plan(self, md: dict | None = None):
        return ptycho_scan(
            self.detector,
            self.stage,
            self.positions_m,
            profile=self.profile.name,
            motor_units_m=self.profile.instrument.motor_units_m,
            md=md,
        )


def simulated_read_noise(profile: Profile) -> float:
    """The simulated detector's read-noise sigma in counts: ``sim.read_noise_counts``, else the
    instrument's, else 0."""
    sim, inst = profile.sim, profile.instrument
    if sim is not None and sim.read_noise_counts is not None:
        return sim.read_noise_counts
    return inst.read_noise_counts or 0.0


def build_simulation(profile: Profile) -> SimulatedScan:
    """Build the ground truth, trajectory and ophyd devices described by ``profile.sim``.

    Raises ValueError when the profile has no ``sim`` section or the scan leaves the object.
    """
    sim = profile.sim
    if sim is None:
        raise ValueError(f"profile {profile.name!r} has no 'sim' section to simulate from")
    inst = profile.instrument
    geometry = inst.geometry()
    rng = np.random.default_rng(sim.seed)
    truth = make_ground_truth(sim, geometry)
    diameter = optics.probe_diameter_m(truth.probe, geometry.object_pixel_size_m)
    step = trajectories.step_from_overlap(diameter, sim.overlap)
    positions = trajectories.trajectory(
        sim.trajectory, sim.n_points, step, jitter_fraction=sim.jitter_fraction, rng=rng
    )
    reach_px = np.abs(positions).max() / geometry.object_pixel_size_m + inst.frame_px / 2 + 1
    if reach_px > sim.object_px // 2:
        raise ValueError(
            f"the scan reaches {reach_px:.0f} px from the centre but the simulated object is "
            f"{sim.object_px} px wide: raise sim.object_px or lower sim.n_points"
        )
    detector = DetectorModel(
        photons_per_frame=sim.photons_per_frame,
        read_noise_counts=simulated_read_noise(profile) if sim.photons_per_frame else 0.0,
        saturation_counts=inst.saturation_counts,
        rng=rng,
    )
    stage, det = make_beamline(
        truth, detector, motor_units_m=inst.motor_units_m, exposure_s=sim.exposure_s
    )
    return SimulatedScan(profile, truth, positions, stage, det)
