"""Loading a `.keras` file (a run's model.keras, a checkpoint), saying truthfully why it cannot
be: Keras answers "File not found" for any file that is not a whole zip archive, a truncated
copy included."""

from __future__ import annotations

import zipfile
from pathlib import Path


class ModelFileError(ValueError):
    """A .keras file that is missing, cut short or damaged: one line naming it and why."""


def load_model(path: str | Path):
    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} cannot be loaded: "
                             + ("it is not a file" if path.exists() else "it does not exist"))
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} cannot be loaded: it is not a whole .keras file "
                             f"({path.stat().st_size:,} bytes, not a zip archive: truncated or "
                             "damaged)")
    try:
        return keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001 - Keras raises ValueError, OSError, zip errors...
        said = str(e).splitlines()[0][:200] if str(e) else ""
        raise ModelFileError(f"{path} cannot be loaded ({type(e).__name__}: {said})") from None
