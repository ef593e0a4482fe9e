"""What ``ptystream profiles list|show|validate`` does: find, summarise, resolve and check
instrument profiles.

A profile is a YAML file validated by :class:`ptystream.config.Profile`; this module only reads
them (through :func:`ptystream.config.load_profile`) and formats what it finds. The command-line
wiring is in :mod:`ptystream.commands.cli`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ptystream.config import (
    Profile,
    ProfileError,
    available_profiles,
    load_profile,
    resolve_profile_path,
)
from ptystream.types import NEAR_FIELD

__all__ = [
    "ProfileSummary",
    "list_profiles",
    "resolved_yaml",
    "run_command",
    "summary_table",
    "validate",
]


@dataclass(frozen=True)
class ProfileSummary:
    """One profile found by name.

    Attributes
    ----------
    name : the name to pass to ``--profile`` (the file's stem).
    path : the YAML file.
    profile : the validated profile, or None when it does not validate.
    error : why it does not validate (the :class:`~ptystream.config.ProfileError` message).
    """

    name: str
    path: Path
    profile: Profile | None
    error: str | None = None


def list_profiles() -> list[ProfileSummary]:
    """Every profile found by name (:func:`ptystream.config.available_profiles`), validated."""
    summaries = []
    for name, path in available_profiles().items():
        try:
            summaries.append(ProfileSummary(name, path, load_profile(path)))
        except ProfileError as exc:
            summaries.append(ProfileSummary(name, path, None, str(exc)))
    return summaries


def _length(value_m: float) -> str:
    """A length in metres with an SI prefix and 4 significant digits: ``34.95 mm``."""
    for unit, scale in (("m", 1.0), ("mm", 1e-3), ("µm", 1e-6), ("nm", 1e-9)):
        if abs(value_m) >= scale:
            return f"{value_m / scale:.4g} {unit}"
    return f"{value_m / 1e-12:.4g} pm"


def _radiation(profile: Profile) -> str:
    """Photon energy and wavelength, energy first for X-rays: ``8 keV (155 pm)``."""
    inst = profile.instrument
    wavelength = _length(inst.wavelength_m)
    if inst.energy_eV >= 100:
        return f"{inst.energy_eV / 1000:.4g} keV ({wavelength})"
    return f"{wavelength} ({inst.energy_eV:.3g} eV)"


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is under it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _row(summary: ProfileSummary) -> list[str]:
    path = _display_path(summary.path)
    profile = summary.profile
    if profile is None:
        invalid = f"INVALID (ptystream profiles validate {path})"
        return [summary.name, invalid, "-", "-", "-", "-", path]
    inst = profile.instrument
    distance = _length(inst.distance_m)
    if inst.propagation == NEAR_FIELD and inst.focus_to_sample_m is not None:
        distance += f" (focus {_length(inst.focus_to_sample_m)})"
    return [
        summary.name,
        profile.description or "-",
        inst.propagation,
        _radiation(profile),
        distance,
        _length(inst.detector_pixel_size_m),
        path,
    ]


def summary_table(summaries: Sequence[ProfileSummary]) -> str:
    """An aligned table, one line per profile: name, description, propagation, energy and
    wavelength, sample-detector distance, detector pixel, file."""
    header = ["NAME", "DESCRIPTION", "PROPAGATION", "ENERGY (WAVELENGTH)", "DISTANCE", "PIXEL"]
    rows = [[*header, "FILE"], *(_row(s) for s in summaries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


class _Dumper(yaml.SafeDumper):
    """Block-style mappings with flow-style lists: ``amplitude_range: [0.3, 1.0]``."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def resolved_yaml(profile: Profile, source: Path | None = None) -> str:
    """``profile`` as YAML with every field, defaults filled in, in the order of the model.

    The wavelength is written next to the photon energy (the two agree, so the result is a
    valid profile again). ``source`` is named in a heading comment.
    """
    data = profile.model_dump(mode="json")
    instrument = {}
    for key, value in data["instrument"].items():
        instrument[key] = value
        if key == "energy_eV":
            instrument["wavelength_m"] = profile.instrument.wavelength_m
    data["instrument"] = instrument
    where = f" from {source}" if source is not None else ""
    heading = (
        f"# Profile {profile.name!r} as resolved{where}: every field, defaults filled in.\n"
        "# energy_eV and wavelength_m are one quantity; a profile gives either.\n"
    )
    return heading + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def validate(targets: Sequence[str | Path]) -> list[tuple[str, Profile | None, str | None]]:
    """Validate each target (a YAML path or a profile name): ``(target, profile, error)``, with
    exactly one of ``profile`` and ``error`` set; the error names the file and each bad key."""
    results: list[tuple[str, Profile | None, str | None]] = []
    for target in targets:
        try:
            results.append((str(target), load_profile(target), None))
        except ProfileError as exc:
            results.append((str(target), None, str(exc)))
    return results


def run_command(
    action: str,
    targets: Sequence[str],
    *,
    out: Callable[[str], None] = print,
    err: Callable[[str], None] = print,
) -> int:
    """Run ``ptystream profiles ACTION [TARGET...]`` and return its exit status.

    - ``list``: the table of :func:`summary_table`; 1 if any profile found does not validate.
    - ``show NAME|FILE``: :func:`resolved_yaml`; an unknown name or invalid file raises
      :class:`~ptystream.config.ProfileError` (the message lists the known names).
    - ``validate FILE...``: one line per target (errors through ``err``); 0 if all are valid,
      else 1.
    """
    if action == "list":
        summaries = list_profiles()
        out(summary_table(summaries))
        for summary in summaries:
            if summary.error is not None:
                err(f"ptystream: {summary.error}")
        return 0 if all(s.error is None for s in summaries) else 1
    if action == "show":
        (target,) = targets
        source = resolve_profile_path(target)
        out(resolved_yaml(load_profile(source), source).rstrip("\n"))
        return 0
    if action == "validate":
        failed = 0
        for target, profile, error in validate(targets):
            if profile is not None:
                out(f"{target}: ok (profile {profile.name!r})")
            else:
                failed += 1
                err(f"ptystream: {error}")
        if failed:
            err(f"ptystream: {failed} of {len(targets)} profile(s) invalid")
        return 1 if failed else 0
    raise ValueError(f"unknown profiles action {action!r}: list, show or validate")
