"""Profiles: the pydantic models of an instrument profile, and reading them from YAML.

A profile is parsed once at the edge (a command, a notebook) and passed down explicitly.
``models`` holds the models, ``loading`` the search path, YAML reading and overrides, ``errors``
the messages that name a bad key, ``plausibility`` the checks that the numbers fit the kind of
instrument (unit slips: keV for eV, mm for m). May import pydantic, yaml and
:mod:`ptystream.types`; never TensorFlow, bluesky or tiled.
"""

from ptystream.config.errors import ProfileError, describe_errors
from ptystream.config.loading import (
    available_profiles,
    load_profile,
    profile_search_path,
    resolve_profile_path,
    with_overrides,
)
from ptystream.config.models import (
    HC_EV_M,
    Algorithm,
    EngineSettings,
    IngestSettings,
    InstrumentSettings,
    LossKind,
    PieSettings,
    PreprocessSettings,
    ProbeKind,
    Profile,
    PublishSettings,
    SimSettings,
    SliceRegulariser,
    TrajectoryKind,
)
from ptystream.config.plausibility import (
    Finding,
    Severity,
    check_geometry,
    check_instrument,
    check_profile,
    ensure_plausible,
)

__all__ = [
    "HC_EV_M",
    "Algorithm",
    "EngineSettings",
    "Finding",
    "IngestSettings",
    "InstrumentSettings",
    "LossKind",
    "PieSettings",
    "PreprocessSettings",
    "ProbeKind",
    "Profile",
    "ProfileError",
    "PublishSettings",
    "Severity",
    "SimSettings",
    "SliceRegulariser",
    "TrajectoryKind",
    "available_profiles",
    "check_geometry",
    "check_instrument",
    "check_profile",
    "describe_errors",
    "ensure_plausible",
    "load_profile",
    "profile_search_path",
    "resolve_profile_path",
    "with_overrides",
]
