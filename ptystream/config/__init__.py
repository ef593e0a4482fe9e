"""Profiles: the pydantic models of an instrument profile, and reading them from YAML.

A profile is parsed once at the edge (a command, a notebook) and passed down explicitly.
``models`` holds the models, ``loading`` the search path, YAML reading and overrides, ``errors``
the messages that name a bad key. May import pydantic, yaml and :mod:`ptystream.types`; never
TensorFlow, bluesky or tiled.
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
    ProbeKind,
    Profile,
    PublishSettings,
    SimSettings,
    SliceRegulariser,
    TrajectoryKind,
)

__all__ = [
    "HC_EV_M",
    "Algorithm",
    "EngineSettings",
    "IngestSettings",
    "InstrumentSettings",
    "LossKind",
    "PieSettings",
    "ProbeKind",
    "Profile",
    "ProfileError",
    "PublishSettings",
    "SimSettings",
    "SliceRegulariser",
    "TrajectoryKind",
    "available_profiles",
    "describe_errors",
    "load_profile",
    "profile_search_path",
    "resolve_profile_path",
    "with_overrides",
]
