"""Built-in ``sealant`` category: procedural top-view photographs of dispensed sealant beads.

Inspection teams check dispensed sealant beads for printing errors, but their images are
private. This package draws a stand-in that a newcomer can run offline at once and that still
means something: a glossy bead dispensed along a path on a brushed/cast metal part, seen from
above under an imperfect light, with the dispensing errors a human inspector would catch at a
glance (gap, thinning, excess, bubble, smear, offset), from obvious to subtle, each with an
exact pixel mask.

One concept a module, in the order an image is made:

* ``scene``: the random normal variation of one part, its plate and holes, the bead's path;
* ``defects``: the six dispensing errors (where, how big) and the mask of what one changed;
* ``render``: materials, the swept bead, shading and sensor noise; :func:`render_part`;
* ``cache``: which images a category holds and their seeds, written once to disk in the MVTec
  AD layout and regenerated only when its ``VERSION`` record changes; :func:`load_sealant`.
* ``line``: the second category, ``sealant_line``: a long part in 2048 x 640 frames, the same
  defects, some of them a few hundred pixels; for tiling; :func:`load_sealant_line`.

Settings that tests or callers change at run time (``SEALANT_VERSION``, ``ensure_sealant``)
are read from :mod:`~anomaly.data.builtin.sealant.cache` (``SEALANT_LINE_VERSION``,
``ensure_sealant_line``: from :mod:`~anomaly.data.builtin.sealant.line`); patch them there,
not here.
"""

from __future__ import annotations

from anomaly.data.builtin.sealant.cache import (
    CATEGORY,
    SEALANT_VERSION,
    VERSION_FILE,
    SealantCounts,
    SealantSpec,
    ensure_sealant,
    generate_sealant,
    image_seed,
    load_sealant,
)
from anomaly.data.builtin.sealant.defects import DEFECT_TYPES, MASK_LEVEL, defect_mask
from anomaly.data.builtin.sealant.line import (
    LINE_CATEGORY,
    LINE_COUNTS,
    SEALANT_LINE_VERSION,
    SealantLineSpec,
    ensure_sealant_line,
    generate_sealant_line,
    load_sealant_line,
)
from anomaly.data.builtin.sealant.render import render_line_part, render_part

__all__ = [
    "CATEGORY",
    "DEFECT_TYPES",
    "LINE_CATEGORY",
    "LINE_COUNTS",
    "MASK_LEVEL",
    "SEALANT_LINE_VERSION",
    "SEALANT_VERSION",
    "VERSION_FILE",
    "SealantCounts",
    "SealantLineSpec",
    "SealantSpec",
    "defect_mask",
    "ensure_sealant",
    "ensure_sealant_line",
    "generate_sealant",
    "generate_sealant_line",
    "image_seed",
    "load_sealant",
    "load_sealant_line",
    "render_line_part",
    "render_part",
]
