"""Finding and reading profiles: the search path, YAML (a repeated key is an error), and
``SECTION.KEY=VALUE`` overrides, each validated by :class:`~ptystream.config.models.Profile` and
checked for implausible numbers (unit slips) by :mod:`ptystream.config.plausibility`."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import ValidationError

from ptystream.config.errors import ProfileError, describe_errors
from ptystream.config.models import Profile
from ptystream.config.plausibility import check_profile, ensure_plausible

__all__ = [
    "available_profiles",
    "load_profile",
    "profile_search_path",
    "resolve_profile_path",
    "with_overrides",
]


def profile_search_path() -> list[Path]:
    """Directories searched for ``<name>.yaml``: ./profiles, then the shipped profiles
    (``ptystream/profiles``: in a checkout a link to its profiles/, in an installed wheel a copy
    of them)."""
    shipped = (Path(__file__).resolve().parents[1] / "profiles").resolve()
    return [Path.cwd() / "profiles", shipped]


def available_profiles() -> dict[str, Path]:
    """Profiles found by name: ``{name: path}`` for every ``<name>.yaml`` on
    :func:`profile_search_path`, sorted by name; a name in an earlier directory hides the same
    name in a later one (as :func:`load_profile` resolves it)."""
    found: dict[str, Path] = {}
    for directory in profile_search_path():
        if directory.is_dir():
            for path in sorted(directory.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """The YAML file :func:`load_profile` reads for ``name_or_path``.

    A value ending in ``.yaml`` or ``.yml`` is a path; anything else is a name looked up on
    :func:`profile_search_path`. Raises :class:`ProfileError` when there is no such file; for
    an unknown name the message lists the known ones (and the closest, if one is close).
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ProfileError(f"profile file {path} does not exist")
        return path
    known = available_profiles()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    searched = ", ".join(dict.fromkeys(str(d.resolve()) for d in profile_search_path()))
    close = difflib.get_close_matches(str(name_or_path), list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    names = ", ".join(known) or "none"
    raise ProfileError(
        f"profile {str(name_or_path)!r} not found{hint}. Known profiles: {names} "
        f"(searched {searched}; or give a path to a .yaml file)"
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (the safe
    loader keeps the last value, silently dropping the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile from a YAML path or a name on :func:`profile_search_path`
    (see :func:`resolve_profile_path`).

    Raises
    ------
    ProfileError
        When the file is missing, is not YAML (or repeats a key), or does not validate. The
        message names the file and each offending key; an unknown key gets the closest
        accepted one as a suggestion. Also when a number is implausible for the instrument
        (an energy in keV given as eV, a distance in mm given as m, ...): the message names
        the key, the value, its unit and the likely slip
        (:func:`~ptystream.config.plausibility.check_profile`; unusual but possible numbers
        are logged as warnings).
    """
    path = resolve_profile_path(name_or_path)
    try:
        with path.open() as stream:  # a stream, so YAML errors name the file
            data = yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path} must be a mapping, got {type(data).__name__}")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"profile {path} is invalid: {describe_errors(exc)}") from exc
    ensure_plausible(profile, source=f"profile {path}", wavelength_given=_gives_wavelength(data))
    return profile


def _gives_wavelength(data: dict) -> bool:
    """Whether the raw profile ``data`` gives ``instrument.wavelength_m`` (so messages name it
    rather than ``energy_eV``)."""
    instrument = data.get("instrument")
    return isinstance(instrument, dict) and "wavelength_m" in instrument


def with_overrides(profile: Profile, assignments: list[str]) -> Profile:
    """``profile`` with ``SECTION.KEY=VALUE`` assignments applied (VALUE read as YAML), e.g.
    ``engine.probe_modes=3``; validated again, so a misspelt key or a bad value is an error
    naming it, and an implausible number a :class:`ProfileError` naming the key, value, unit
    and likely slip (warnings that ``profile`` already had are not logged again)."""
    data = profile.model_dump(mode="json")
    for text in assignments:
        key, sep, value = text.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2:
            raise ValueError(
                f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. engine.probe_modes=3"
            )
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"--set {text!r}: the profile has no section {part!r}")
            node = node[part]
        node[parts[-1]] = yaml.safe_load(value)
    try:
        changed = Profile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"--set: {describe_errors(exc)}") from exc
    ensure_plausible(
        changed,
        source=f"the profile with --set {', '.join(assignments)}",
        wavelength_given=_gives_wavelength(data),
        known=check_profile(profile),
    )
    return changed
