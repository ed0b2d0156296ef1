"""Side-by-side measurements, each printing ratios against a baseline from the same run."""

from serving.quiet import import_tensorflow

import_tensorflow()  # first, before anything imports TensorFlow loudly (serving/quiet.py)
