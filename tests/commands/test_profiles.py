"""The shipped profiles, `ptystream profiles list|show|validate` as real subprocesses, and a
short reconstruction from every profile that describes a simulated scan. (Reading a profile,
its rules and its error messages are tested in tests/config/.)"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ptystream import optics
from ptystream.config import HC_EV_M, Profile, load_profile
from ptystream.engine import EngineSetup, make_engine
from ptystream.metrics import score_against_truth, score_slices
from ptystream.sim.detector import DetectorModel, diffraction_pattern, exit_wave
from ptystream.sim.sample import GroundTruth, make_object
from ptystream.sim.scan import build_simulation, simulated_read_noise
from ptystream.sim.trajectories import fermat_spiral, step_from_overlap

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "profiles").glob("*.yaml"))
NAMES = [path.stem for path in SHIPPED]
SIMULATED = [path.stem for path in SHIPPED if load_profile(path).sim is not None]


def ptystream(*args, cwd=None):
    exe = Path(sys.executable).with_name("ptystream")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the shipped profiles ---------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=NAMES)
def test_every_shipped_profile_validates(path):
    profile = load_profile(path)
    assert profile.name == path.stem  # the name passed to --profile is the one recorded
    assert profile.description and "\n" not in profile.description


def test_the_profiles_of_the_issue_are_shipped():
    expected = {"demo", "seifert2021-sim", "seifert2021-visible", "hard-xray-farfield"}
    assert expected | {"p25-nearfield"} <= set(NAMES)
    assert {"demo", "hard-xray-farfield"} <= set(SIMULATED)


def test_the_paper_and_beamline_profiles_say_what_the_issue_says():
    paper_sim = load_profile("seifert2021-sim")
    sim = paper_sim.instrument
    assert sim.wavelength_m == pytest.approx(561e-9, rel=1e-12)
    assert sim.detector_pixel_size_m == 6.45e-6 and sim.propagation == "near_field"
    assert sim.distance_m <= paper_sim.frame_px * sim.detector_pixel_size_m**2 / sim.wavelength_m
    vis = load_profile("seifert2021-visible").instrument
    assert vis.wavelength_m == pytest.approx(708.9e-9, rel=1e-12)
    assert (vis.distance_m, vis.detector_pixel_size_m) == (34.95e-3, 4.54e-6)
    assert vis.propagation == "fresnel"  # far field, with the 944 rad Fresnel phase modelled
    xray = load_profile("hard-xray-farfield")
    assert 5_000 <= xray.instrument.energy_eV <= 20_000
    assert xray.instrument.detector_pixel_size_m == 75e-6
    # the photon counter's statistics come from its frames (issue 16): Poisson for its integer
    # counts, never for data with read noise (tests/engine/test_noise.py)
    assert xray.instrument.read_noise_counts is None and xray.engine.loss == "auto"


# --- the command ------------------------------------------------------------------------------


def test_list_shows_every_profile_with_its_optics_and_file():
    run = ptystream("profiles", "list", cwd=REPO)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "DESCRIPTION"] and lines[0].split()[-1] == "FILE"
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == NAMES
    for name in NAMES:
        assert rows[name].endswith(f"profiles/{name}.yaml")
        assert load_profile(name).description in rows[name]
    expected = {
        "demo": ["far_field", "8 keV (155 pm)", "2 m", "75 µm"],
        "seifert2021-sim": ["near_field", "561 nm (2.21 eV)", "3.5 mm", "6.45 µm"],
        "seifert2021-visible": ["fresnel", "708.9 nm (1.75 eV)", "34.95 mm", "4.54 µm"],
        "hard-xray-farfield": ["far_field", "10 keV (124 pm)", "5 m", "75 µm"],
        "p25-nearfield": ["near_field", "12.66 keV (97.95 pm)", "1.12 m (focus 3.65 mm)", "55 µm"],
    }
    for name, cells in expected.items():
        assert all(f"  {cell}  " in rows[name] for cell in cells), rows[name]


def test_list_flags_a_broken_profile_and_still_lists_the_others(tmp_path):
    (tmp_path / "profiles").mkdir()  # ./profiles is searched first
    broken = tmp_path / "profiles" / "broken.yaml"
    broken.write_text("name: broken\ninstrument: {energy_eV: 8000}\n")
    run = ptystream("profiles", "list", cwd=tmp_path)
    assert run.returncode == 1
    rows = {line.split()[0]: line for line in run.stdout.splitlines()[1:]}
    assert sorted(rows) == sorted([*NAMES, "broken"])
    assert "INVALID" in rows["broken"] and rows["broken"].endswith("profiles/broken.yaml")
    assert str(broken) in run.stderr and "instrument.distance_m: Field required" in run.stderr


@pytest.mark.parametrize("name", NAMES)
def test_show_prints_the_resolved_profile_which_validates_again(tmp_path, name):
    run = ptystream("profiles", "show", name)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"# Profile {name!r} as resolved from {REPO / 'profiles'}")
    data = yaml.safe_load(run.stdout)
    assert set(data) == set(Profile.model_fields)  # every section, defaults filled in
    assert data["engine"]["tf_threads"] == 1 and "pie" in data["engine"]
    shown = load_profile(write(tmp_path, run.stdout, f"{name}.yaml"))
    assert shown == load_profile(name)
    wavelength = data["instrument"]["wavelength_m"]
    assert wavelength == pytest.approx(HC_EV_M / data["instrument"]["energy_eV"], rel=1e-12)


def test_show_takes_a_file_and_validates_it(tmp_path):
    instrument = "distance_m: 0.03, detector_pixel_size_m: 4.5e-6, frame_px: 64"
    path = write(tmp_path, "name: mine\ninstrument: {wavelength_m: 633.0e-9, " + instrument + "}\n")
    run = ptystream("profiles", "show", str(path))
    assert run.returncode == 0, run.stderr
    assert f"from {path}" in run.stdout and "wavelength_m: 6.33e-07" in run.stdout
    assert "batch_size: 16" in run.stdout  # a default filled in
    bad = write(tmp_path, "name: bad\ninstrument: {energy_eV: 1, " + instrument + ", frame: 2}\n")
    run = ptystream("profiles", "show", str(bad))
    assert run.returncode == 2 and "instrument.frame: Extra inputs" in run.stderr
    assert "did you mean 'frame_px'" in run.stderr and str(bad) in run.stderr


def test_validate_accepts_every_shipped_profile():
    run = ptystream("profiles", "validate", *map(str, SHIPPED))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{p}: ok (profile {p.stem!r})" for p in SHIPPED]
    assert run.stderr == ""


def test_validate_names_the_misspelt_key_the_suggestion_and_the_file(tmp_path):
    good = REPO / "profiles" / "demo.yaml"
    bad = write(tmp_path, good.read_text().replace("batch_size:", "batch_sise:"), "typo.yaml")
    run = ptystream("profiles", "validate", str(good), str(bad))
    assert run.returncode == 1
    assert run.stdout.splitlines() == [f"{good}: ok (profile 'demo')"]
    assert f"profile {bad} is invalid: engine.batch_sise: Extra inputs are not permitted" in (
        run.stderr
    )
    assert "(unknown key; did you mean 'batch_size'?)" in run.stderr
    assert run.stderr.splitlines()[-1] == "ptystream: 1 of 2 profile(s) invalid"
    assert "Traceback" not in run.stderr


def test_an_unknown_profile_name_lists_the_known_ones():
    run = ptystream("profiles", "show", "seifert2021")
    assert run.returncode == 2
    assert "profile 'seifert2021' not found (did you mean 'seifert2021-" in run.stderr
    assert f"Known profiles: {', '.join(NAMES)} " in run.stderr
    assert "Traceback" not in run.stderr
    run = ptystream("profiles", "validate", "no-such-profile")
    assert run.returncode == 1 and f"Known profiles: {', '.join(NAMES)} " in run.stderr


# --- reconstructions --------------------------------------------------------------------------


def reconstruct(profile, geometry, positions, frames, planned):
    """The profile's engine as a live run drives it (frames arriving a batch at a time, the
    profile's steps after each arrival), then its final passes; returns the final estimate."""
    inst, settings = profile.instrument, profile.engine
    engine = make_engine(
        EngineSetup(
            geometry,
            settings,
            plan=planned(positions),
            read_noise_counts=inst.read_noise_counts,
            probe_defocus_m=inst.probe_defocus_m,
        ),
    )
    for i in range(0, len(frames), settings.batch_size):
        end = i + settings.batch_size
        engine.add_frames(frames[i:end], positions[i:end])
        engine.step(settings.steps_per_arrival)
    engine.refine(settings.final_epochs)
    return engine.estimate(final=True)


@pytest.mark.parametrize("name", SIMULATED)
def test_a_profile_with_a_simulated_scan_reconstructs_it(name, planned):
    """The profile's own scan (shortened to 100 points), detector noise and engine settings.

    Measured (100 points, 2026-12-08): demo |C| 0.9995, amplitude r 0.997, phase r 0.97 (total
    variation 2.1e-4 from the photons); hard-xray-farfield (batch 8, Poisson loss, 9.2e-4)
    |C| 0.9996, amplitude r 0.998, phase r 0.95 (0.9995 and 0.94 at batch 16 with 3e-4); a
    flat object 0.944;
    multislice-demo: scored per slice and as the product of the slices.
    """
    profile = load_profile(name)
    profile = profile.model_copy(update={"sim": profile.sim.model_copy(update={"n_points": 100})})
    sim = build_simulation(profile)
    inst = profile.instrument
    detector = DetectorModel(
        photons_per_frame=profile.sim.photons_per_frame,
        read_noise_counts=simulated_read_noise(profile),
        saturation_counts=inst.saturation_counts,
        rng=np.random.default_rng(profile.sim.seed),
    )
    frames = np.stack([detector.record(diffraction_pattern(sim.truth, p)) for p in sim.positions_m])
    estimate = reconstruct(profile, inst.geometry(), sim.positions_m, frames, planned)
    if estimate.n_slices > 1:  # the product against the layers' product, and each slice
        per_slice, score, flat = score_slices(estimate, sim.truth)
        assert min(c.abs_c for c in per_slice) >= 0.99, per_slice
        assert min(c.phase for c in per_slice) >= 0.9, per_slice
    else:
        score, flat = score_against_truth(estimate, sim.truth)
    assert score.abs_c >= 0.99 and score.abs_c > flat + 0.04, (score, flat)
    assert score.amplitude >= 0.97 and score.phase >= 0.9, score


def test_the_near_field_paper_profile_reconstructs_a_simulated_scan(planned):
    """seifert2021-sim's geometry and engine (distance fitted) on a scan simulated here, since
    the demo's simulated beamline is far-field only: a pinhole probe (60/256 of the frame, 5 mm
    before the sample), 80 points on a Fermat spiral at 60 % overlap, Poisson noise at 1e6
    photons per frame plus the profile's read noise, angular-spectrum propagation.

    Measured (batch 8): |C| 0.9989 (flat 0.945), amplitude r 0.996, phase r 0.92, distance
    3.486 mm (batch 16: 0.9984, 0.995, 0.90, 3.484 mm).
    """
    profile = load_profile("seifert2021-sim")
    geometry = profile.geometry()  # the 128 px crop preprocess.size_px cuts from the camera
    n, dx, wavelength, z = (
        geometry.frame_px,
        geometry.object_pixel_size_m,
        geometry.wavelength_m,
        geometry.distance_m,
    )
    probe = optics.pinhole_probe(n, dx, wavelength, n * 60 / 256 * dx, 5e-3)
    step = step_from_overlap(optics.probe_diameter_m(probe, dx), 0.6)
    positions = fermat_spiral(80, step)
    object_px = 2 * int(np.abs(positions).max() / dx + n / 2 + 4)
    truth = GroundTruth(
        make_object(object_px, (0.3, 1.0), (-1.2, 1.2)), probe, dx, (-(object_px // 2) * dx,) * 2
    )
    detector = DetectorModel(
        1e6, profile.instrument.read_noise_counts, None, np.random.default_rng(0)
    )
    frames = np.stack(
        [
            detector.record(
                np.abs(optics.angular_spectrum(exit_wave(truth, p), dx, wavelength, z)) ** 2
            )
            for p in positions
        ]
    )
    estimate = reconstruct(profile, geometry, positions, frames, planned)
    score, flat = score_against_truth(estimate, truth)
    assert score.abs_c >= 0.99 and score.abs_c > flat + 0.04, (score, flat)
    assert score.amplitude >= 0.98 and score.phase >= 0.85, score
    assert estimate.distance_m == pytest.approx(z, rel=0.02)  # trained, stays near the truth
