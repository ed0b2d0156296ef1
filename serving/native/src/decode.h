// Checking a PredictRequest against the signature it names and decoding its inputs into raw
// tensor bytes, with the Python plane's codes and messages (serving/core/validation.py,
// serving/runtime/tensors.py; docs/ARCHITECTURE.md, "The native data plane"). No TensorFlow
// here: this part is built alone under ASan + UBSan and run over malformed requests.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tensorflow_serving/apis/predict.pb.h"

namespace predictd {

struct TensorSpec {
  std::string alias;
  std::string tensor;  // the graph's tensor, "op:index"
  int dtype = 0;       // tensorflow DataType
  std::vector<int64_t> shape;  // -1: any size
};

struct Signature {
  std::string name;
  bool native = true;    // false: a dtype this plane does not decode; such requests go to Python
  std::string describe;  // the Python plane's Signature.describe(), sent by it: one wording
  std::vector<TensorSpec> inputs;   // in the Python plane's order (the order of its checks)
  std::vector<TensorSpec> outputs;
};

// A gRPC status: code 0 is OK. kForward: not for this plane to answer (the Python plane
// answers it, so both planes say the same).
struct Status {
  int code = 0;
  std::string message;
  bool ok() const { return code == 0; }
};
constexpr int kForward = -1;
constexpr int kInvalidArgument = 3;
constexpr int kFailedPrecondition = 9;

struct Input {
  const TensorSpec* spec;
  std::vector<int64_t> shape;
  std::unique_ptr<std::string> bytes;  // little-endian elements, C order
};

struct Prepared {
  const Signature* signature = nullptr;
  std::vector<Input> inputs;
  std::vector<const TensorSpec*> outputs;  // the output filter, or every output
  int64_t rows = 1;
};

// Tells malloc to keep request-sized buffers (up to 32 MiB) for reuse: by default a freed
// 100 KB block at the top of the heap is given back and the next request faults its pages in
// again, which made a 16x28x28 double_val request cost 6x its float_val twin
// (src/decode_bench.cc). Called once at the start of each program that decodes requests.
void KeepFreedBuffers();

// Bytes of one element of the dtypes this plane decodes; 0 for any other.
size_t ElementSize(int dtype);
std::string DtypeName(int dtype);

// Checks `request` (whose tensors' contents are moved out) against `signatures`.
Status Prepare(const std::string& model, int64_t version,
               const std::map<std::string, Signature>& signatures,
               tensorflow::serving::PredictRequest* request, int64_t max_elements,
               Prepared* out);

}  // namespace predictd
