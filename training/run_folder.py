"""The run folder (docs/ARCHITECTURE.md, "Training runs"): the names of its files, where a new
one goes, the checks of a destination before anything is written, its one-writer lock, and the
temporaries an interrupted write leaves in it."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from training import data
from training.cli_types import UsageError

DEFAULT_RUNS = Path("runs")
STATE = "state.json"
METRICS = "metrics.jsonl"


def new_run_dir(model: str, seed: int, root: Path = DEFAULT_RUNS) -> Path:
    """runs/MODEL/TIME-sSEED, created here and now: two runs started in the same second get
    -2, -3, ... (mkdir is atomic), so neither can write into the other's folder."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / model / f"{stamp}-s{seed}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UsageError(f"could not create a new run directory next to {base}")


def fresh_folder(run_dir: Path) -> bool:
    """Missing, empty, or holding only the logs/ the launcher writes its workers' output to."""
    if not run_dir.exists():
        return True
    for p in run_dir.iterdir():
        if p.name != "logs" or not p.is_dir() or any(
                not q.name.startswith("worker-") for q in p.iterdir()):
            return False
    return True


def check_writable(flag: str, path: Path) -> None:
    """Write a temporary file where `path` is (creating missing folders, removed again): the one
    test that also holds for root, whom permission bits (os.access) do not stop."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    created = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path} cannot be written ({e.strerror})") from None
    finally:
        for d in reversed(created):
            d.rmdir()


def check_destinations(run_dir: Path | None, export_dir: Path | None) -> None:
    """Refuse, before any training, a destination that cannot be written or that would confuse
    a server: a run folder inside the export base path would look like a model version."""
    for flag, path in (("--run-dir", run_dir), ("--export-dir", export_dir)):
        if path is None:
            continue
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag} {path} is a file, not a directory")
        check_writable(flag, path)
    if run_dir is not None and export_dir is not None:
        run, base = run_dir.resolve(), export_dir.resolve()
        if run == base or base in run.parents:
            raise UsageError(f"--run-dir {run_dir} is inside the export base path {export_dir}: "
                             "a server would take it for a model version; put runs elsewhere")


def resume_command(run_dir: Path, workers: int) -> str:
    return (f"python -m training.train --resume {run_dir}"
            + (f" --workers {workers}" if workers > 1 else ""))


def published_export(run_dir: Path, export_dir: Path | None) -> dict | None:
    """The summary of a finished run whose export under `export_dir` was published, else None:
    resuming it has nothing left to do. The version's metadata.json names this run, or, for a
    copy of a finished run, the run its summary.json names, and model.keras is still the file
    that summary recorded (model_sha256): the copy's model is already that version."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        version = Path(summary["export"])
        meta = json.loads((version / "metadata.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if export_dir is None or version.parent.parent.resolve() != Path(export_dir).resolve():
        return None
    ran = meta.get("training", {}).get("run_dir")
    if not ran:
        return None
    if Path(ran).resolve() == Path(run_dir).resolve():
        return summary
    model = Path(run_dir) / "model.keras"
    copied = (summary.get("run_dir") == ran and summary.get("model_sha256") and model.is_file()
              and data.sha256_file(model) == summary["model_sha256"])
    return summary if copied else None


class RunBusyError(RuntimeError):
    """Another live process writes this run folder: one line naming it, exit status 2."""


def hold_run(run_dir: Path) -> int:
    """Take the run folder's writer lock (an flock on the folder itself, held until the process
    exits or closes the returned descriptor): one writer per run folder. The kernel drops it
    however the holder dies, so a stale lock cannot exist, and no lock file is left behind."""
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_holder(fd)
        os.close(fd)
        raise RunBusyError(
            f"{run_dir} is being written by process {holder or '(unknown)'}, which holds its "
            "lock: wait for it to finish, or stop it and then --resume") from None
    return fd


def check_run_free(run_dir: Path) -> None:
    """Refuse a run folder another process writes (taking and releasing its lock)."""
    os.close(hold_run(run_dir))


def lock_holder(fd: int) -> int | None:
    """The pid the kernel lists (/proc/locks) as holding the flock on the file behind `fd`."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "->" not in fields and len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode:
            return int(fields[4])
    return None


TEMPORARIES = ("checkpoints/.*.tmp.keras", ".*.tmp.keras", f".{METRICS}.tmp", ".*.json.tmp*",
               "checkpoints/*_temp*")


def sweep_temporaries(run_dir: Path) -> list[str]:
    """Delete what writes interrupted by a kill or ^C left (the caller holds the run's lock,
    so no live writer owns them): checkpoint, model and metrics temporaries."""
    swept = []
    for pattern in TEMPORARIES:
        for path in Path(run_dir).glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            swept.append(str(path.relative_to(run_dir)))
    return swept
