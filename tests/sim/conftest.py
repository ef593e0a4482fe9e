"""Fixtures of the simulation tests: the demo profile and its ground truth."""

import pytest


@pytest.fixture(scope="module")
def profile():
    from ptystream.config import load_profile

    return load_profile("demo")


@pytest.fixture(scope="module")
def truth(profile):
    """The demo profile's simulated ground truth (object, probe, grid)."""
    from ptystream.sim.sample import make_ground_truth

    return make_ground_truth(profile.sim, profile.instrument.geometry())
