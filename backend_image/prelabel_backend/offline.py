"""Make ultralytics work with no network: call `configure()` before the first `import ultralytics`.

Without this, a missing weight file costs minutes of download retries and plotting fetches a font.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")


def configure(config_dir: str | None = None) -> Path:
    """Point ultralytics at a writable settings dir with its fonts in place, offline, no auto-install."""
    root = Path(config_dir or os.environ.get("YOLO_CONFIG_DIR") or Path(tempfile.gettempdir()) / "prelabel-ultralytics")
    os.environ["YOLO_CONFIG_DIR"] = str(root)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.setdefault("YOLO_VERBOSE", "false")
    fonts = root / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    source = _bundled_font()
    for name in _FONTS:
        target = fonts / name
        if source is not None and not target.exists():
            shutil.copyfile(source, target)
    return root


def _bundled_font() -> Path | None:
    """matplotlib (an ultralytics dependency) ships DejaVuSans; it stands in for Arial."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - ultralytics always brings matplotlib
        return None
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return path if path.exists() else None
