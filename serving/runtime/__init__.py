"""The runtime: signatures, the SavedModel and ONNX Runtime backends, TensorProto <-> numpy.
Imports nothing else of serving but `serving.quiet` (docs/ARCHITECTURE.md, "Serving in layers")."""
