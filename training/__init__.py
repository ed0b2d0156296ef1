"""Data sources, precision policy, the train CLI, export and evaluation of exports."""

from serving.quiet import import_tensorflow

import_tensorflow()  # first, before anything imports TensorFlow loudly (serving/quiet.py)
