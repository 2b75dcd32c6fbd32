"""The architecture names a study may use: timm's, checked without importing timm.

``timm_architectures.txt`` beside this module lists ``timm.list_models()`` of the timm version named
in its first line. It is generated (``python -m jobs.spec.architectures --write``, in an install with
the training stack); a test fails when it drifts from the installed timm, so a client that only
submits knows the same names as the workers that train.
"""

from __future__ import annotations

import difflib
import sys
from functools import cache
from importlib import resources

from jobs.errors import ConfigError

LIST_FILE = "timm_architectures.txt"


@cache
def known_architectures() -> tuple[str, ...]:
    lines = resources.files("jobs.spec").joinpath(LIST_FILE).read_text().splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))


def listed_timm_version() -> str:
    """The timm version the list was generated from (its first line: ``# timm 1.0.31``)."""
    first = resources.files("jobs.spec").joinpath(LIST_FILE).read_text().split("\n", 1)[0]
    return first.removeprefix("# timm ").strip()


def check_architecture(name: str) -> None:
    """Raise with the nearest known names when timm has no architecture called ``name``."""
    known = known_architectures()
    if name not in known:
        near = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"; nearest timm names: {', '.join(near)}" if near else "; see timm.list_models() for the names"
        raise ConfigError(f"unknown architecture {name!r}{hint}")


def render_list() -> str:
    """The list file's text from the installed timm."""
    import timm

    return "\n".join([f"# timm {timm.__version__}", *timm.list_models()]) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m jobs.spec.architectures --write   (regenerates the list from the installed timm)")
    target = resources.files("jobs.spec").joinpath(LIST_FILE)
    with resources.as_file(target) as path:
        path.write_text(render_list())
        print(f"wrote {path}")
