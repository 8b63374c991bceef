"""Where the real development data lives: `../shared/data` beside the checkout (Kvasir-SEG and
polyp-free mucosa crops), or `$POLYP_SYNTH_DATA`. Tests and the demo read it there; a missing folder
is an error, never a silent skip."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    return Path(os.environ.get("POLYP_SYNTH_DATA", REPO.parent / "shared" / "data"))


def require_shared_data() -> Path:
    """The data folder, or a loud error saying what is missing and where it was looked for."""
    root = shared_data()
    missing = [p for p in ("kvasir-seg/images", "kvasir-seg/masks", "kvasir-seg/splits/train.txt", "normal-mucosa")
               if not (root / p).exists()]
    if missing:
        raise FileNotFoundError(f"real data missing under {root}: {', '.join(missing)} "
                                "(put ../shared/data beside the checkout, or set POLYP_SYNTH_DATA)")
    return root
