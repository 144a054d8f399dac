"""How artifacts are named: NAME@VERSION+BUILD, spelled and read back here and nowhere else.

Build 1 lives in the plain VERSION directory; later builds in VERSION+BUILD.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import StoreError

VERSION = re.compile(r"\A\d+\.\d+\.\d+\Z")
FORMS = ("NAME, NAME@VERSION (its newest build, e.g. tiny@1.0.0), NAME@VERSION+BUILD (exact, e.g. "
         "tiny@1.0.0+2) or an artifact directory")


@dataclass(frozen=True)
class Ref:
    name: str
    version: str | None  # None: any version (the newest)
    build: int | None  # None: the newest build of the version


def version_dir(version: str, build: int) -> str:
    return version if build == 1 else f"{version}+{build}"


def ref(name: str, version: str, build: int) -> str:
    """The exact reference of a build, as printed everywhere: 'tiny@1.0.0+1' (NAME@VERSION means the newest)."""
    return f"{name}@{version}+{build}"


def parse(text: str) -> Ref:
    """'tiny', 'tiny@1.0.0' or 'tiny@1.0.0+2'; StoreError naming the accepted forms otherwise."""
    name, at, version = text.partition("@")
    version, plus, build = version.partition("+")
    if not name or (at and not VERSION.match(version)) or (plus and not build.isdigit()):
        raise StoreError(f"'{text}' is not an artifact reference; expected {FORMS}")
    return Ref(name, version or None, int(build) if build else (1 if plus else None))
