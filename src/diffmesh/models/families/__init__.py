"""Model families: what each of SD1.x, SD2.x (eps / v) and SDXL needs beyond its file's shapes."""

from __future__ import annotations

from diffmesh.errors import ModelError


def family_spec(name: str):
    """FamilySpec for a family id from `diffmesh.models.detect`."""
    from diffmesh.models.families import sd1, sd2, sdxl

    table = {"sd1": sd1.FAMILY, "sd2": sd2.FAMILY, "sd2v": sd2.FAMILY_V, "sdxl": sdxl.FAMILY,
             "sd2unclip": sd2.FAMILY_UNCLIP}
    try:
        return table[name]
    except KeyError:
        raise ModelError(f"unknown model family {name!r}", where="model handle",
                         fix=f"one of {sorted(table)} (see diffmesh.models.detect)") from None
