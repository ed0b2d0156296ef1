"""Analysis studies: one module per study, `python -m analysis.NAME` -> reports/NAME/ (PNG + JSON).

Shared code: `analysis.common` (CLI, report writing, progress, training helpers) and
`analysis.hvp` (Hessian-vector products, Lanczos, Hutchinson, stochastic Lanczos quadrature).
"""
