// The request decoding (decode.cc, infer_decode.cc) over malformed and mutated PredictRequests
// and ModelInferRequests, for the sanitizers: `make native-check` builds this with -fsanitize=address,undefined and runs it;
// any report ends it non-zero. No TensorFlow and no gRPC: only what a request goes through
// before a session runs (docs/ARCHITECTURE.md, "The native data plane").
//
//   decode_check [ITERATIONS] [SEED]

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "decode.h"
#include "infer_decode.h"
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
  Signature c;  // every v2 datatype, inputs that must agree on a batch size
  c.name = "v2";
  c.describe = "";
  int v2[] = {tensorflow::DT_BOOL, tensorflow::DT_UINT8, tensorflow::DT_UINT16,
              tensorflow::DT_UINT32, tensorflow::DT_UINT64, tensorflow::DT_INT8,
              tensorflow::DT_INT16, tensorflow::DT_INT32, tensorflow::DT_INT64,
              tensorflow::DT_HALF, tensorflow::DT_FLOAT, tensorflow::DT_DOUBLE};
  i = 0;
  for (int dt : v2) c.inputs.push_back({"in" + std::to_string(i++), "x:0", dt, {-1, 2}});
  c.outputs.push_back({"classes", "y:0", tensorflow::DT_INT64, {-1}});
  sigs[c.name] = c;
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

// A v2 request for one of the signatures: raw contents or typed ones (one input FP16, which
// has none), sometimes an output asked for, a repeated input, the classification parameter.
std::string ValidInfer(std::mt19937_64& rng, const std::map<std::string, Signature>& sigs) {
  inference::ModelInferRequest r;
  r.set_model_name("m");
  r.set_id("id");
  const Signature& sig = sigs.at(rng() % 2 ? "serving_default" : "v2");
  const bool raw = rng() % 2;
  int64_t rows = rng() % 4;
  for (const TensorSpec& spec : sig.inputs) {
    auto* t = r.add_inputs();
    t->set_name(spec.alias);
    t->set_datatype(predictd::V2Datatype(spec.dtype));
    int64_t n = 1;
    for (int64_t d : spec.shape) {
      int64_t size = d == -1 ? rows : d;
      t->add_shape(size);
      n *= size;
    }
    if (raw) {
      r.add_raw_input_contents(std::string(n * predictd::ElementSize(spec.dtype), '\x01'));
      continue;
    }
    auto* c = t->mutable_contents();
    for (int64_t k = 0; k < n; ++k) {
      c->add_bool_contents(k % 2); c->add_int_contents(static_cast<int32_t>(k * 100 - 300));
      c->add_int64_contents(k); c->add_uint_contents(static_cast<uint32_t>(k * 1000));
      c->add_uint64_contents(k); c->add_fp32_contents(k); c->add_fp64_contents(k);
    }
  }
  if (rng() % 4 == 0) r.add_outputs()->set_name(rng() % 2 ? "classes" : "nope");
  if (rng() % 8 == 0) r.add_inputs()->CopyFrom(r.inputs(0));
  if (rng() % 16 == 0) {
    auto* o = r.add_outputs();
    o->set_name("classes");
    (*o->mutable_parameters())["classification"].set_int64_param(1);
  }
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
  long parsed = 0, ok = 0, v2_parsed = 0, v2_ok = 0;
  unsigned long sum = 0;
  auto add = [&sum](const predictd::Prepared& prepared) {
    for (const auto& in : prepared.inputs) {  // every byte TF_NewTensor will be handed
      size_t n = predictd::ElementSize(in.spec->dtype);
      for (int64_t d : in.shape) n *= static_cast<size_t>(d);
      for (size_t k = 0; k < n; ++k) sum += static_cast<unsigned char>(in.bytes->data()[k]);
    }
  };
  // the v2 signatures: "serving_default" is the one a v2 request reaches; "v2" is served
  // under that name by a second model.
  std::map<std::string, Signature> v2_sigs{{"serving_default", sigs.at("v2")}};
  std::map<std::string, Signature> v1_sigs{{"serving_default", sigs.at("serving_default")}};
  for (long i = 0; i < iterations; ++i) {
    std::string infer = ValidInfer(rng, sigs);
    for (int m = static_cast<int>(rng() % 4); m > 0; --m) Mutate(rng, &infer);
    inference::ModelInferRequest v2;
    if (v2.ParseFromString(infer)) {
      ++v2_parsed;
      int64_t version = 0;
      predictd::InferVersion(v2.model_version(), &version);
      predictd::Prepared prepared;
      int64_t limit = rng() % 2 ? 1000 : (int64_t{1} << 40);
      if (predictd::CheckWire(v2).ok() &&
          predictd::PrepareInfer("m", 1, v2.inputs_size() > 1 ? v2_sigs : v1_sigs, &v2, limit,
                                 &prepared).ok()) {
        ++v2_ok;
        add(prepared);
        tensorflow::serving::PredictResponse predicted;  // as Run fills it
        for (const auto* o : prepared.outputs) {
          auto& t = (*predicted.mutable_outputs())[o->alias];
          t.set_dtype(static_cast<tensorflow::DataType>(o->dtype));
          t.mutable_tensor_shape()->add_dim()->set_size(prepared.rows);
          t.set_tensor_content(std::string(prepared.rows * 8, '\x02'));
        }
        inference::ModelInferResponse response;
        predictd::EncodeInfer(prepared, "m", 1, v2.id(), &predicted, &response);
        sum += response.ByteSizeLong();
      }
    }
    std::string bytes = Valid(rng, sigs);
    for (int m = static_cast<int>(rng() % 4); m > 0; --m) Mutate(rng, &bytes);
    tensorflow::serving::PredictRequest request;
    if (!request.ParseFromString(bytes)) continue;
    ++parsed;
    predictd::Prepared prepared;
    int64_t limit = rng() % 2 ? 1000 : (int64_t{1} << 40);
    if (!predictd::Prepare("m", 1, sigs, &request, limit, &prepared).ok()) continue;
    ++ok;
    add(prepared);
  }
  std::printf("decode_check: %ld requests of each kind; Predict: %ld parsed, %ld valid; "
              "ModelInfer: %ld parsed, %ld valid (byte sum %lu)\n", iterations, parsed, ok,
              v2_parsed, v2_ok, sum);
  return 0;
}
