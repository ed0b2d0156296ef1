"""What is loaded and how a request runs: the lifecycle and its policies, batching, one checker of
requests, and `ServerCore`, the narrow API both protocols call (docs/ARCHITECTURE.md, "Serving in
layers")."""
