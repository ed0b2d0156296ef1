"""Print a TF Serving ModelServerConfig (text proto) serving every model under a base path.

    python -m serving.config exported_models > models.config
    python -m serving.config exported_models --base-path-prefix /models > models.config  # image

Each directory holding at least one numbered version (serving/repository/versions.py) becomes a
`config { ... }` entry with the latest version served (TF Serving's default policy, written out
explicitly). The output is parsed back as ModelServerConfig before it is printed, so it is
always valid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf import text_format

from serving import quiet
from serving.repository import protos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.config", description=__doc__.split("\n")[0])
    quiet.add_verbose_flag(p)
    p.add_argument("base", type=Path, help="model base path (e.g. exported_models)")
    p.add_argument("--base-path-prefix", help="write base_path as PREFIX/NAME (e.g. /models "
                   "inside the serving image) instead of the absolute local path")
    p.add_argument("--num-versions", type=int, default=1, help="latest N versions (default 1)")
    args = p.parse_args(argv)
    if args.num_versions < 1:
        p.error(f"--num-versions must be at least 1, got {args.num_versions}")
    if not args.base.is_dir():
        print(f"error: {args.base} is not a directory (export a model first: "
              "python -m training.train MODEL)", file=sys.stderr)
        return 2
    try:
        config = protos.folder_config(args.base, args.base_path_prefix, args.num_versions,
                                      with_versions_only=True)
    except OSError as e:
        print(f"error: cannot list {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    if not config.model_config_list.config:
        print(f"error: no model under {args.base} has a numbered version directory",
              file=sys.stderr)
        return 2
    text = text_format.MessageToString(config)
    protos.parse_text(text, protos.ModelServerConfig)  # round trip: never print an invalid file
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
