"""Analysis studies: one module per study, `python -m analysis.NAME` -> reports/NAME/ (PNG + JSON).

Shared code, in layers (docs/ARCHITECTURE.md, "Analysis: what imports what"): `analysis.cli`
(the studies' flags, `run`), `analysis.training_runs` (train_config, fit), `analysis.study_files`
(a study's report directory, progress, its JSON), `analysis.measures` (float32 evaluation, PCA,
correlation), `analysis.plotting` (the mean-and-spread band) and `analysis.hvp` (Hessian-vector
products, Lanczos, Hutchinson, stochastic Lanczos quadrature).
"""

from serving.quiet import import_tensorflow

import_tensorflow()  # first, before anything imports TensorFlow loudly (serving/quiet.py)
