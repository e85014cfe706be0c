"""The simulated textile set of the PyPI package ``conformal-clip-data``.

Layout (``conformal_clip_data.textile_simulated_root()`` or a given root)::

    nominal/*.jpg   1000 normal images
    local/*.jpg     500 images with local defects
    global/*.jpg    500 images with global defects

One category ``textile``, no masks. Fixed split rule: the nominal files sorted by name
are split by position, even positions (0, 2, ...) -> normal reference pool (500), odd
positions -> normal test images (500); all local/global images are test anomalies.
"""

from __future__ import annotations

from pathlib import Path

from fsiad.fewshot.data.base import Category, DatasetError, Sample
from fsiad.fewshot.data.common import list_images
from fsiad.fewshot.data.registry import register_dataset, require_dir, select_categories

CATEGORY = "textile"
DEFECTS = ("local", "global")


def textile_root() -> Path:
    """Folder of the installed ``conformal-clip-data`` textile images."""
    try:
        import conformal_clip_data
    except ImportError:
        raise DatasetError(
            "textile: package conformal-clip-data is not installed (pip install conformal-clip-data), "
            "or pass --root to a folder with nominal/, local/, global/"
        ) from None
    return Path(conformal_clip_data.textile_simulated_root())


def load_textile(root: Path | None, categories: list[str] | None = None) -> list[Category]:
    """Load the textile set (``root=None`` = the installed package)."""
    root = textile_root() if root is None else root
    require_dir(root, "textile root")
    select_categories(root, [CATEGORY], categories)
    nominal = list_images(require_dir(root / "nominal", "nominal folder"))
    if len(nominal) < 2:
        raise DatasetError(f"{root / 'nominal'}: need at least 2 nominal images, found {len(nominal)}")
    train = [Sample(p, 0, "good") for p in nominal[0::2]]
    test = [Sample(p, 0, "good") for p in nominal[1::2]]
    for d in DEFECTS:
        test += [Sample(p, 1, d) for p in list_images(require_dir(root / d, f"{d} folder"))]
    return [Category(CATEGORY, train, test, False, root)]


register_dataset("textile", load_textile)
