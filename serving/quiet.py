"""TensorFlow's start-up lines kept off the terminal unless -v/--verbose asks for them.

TensorFlow's native libraries log through absl before absl is initialised ("All log messages
before absl::InitializeLog()", oneDNN, "failed call to cuInit"), which TF_CPP_MIN_LOG_LEVEL does
not stop. So the first import, and the first look for GPUs, run with file descriptor 2 pointed at
/dev/null. Errors are not lost: an import that fails raises after stderr is restored.

This module imports nothing of ours or of TensorFlow's, so that serving (which never imports
zoo or training) and the packages that do can all call it first: one home for the rule.
"""

from __future__ import annotations

import contextlib
import os
import sys

ENV_VERBOSE = "ZOO_VERBOSE"
VERBOSE_FLAGS = ("-v", "--verbose")


def verbose_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return os.environ.get(ENV_VERBOSE, "") not in ("", "0") or any(
        a in VERBOSE_FLAGS for a in argv)


@contextlib.contextmanager
def silenced_stderr():
    """Point file descriptor 2 at /dev/null for the duration (C++ libraries write there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow() -> None:
    """Import TensorFlow quietly (once, before anything else does), unless verbose."""
    if "tensorflow" in sys.modules:
        return
    if verbose_requested():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with silenced_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # where cuInit fails on a machine without CUDA


def add_verbose_flag(parser) -> None:
    """-v/--verbose on a command line: read by `verbose_requested` before argparse runs."""
    parser.add_argument(*VERBOSE_FLAGS, action="store_true",
                        help="also show TensorFlow's own start-up and log lines")
