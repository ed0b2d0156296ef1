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

// What both protocols check of each input in turn, once its name and dtype match
// (validation.InputCheck): its shape against the signature's, the request's elements so far
// against the limit, and one batch size across batched inputs. `expects` words what the
// signature expects, as the protocol does (called only for the message).
class InputCheck {
 public:
  explicit InputCheck(int64_t max_elements) : max_elements_(max_elements) {}
  // kForward when the element count does not fit an exact count (Python words it then).
  template <class Expects>
  Status Shape(const std::string& name, const std::vector<int64_t>& shape,
               const TensorSpec& spec, const Expects& expects, int64_t* elements) {
    if (!Matches(shape, spec)) return MismatchError(name, shape, expects());
    return Count(name, shape, spec, elements);
  }

 private:
  static bool Matches(const std::vector<int64_t>& shape, const TensorSpec& spec);
  static Status MismatchError(const std::string& name, const std::vector<int64_t>& shape,
                              const std::string& expects);
  Status Count(const std::string& name, const std::vector<int64_t>& shape,
               const TensorSpec& spec, int64_t* elements);
  int64_t max_elements_;
  __int128 elements_ = 0;
  bool batched_ = false;
  int64_t batch_ = 0;
};

// [1,784]: how the checks of a shape print it; [1, 784] with sep ", " (Python's list()).
std::string Dims(const std::vector<int64_t>& shape, const char* sep);

// Whether a prepared request is answered without a run (server_core._run): no rows, and every
// output batched.
bool SkipsRun(const Prepared& p);

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
