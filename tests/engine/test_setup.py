"""What an engine is built from: :class:`EngineSetup` made from a profile (no engine is built
here, so no TensorFlow)."""

import numpy as np
import pytest

from ptystream.config import Algorithm, load_profile
from ptystream.engine import EngineSetup
from ptystream.types import Geometry, ScanPlan


@pytest.fixture(scope="module")
def profile():
    demo = load_profile("demo")
    noisy = demo.instrument.model_copy(update={"read_noise_counts": 7.5, "probe_defocus_m": 4e-4})
    return demo.model_copy(update={"instrument": noisy})


def test_from_profile_takes_the_instrument_and_the_engine_settings(profile):
    setup = EngineSetup.from_profile(profile)
    assert setup.geometry == profile.instrument.geometry()
    assert setup.settings == profile.engine
    assert setup.read_noise_counts == 7.5 and setup.probe_defocus_m == 4e-4
    assert setup.plan == ScanPlan() and setup.detector_mask is None
    assert setup.initial_probe is None


def test_from_profile_with_a_scan_files_geometry_plan_mask_and_algorithm(profile):
    geometry = Geometry(9.8e-11, 1.12, 55e-6, 100, propagation="near_field")
    plan = ScanPlan(200, ((-1e-5, 1e-5), (-2e-5, 2e-5)))
    mask = np.ones((100, 100), bool)
    setup = EngineSetup.from_profile(
        profile, geometry=geometry, plan=plan, detector_mask=mask, algorithm="mpie"
    )
    assert setup.geometry == geometry and setup.plan == plan and setup.detector_mask is mask
    assert setup.settings.algorithm == Algorithm.MPIE
    # only the algorithm differs from the profile's settings, which are left as they were
    assert setup.settings.model_copy(update={"algorithm": profile.engine.algorithm}) == (
        profile.engine
    )
    assert profile.engine.algorithm == Algorithm.AD
    with pytest.raises(ValueError, match="'lsq' is not a valid Algorithm"):
        EngineSetup.from_profile(profile, algorithm="lsq")


def test_replace_gives_a_changed_copy(profile):
    setup = EngineSetup.from_profile(profile)
    probe = np.ones((64, 64), np.complex64)
    warm = setup.replace(initial_probe=probe, read_noise_counts=0.0)
    assert warm.initial_probe is probe and warm.read_noise_counts == 0.0
    assert setup.initial_probe is None and setup.read_noise_counts == 7.5
    assert warm.geometry == setup.geometry and warm.settings == setup.settings
    with pytest.raises(TypeError):
        setup.replace(learning_rate=0.1)
