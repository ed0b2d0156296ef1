"""A TensorFlow-Serving-compatible server for the zoo's exported models, its client and config.

Serving reads exported_models/NAME/VERSION/ only: it never imports `zoo` or `training`
(docs/ARCHITECTURE.md, "Serving").
"""

from serving.quiet import import_tensorflow

import_tensorflow()  # first, before anything imports TensorFlow loudly (serving/quiet.py)
