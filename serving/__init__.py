"""A TensorFlow-Serving-compatible server for the zoo's exported models, its client and config.

Serving reads exported_models/NAME/VERSION/ only: it never imports `zoo` or `training`
(DESIGN.md, "Serving").
"""
