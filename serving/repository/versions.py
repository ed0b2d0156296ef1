"""Numbered version directories: the one rule for which names under a model's base path are
versions, used by the exporter, the server, serving.config, the benchmarks and the Makefile.

A version name is ASCII decimal digits without leading zeros naming 1 .. 2**63-1 (TF Serving's
versions are int64): `1`, `42`. Every other name is not a version. Hidden names (`.tmp-...`,
an export in progress) and names that do not look like a number (`abc`, `variables`) are passed
over in silence; a name that looks like a number but is no version (`0`, `007`, `+7`, ` 7`,
`1_0`, `²`, `٣`, `99999999999999999999`) is reported by `why_not`, so that a server can warn
about it once.

Leading zeros: TF Serving (safe_strto64) reads `007` as version 7, and `-3`, `+7` and ` 7` as
numbers too, warning when two names give one number. Here one version has exactly one name,
`str(version)`, which is what the exporter writes and what everything else joins to the base
path; `007` is refused with a warning rather than served under a number its name does not show.

    python serving/repository/versions.py latest DIR         the latest version (exit 1: none)
    python serving/repository/versions.py latest --path DIR  ... as DIR/VERSION
    python serving/repository/versions.py list DIR           every version, oldest first

(Run as a file, this module imports only the standard library;
`python -m serving.repository.versions` works too, but the `serving` package imports TensorFlow
first, 3 s.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

MAX_VERSION = 2**63 - 1  # int64, the type of a version in TF Serving's protos


class NoVersionLeft(ValueError):
    """The base path already holds version 2**63-1: there is no next number."""


def parse(name: str) -> int | None:
    """The version a directory name stands for, or None if it is not a version name."""
    if not (name.isascii() and name.isdigit()) or name[0] == "0":
        return None
    version = int(name)
    return version if version <= MAX_VERSION else None


class NotANumber(ValueError):
    """A request's version is not ASCII decimal digits."""


def requested(text: str) -> int:
    """The version a request's version string names (ASCII decimal digits, leading zeros
    allowed as TF Serving's REST parses them, at most MAX_VERSION); NotANumber, or ValueError
    when it is beyond MAX_VERSION. Each protocol words the refusal."""
    if not (text.isascii() and text.isdigit()):
        raise NotANumber(text)
    version = int(text)
    if version > MAX_VERSION:
        raise ValueError(f"{text} is beyond {MAX_VERSION}")
    return version


def why_not(name: str) -> str | None:
    """Why a name that looks like a number is not a version (None: it is one, or it does not
    look like a number at all, like `abc` or a hidden `.tmp-...`)."""
    if parse(name) is not None or name.startswith("."):
        return None
    try:
        number = int(name)  # what a reader (or Python) would take for a number: ' 7', '+7', '٣'
    except ValueError:
        if not name.isnumeric():  # '²', '½': numeric characters int() refuses
            return None
        return "not ASCII decimal digits"
    if not name.isascii():
        return "not ASCII decimal digits"
    if not name.isdigit():
        return "not plain decimal digits (a sign, space or underscore)"
    if number == 0:
        return "versions start at 1"
    if number > MAX_VERSION:
        return "beyond the largest version, 2**63-1 (int64)"
    return "leading zeros (the version's name is " + str(number) + ")"


@dataclasses.dataclass
class Listing:
    versions: dict[int, Path]   # version -> its directory
    ignored: dict[str, str]     # name that looks like a number but is no version -> why


def scan(base: Path) -> Listing:
    """The version directories under `base`. Raises OSError if `base` cannot be listed (missing,
    not a directory, no permission, out of file descriptors): an empty answer would say that
    every version is gone, which the caller must not conclude from a failed listing."""
    versions, ignored = {}, {}
    with os.scandir(base) as entries:
        for entry in entries:
            version = parse(entry.name)
            if version is not None:
                if entry.is_dir():
                    versions[version] = Path(base) / entry.name
            elif (reason := why_not(entry.name)) is not None:
                ignored[entry.name] = reason
    return Listing(versions, ignored)


def latest(base: Path) -> int | None:
    """The highest version under `base`, or None if there is none. OSError as `scan`."""
    return max(scan(base).versions, default=None)


def next_version(base: Path) -> int:
    """The number a new export takes: one above every name that is a version, directories and
    files alike (a file named `4` would make the rename to `4` fail)."""
    taken = [v for v in map(parse, os.listdir(base)) if v is not None]
    version = max(taken, default=0) + 1
    if version > MAX_VERSION:
        raise NoVersionLeft(f"{base} already holds version {MAX_VERSION}, the largest there is")
    return version


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python serving/repository/versions.py",
                                description="Version directories under a model's base path.")
    sub = p.add_subparsers(dest="command", required=True)
    lat = sub.add_parser("latest", help="the latest version (exit 1 if there is none)")
    lat.add_argument("--path", action="store_true", help="print BASE/VERSION, not VERSION")
    lat.add_argument("base", type=Path)
    sub.add_parser("list", help="every version, oldest first").add_argument("base", type=Path)
    args = p.parse_args(argv)
    try:
        found = scan(args.base).versions
    except OSError as e:
        print(f"error: cannot list {args.base}: {e.strerror or e}", file=sys.stderr)
        return 2
    if args.command == "list":
        for v in sorted(found):
            print(v)
        return 0
    if not found:
        print(f"{args.base} holds no version directory (1, 2, ...)", file=sys.stderr)
        return 1
    print(found[max(found)] if args.path else max(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
