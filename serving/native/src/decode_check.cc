// The request decoding (decode.cc) over malformed and mutated PredictRequests, for the
// sanitizers: `make native-check` builds this with -fsanitize=address,undefined and runs it;
// any report ends it non-zero. No TensorFlow and no gRPC: only what a request goes through
// before a session runs (docs/ARCHITECTURE.md, "The native data plane").
//
//   decode_check [ITERATIONS] [SEED]

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "decode.h"
#include "tensorflow/core/framework/types.pb.h"

using predictd::Signature;
using predictd::TensorSpec;

namespace {

std::map<std::string, Signature> Signatures() {
  std::map<std::string, Signature> sigs;
  Signature a;
  a.name = "serving_default";
  a.describe = "signature \"serving_default\" expects inputs {images: DT_FLOAT [-1,28,28]}";
  a.inputs.push_back({"images", "serving_default_images:0", tensorflow::DT_FLOAT, {-1, 28, 28}});
  a.outputs.push_back({"probabilities", "out:0", tensorflow::DT_FLOAT, {-1, 10}});
  a.outputs.push_back({"classes", "out:1", tensorflow::DT_INT64, {-1}});
  sigs[a.name] = a;
  Signature b;  // every value field, and inputs that must agree on a batch size
  b.name = "many";
  b.describe = "signature \"many\" expects inputs {...}";
  int dtypes[] = {tensorflow::DT_INT8, tensorflow::DT_HALF, tensorflow::DT_COMPLEX64,
                  tensorflow::DT_COMPLEX128, tensorflow::DT_BOOL, tensorflow::DT_UINT64,
                  tensorflow::DT_DOUBLE, tensorflow::DT_UINT16, tensorflow::DT_BFLOAT16};
  int i = 0;
  for (int dt : dtypes) {
    b.inputs.push_back({"in" + std::to_string(i++), "x:0", dt, {-1, 3}});
  }
  b.inputs.push_back({"scalar", "s:0", tensorflow::DT_INT32, {}});
  b.outputs.push_back({"y", "y:0", tensorflow::DT_FLOAT, {-1}});
  sigs[b.name] = b;
  return sigs;
}

std::string Valid(std::mt19937_64& rng, const std::map<std::string, Signature>& sigs) {
  tensorflow::serving::PredictRequest r;
  r.mutable_model_spec()->set_name("m");
  bool many = rng() % 2;
  const Signature& sig = sigs.at(many ? "many" : "serving_default");
  if (many) r.mutable_model_spec()->set_signature_name("many");
  int64_t rows = rng() % 4;
  for (const TensorSpec& spec : sig.inputs) {
    auto& t = (*r.mutable_inputs())[spec.alias];
    t.set_dtype(static_cast<tensorflow::DataType>(spec.dtype));
    int64_t n = 1;
    for (size_t d = 0; d < spec.shape.size(); ++d) {
      int64_t size = spec.shape[d] == -1 ? rows : spec.shape[d];
      t.mutable_tensor_shape()->add_dim()->set_size(size);
      n *= size;
    }
    switch (rng() % 3) {
      case 0:
        t.set_tensor_content(std::string(n * predictd::ElementSize(spec.dtype), '\x01'));
        break;
      case 1:  // one value: a fill
        t.add_float_val(1.5f); t.add_int_val(-3); t.add_half_val(7); t.add_scomplex_val(1);
        t.add_scomplex_val(2); t.add_dcomplex_val(1); t.add_dcomplex_val(2); t.add_bool_val(true);
        t.add_uint64_val(9); t.add_double_val(0.5);
        break;
      default:
        for (int64_t k = 0; k < n; ++k) {
          t.add_float_val(k); t.add_int_val(static_cast<int32_t>(k * 1000)); t.add_half_val(k);
          t.add_scomplex_val(k); t.add_scomplex_val(-k); t.add_dcomplex_val(k);
          t.add_dcomplex_val(k); t.add_bool_val(k % 2); t.add_uint64_val(k);
          t.add_double_val(k);
        }
    }
  }
  if (rng() % 4 == 0) r.add_output_filter(rng() % 2 ? "classes" : "nope");
  return r.SerializeAsString();
}

void Mutate(std::mt19937_64& rng, std::string* b) {
  if (b->empty()) return;
  switch (rng() % 5) {
    case 0: b->resize(rng() % b->size()); break;
    case 1: (*b)[rng() % b->size()] ^= static_cast<char>(1 << (rng() % 8)); break;
    case 2: b->insert(rng() % b->size(), 1, static_cast<char>(rng())); break;
    case 3: (*b)[rng() % b->size()] = static_cast<char>(0xff); break;
    default: {  // a 10-byte varint: huge or negative numbers for sizes and dims
      std::string v(9, '\xff');
      v.push_back('\x01');
      b->insert(rng() % b->size(), v);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = argc > 1 ? std::atol(argv[1]) : 20000;
  std::mt19937_64 rng(argc > 2 ? std::atoll(argv[2]) : 0);
  google::protobuf::SetLogHandler(nullptr);  // the invalid UTF-8 it meets is expected
  auto sigs = Signatures();
  long parsed = 0, ok = 0;
  unsigned long sum = 0;
  for (long i = 0; i < iterations; ++i) {
    std::string bytes = Valid(rng, sigs);
    for (int m = static_cast<int>(rng() % 4); m > 0; --m) Mutate(rng, &bytes);
    tensorflow::serving::PredictRequest request;
    if (!request.ParseFromString(bytes)) continue;
    ++parsed;
    predictd::Prepared prepared;
    int64_t limit = rng() % 2 ? 1000 : (int64_t{1} << 40);
    if (!predictd::Prepare("m", 1, sigs, &request, limit, &prepared).ok()) continue;
    ++ok;
    for (const auto& in : prepared.inputs) {  // every byte TF_NewTensor will be handed
      size_t n = predictd::ElementSize(in.spec->dtype);
      for (int64_t d : in.shape) n *= static_cast<size_t>(d);
      for (size_t k = 0; k < n; ++k) sum += static_cast<unsigned char>(in.bytes->data()[k]);
    }
  }
  std::printf("decode_check: %ld requests, %ld parsed, %ld valid (byte sum %lu)\n", iterations,
              parsed, ok, sum);
  return 0;
}
