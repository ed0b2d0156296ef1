"""The model repository: what is on disk (version directories, certificates, warmup records,
config files and the config of a folder). Imports nothing else of serving but `serving.quiet`
(docs/ARCHITECTURE.md, "Serving in layers")."""
