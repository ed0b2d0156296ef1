"""Why Classify, Regress and MultiInference answer UNIMPLEMENTED, on gRPC and REST alike."""

UNIMPLEMENTED = {
    "classify": "Classify needs a signature with method tensorflow/serving/classify taking "
                "serialized tf.Example protos; zoo models export only predict signatures on "
                "float tensors. Use Predict (:predict), which returns probabilities and classes.",
    "regress": "Regress needs a signature with method tensorflow/serving/regress taking "
               "serialized tf.Example protos; zoo models export only predict signatures on "
               "float tensors. Use Predict (:predict), which returns y.",
    "multi_inference": "MultiInference combines Classify and Regress signatures on tf.Example "
                       "input; zoo models export only predict signatures. Use Predict.",
}
