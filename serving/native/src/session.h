// Running a version's session on prepared tensors, every output of the signature back as
// Tensor values (for the batcher, src/batcher.h), and a Predict answer from such outputs
// (docs/ARCHITECTURE.md, "The native data plane").
#pragma once

#include <functional>
#include <vector>

#include "batcher.h"
#include "decode.h"
#include "tf_api.h"

namespace predictd {

// Runs `session` of `graph` on `inputs` (one per signature input, their bytes handed to
// TensorFlow) for `outputs`; when the run succeeds, `take(i, tensor)` sees output i before it
// is freed. Errors in the Python plane's words (server_core._run: "ErrorName: first line").
Status RunGraph(const TfApi& tf, TF_Graph* graph, TF_Session* session,
                std::vector<Input>& inputs, const std::vector<const TensorSpec*>& outputs,
                const std::function<void(size_t, TF_Tensor*)>& take);

// RunGraph for every output of the signature as Tensor values (the batcher's runs): `session` of
// `graph` on `inputs` (one per signature input) for `outputs` (tensor specs);
// fills `results` in the same order. Errors in the Python plane's words (server_core._run:
// "ErrorName: first line of the message").
Status RunSession(const TfApi& tf, TF_Graph* graph, TF_Session* session,
                  std::vector<Input>& inputs, const std::vector<TensorSpec>& outputs,
                  std::vector<Tensor>* results);

// RunOptions{inter_op_thread_pool: -1}: the graph's ops run in the calling thread, not handed to
// the inter-op pool, as the Python plane runs them (serving/runtime/backends.py); the hand-off
// and the pool's spinning were most of a small model's cost. Convolutions still use the intra-op
// pool.
const TF_Buffer* InlineRunOptions();

// TF's error codes as the Python plane's exception names (tf.errors).
const char* TfErrorName(int code);

// The outputs a Predict asked for (`wanted`, pointers into `sig.outputs`) from `all` (every
// output of `sig` in its order), into `response`.
void FillPredict(const Signature& sig, const std::vector<const TensorSpec*>& wanted,
                 std::vector<Tensor>& all, tensorflow::serving::PredictResponse* response);

}  // namespace predictd
