"""Analysis studies: one module per study, `python -m analysis.NAME` -> reports/NAME/ (PNG + JSON).

Shared code: `analysis.common` (CLI, report writing, progress, training helpers) and
`analysis.hvp` (Hessian-vector products, Lanczos, Hutchinson, stochastic Lanczos quadrature).
"""

from serving.quiet import import_tensorflow

import_tensorflow()  # first, before anything imports TensorFlow loudly (serving/quiet.py)
