// Checking an Open Inference Protocol ModelInferRequest against the version's
// "serving_default" signature and decoding its inputs (raw_input_contents or the typed
// contents) into the same Prepared a Predict becomes, with the Python plane's codes and
// messages in its order (serving/protocols/open_inference/grpc_api.py, dataplane.py,
// tensors.py); and the answer, outputs as raw_output_contents. docs/ARCHITECTURE.md, "The
// native data plane". No TensorFlow and no gRPC here: built alone under ASan + UBSan too.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "decode.h"
#include "grpc_service.pb.h"

namespace predictd {

// The v2 datatype of a tensorflow DataType (dataplane's OF_DT), "" for one that has none.
const char* V2Datatype(int dtype);

// model_version as a number (0: "", the latest), as serving/repository/versions.requested
// reads it; false for what the Python plane words (not ASCII digits, beyond int64).
bool InferVersion(const std::string& text, int64_t* version);

// What grpc_api.wire_inputs and requested() refuse before the model is resolved: raw entries
// that do not match the inputs, negative dimensions, unknown datatypes, contents beside raw,
// the classification extension.
Status CheckWire(const inference::ModelInferRequest& request);

// DataPlane.infer after the version is resolved: the signature, the inputs' names, datatypes
// and shapes (InputCheck), the requested outputs, then the decoding (request order; raw
// contents are moved out of `request`). kForward for what only the Python plane words.
Status PrepareInfer(const std::string& model, int64_t version,
                    const std::map<std::string, Signature>& signatures,
                    inference::ModelInferRequest* request, int64_t max_elements,
                    Prepared* out);

// The answer of a run: `predicted`'s outputs (what Run fills for a Predict) moved into raw
// output contents, in the order of `prepared.outputs`.
void EncodeInfer(const Prepared& prepared, const std::string& model, int64_t version,
                 const std::string& id, tensorflow::serving::PredictResponse* predicted,
                 inference::ModelInferResponse* out);

}  // namespace predictd
