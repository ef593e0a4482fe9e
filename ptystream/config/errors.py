"""Validation errors of a profile in words: each names its key, with a suggestion for a
misspelt one."""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ValidationError

from ptystream.config.models import InstrumentSettings, Profile

__all__ = ["ProfileError", "describe_errors"]


class ProfileError(ValueError):
    """A profile could not be found or does not validate; the message names the problem."""


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The settings model holding the key at ``loc`` (``("engine", "pie", "x")`` ->
    PieSettings), or None when ``loc`` does not lead through models."""
    model: type[BaseModel] = Profile
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _accepted_keys(model: type[BaseModel]) -> list[str]:
    keys = list(model.model_fields)
    if model is InstrumentSettings:
        keys.append("wavelength_m")  # read into energy_eV
    return keys


def _unknown_key_hint(loc: tuple[int | str, ...]) -> str:
    """' (unknown key; did you mean ...?)' for an unknown key at ``loc``: the closest key of
    the same section, else the same key in another section."""
    key = str(loc[-1])
    model = _model_at(loc)
    if model is None:
        return " (unknown key)"
    accepted = _accepted_keys(model)
    lowered = {k.lower(): k for k in accepted}
    close = [lowered[key.lower()]] if key.lower() in lowered else []
    close = close or difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
    if close:
        return f" (unknown key; did you mean {close[0]!r}?)"
    sections = [(name, _model_at((name, key))) for name in Profile.model_fields]
    elsewhere = [f"{name}.{key}" for name, m in sections if m and key in _accepted_keys(m)]
    if elsewhere:
        return f" (unknown key here; did you mean {elsewhere[0]}?)"
    return f" (unknown key; accepted: {', '.join(accepted)})"


def describe_errors(exc: ValidationError) -> str:
    """A profile's validation errors in one line, each naming its key (with a suggestion for a
    misspelt one)."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        hint = ""
        if err["type"] == "extra_forbidden":
            hint = _unknown_key_hint(err["loc"])
        elif err["type"] == "missing" and tuple(err["loc"]) == ("instrument", "energy_eV"):
            hint = " (give energy_eV or wavelength_m)"
        problems.append(f"{where}: {err['msg']}{hint}")
    return "; ".join(problems)
