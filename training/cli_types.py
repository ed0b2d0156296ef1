"""argparse types for the numeric flags of every CLI of training and analysis: a bad value is
refused by argparse with what was expected, before anything runs (serving's CLIs, which never
import training, check their few flags themselves)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

# What NumPy's legacy seeding (keras.utils.set_random_seed) and TensorFlow accept.
MAX_SEED = 2**32 - 1


def integer(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [least, most] (no upper bound when most is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least or (most is not None and value > most):
            bounds = (f"between {least} and {most}" if most is not None
                      else f"at least {least}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def real(least: float | None = None, above: float | None = None,
         most: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number >= least (or > above), <= most when given."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if least is not None and value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least:g}, got {value:g}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be greater than {above:g}, got {value:g}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most:g}, got {value:g}")
        return value

    return parse


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (what is wrong and where --help is), not
    the whole usage block; exit status 2 as argparse's."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# The numeric flags of every study: counts, sizes and steps are positive; seeds are what NumPy
# and TensorFlow accept; rates and scales are positive and finite.
seed_value = integer(0, MAX_SEED)
positive_int = integer(1)
non_negative_int = integer(0)
positive_float = real(above=0.0)
non_negative_float = real(least=0.0)
fraction = real(least=0.0, most=1.0)
