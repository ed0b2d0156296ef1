"""The two protocols over one core: `tf_serving` and `open_inference`, each a data plane with
its gRPC servicers and REST handlers; neither imports the other (docs/ARCHITECTURE.md, "Serving in
layers")."""
