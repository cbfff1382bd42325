"""Settings sections that components bring with them: an algorithm's ``[fedprox]``, a round policy's
``[fedbuff]``. A component registers its section where it is defined; the config reads every
registered section from the TOML, checks it with the section's own dataclass and gives it to the
component that is chosen. So the config lists no component, and a user's own algorithm or policy
brings its settings the same way."""

from __future__ import annotations

from dataclasses import dataclass, is_dataclass


@dataclass(frozen=True)
class Section:
    name: str  # the TOML table, e.g. "fedprox"; read as ``config.fedprox``
    settings: type  # a frozen dataclass with defaults for every field, whose __post_init__ checks them ("fedprox.mu is ...")
    chosen_by: str  # the setting that picks the component, e.g. "server.algorithm": in effect when it equals ``name``


SECTIONS: dict[str, Section] = {}


def register_section(name: str, settings: type, chosen_by: str) -> Section:
    """Register ``[name]``, read into ``settings``, for the component that ``chosen_by = name`` picks."""
    if not (is_dataclass(settings) and isinstance(settings, type)):
        raise TypeError(f"section [{name}]: settings must be a dataclass type, not {settings!r}")
    if not name.isidentifier():
        raise ValueError(f"section name {name!r} must be a plain identifier (it is read as config.{name})")
    old = SECTIONS.get(name)
    same = old is not None and (old.settings.__module__, old.settings.__qualname__) == (settings.__module__, settings.__qualname__)
    if old is not None and not (same and old.chosen_by == chosen_by):  # the same class again (a module reloaded) is fine
        raise ValueError(f"section [{name}] is registered already, by {old.settings.__module__}.{old.settings.__qualname__}")
    SECTIONS[name] = section = Section(name, settings, chosen_by)
    return section
