"""Semantic versions for targeting: parsing and precedence as semver.org 2.0.0 defines them.

MAJOR.MINOR.PATCH[-prerelease][+build], with an optional leading 'v'. Numeric identifiers have no
leading zeros, prerelease identifiers are non-empty ASCII alphanumerics and '-', and build metadata
is validated but ignored for precedence (section 10). SemVer's field order is semver precedence
(section 11), so comparing two parsed versions with <, ==, ... orders them as the spec does.
An attribute that is not a version (wrong type, malformed, too long) never compares true.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from operator import eq, ge, gt, le, lt, ne

MAX_VERSION_CHARS = 128  # a longer attribute is not a version; bounds per-request parsing


@dataclass(frozen=True, slots=True, order=True)
class SemVer:
    """A parsed version; its field order is semver precedence (a release sorts after its prereleases)."""

    major: int
    minor: int
    patch: int
    is_release: bool
    # Numeric identifiers sort before alphanumeric ones: (0, number) < (1, text).
    prerelease: tuple[tuple[int, int | str], ...]


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone accepts '²' and Arabic-Indic digits


def _identifier(text: str) -> bool:
    return bool(text) and text.isascii() and all(char.isalnum() or char == "-" for char in text)


@lru_cache(maxsize=4096)  # request versions take few distinct values (app builds), so parse each once
def parse_semver(text: str) -> SemVer | None:
    """Parse MAJOR.MINOR.PATCH[-prerelease][+build], optional leading 'v'; None if it is not one."""
    if len(text) > MAX_VERSION_CHARS:
        return None
    text, plus, build = text.removeprefix("v").partition("+")
    if plus and not all(_identifier(part) for part in build.split(".")):
        return None
    core, dash, pre = text.partition("-")
    numbers = core.split(".")
    if len(numbers) != 3 or not all(_digits(n) and (n == "0" or n[0] != "0") for n in numbers):
        return None
    identifiers: list[tuple[int, int | str]] = []
    for part in pre.split(".") if dash else ():
        if not _identifier(part) or (_digits(part) and part != "0" and part[0] == "0"):
            return None  # semver.org: no empty identifiers, no leading zeros in numeric ones
        identifiers.append((0, int(part)) if _digits(part) else (1, part))
    major, minor, patch = (int(n) for n in numbers)
    return SemVer(major, minor, patch, not dash, tuple(identifiers))


# Comparison name (a targeting operator without its "semver_" prefix) -> the ordering it applies.
# C comparison functions: cheaper on the request path than lambdas.
COMPARISONS: dict[str, Callable[[SemVer, SemVer], bool]] = {
    "eq": eq,
    "neq": ne,
    "gt": gt,
    "gte": ge,
    "lt": lt,
    "lte": le,
}


def version_test(comparison: str, bound: SemVer) -> Callable[[object], bool]:
    """A test of `attribute <comparison> bound`; false for an attribute that is not a version string."""
    order = COMPARISONS[comparison]

    def test(attribute: object) -> bool:
        parsed = parse_semver(attribute) if isinstance(attribute, str) else None
        return parsed is not None and order(parsed, bound)

    return test
