"""The certificate of an exported version (its metadata.json), and the one check of a version
folder against it (docs/ARCHITECTURE.md, "Exported model").

metadata.json is strict JSON (no NaN or Infinity), valid against `metadata.schema.json` (shipped
in this package), and lists every other file of the version with its sha256 and size. `verify`
checks all of that: a file changed, missing or added since export, or a certificate that is not
valid, raises CertificateError naming what is wrong. training.export writes certificates through
`dumps` and `validate`; training.evaluate and the server call `verify` before loading a version.

It lives in serving because serving reads exported versions alone (it never imports training);
training, which writes them, imports it from here.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

FILENAME = "metadata.json"
SCHEMA_PATH = Path(__file__).parents[1] / "metadata.schema.json"  # serving/'s package data
FORMAT = 1
_CHUNK = 1 << 20


class CertificateError(Exception):
    """A version whose certificate is missing where required, invalid, or does not match."""


@functools.cache
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number in strict JSON")


def loads(text: str) -> dict:
    """Parse strict JSON (NaN/Infinity refused) and validate it against the schema."""
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as e:
        raise CertificateError(f"not strict JSON: {e}") from None
    validate(doc)
    return doc


def dumps(doc: dict) -> str:
    """The certificate's text: validated, strict JSON (a NaN anywhere is refused here)."""
    validate(doc)
    try:
        return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as e:
        raise CertificateError(f"not strict JSON: {e}") from None


def validate(doc) -> None:
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CertificateError(f"{where}: {e.message}{more}")


def file_entry(path: Path) -> dict:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def list_files(version_dir: Path) -> dict[str, dict]:
    """Every file under the version (but the certificate itself): relative path -> entry."""
    root = Path(version_dir)
    return {rel: file_entry(root / rel) for rel in _files_under(root)}


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root) != Path(FILENAME))


def read(version_dir: Path) -> dict | None:
    """The version's certificate, validated; None if it has none."""
    path = Path(version_dir) / FILENAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise CertificateError(f"{path}: cannot be read ({e})") from None
    try:
        return loads(text)
    except CertificateError as e:
        raise CertificateError(f"{path}: {e}") from None


def verify(version_dir: Path, required: bool = True) -> dict | None:
    """Check a version folder against its certificate; return the certificate.

    Without a metadata.json: CertificateError if `required`, else None (a version exported by
    another tool)."""
    version_dir = Path(version_dir)
    doc = read(version_dir)
    if doc is None:
        if required:
            raise CertificateError(f"{version_dir} has no {FILENAME} (no certificate)")
        return None
    listed: dict = doc["files"]
    problems = []
    for rel, entry in listed.items():
        path = version_dir / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
            continue
        if path.stat().st_size != entry["bytes"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, certified {entry['bytes']}")
        elif file_entry(path)["sha256"] != entry["sha256"]:
            problems.append(f"{rel} differs from its certified sha256")
    problems += [f"{rel} is not in the certificate"
                 for rel in _files_under(version_dir) if rel not in listed]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CertificateError(f"{version_dir} does not match its certificate: "
                               f"{'; '.join(problems[:3])}{more}")
    return doc
