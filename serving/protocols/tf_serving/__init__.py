"""TensorFlow Serving's API: PredictionService and ModelService on gRPC, /v1/models/... on REST."""
