"""Metrics, the access log and its line writer: below the core, which records into them
(docs/ARCHITECTURE.md, "Serving in layers")."""
