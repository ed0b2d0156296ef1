"""The Open Inference Protocol (KServe v2): inference.GRPCInferenceService and /v2/... on REST."""
