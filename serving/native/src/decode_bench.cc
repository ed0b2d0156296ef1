// decode_bench: what the native plane pays to turn a request tensor into the bytes TensorFlow
// runs on, for a 16x28x28 tensor of every dtype it decodes, in its typed value field (float_val,
// int_val, ...) against tensor_content (issue 23's target: typed within 2x of tensor_content).
// Each call parses the serialized PredictRequest, as the server receives it, and runs Prepare.
// Medians of rounds of the thread's CPU time; run by benchmarks/tensor_decode.py.
//
//   decode_bench [ROUNDS] [CALLS]
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "decode.h"

namespace {

using predictd::Signature;
using tensorflow::TensorProto;

constexpr int64_t kShape[] = {16, 28, 28};
constexpr int64_t kCount = 16 * 28 * 28;

double ThreadSeconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// The values benchmarks/tensor_decode.py uses: pixel-like, negatives for signed types (a
// negative int32 is a 10-byte varint), values past 2**63 for uint64.
std::vector<double> Pixels() {
  std::mt19937_64 rng(0);
  std::uniform_real_distribution<double> u(0, 255);
  std::vector<double> x(kCount);
  for (auto& v : x) v = u(rng);
  return x;
}

template <typename T>
void Append(std::string* s, T v) { s->append(reinterpret_cast<const char*>(&v), sizeof v); }

// A float's upper 16 bits: bfloat16's encoding, and for half as good a 16-bit pattern as any
// (both fields carry the same bits; only their varint lengths matter here).
uint16_t Upper16(double v) {
  float f = static_cast<float>(v);
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return static_cast<uint16_t>(b >> 16);
}

// The tensor in both encodings: `content` has tensor_content, `typed` the value field.
void Fill(int dtype, TensorProto* content, TensorProto* typed) {
  const auto x = Pixels();
  std::string raw;
  for (int64_t i = 0; i < kCount; ++i) {
    const double v = x[i];
    switch (dtype) {
      case tensorflow::DT_FLOAT: Append(&raw, static_cast<float>(v)); typed->add_float_val(v); break;
      case tensorflow::DT_DOUBLE: Append(&raw, v); typed->add_double_val(v); break;
      case tensorflow::DT_INT32: {
        int32_t w = static_cast<int32_t>(v - 128); Append(&raw, w); typed->add_int_val(w); break;
      }
      case tensorflow::DT_INT16: {
        int16_t w = static_cast<int16_t>(v - 128); Append(&raw, w); typed->add_int_val(w); break;
      }
      case tensorflow::DT_INT8: {
        int8_t w = static_cast<int8_t>(v - 128); Append(&raw, w); typed->add_int_val(w); break;
      }
      case tensorflow::DT_UINT8: {
        uint8_t w = static_cast<uint8_t>(v); Append(&raw, w); typed->add_int_val(w); break;
      }
      case tensorflow::DT_UINT16: {
        uint16_t w = static_cast<uint16_t>(v); Append(&raw, w); typed->add_int_val(w); break;
      }
      case tensorflow::DT_INT64: {
        int64_t w = static_cast<int64_t>(v - 128); Append(&raw, w); typed->add_int64_val(w); break;
      }
      case tensorflow::DT_UINT32: {
        uint32_t w = static_cast<uint32_t>(v); Append(&raw, w); typed->add_uint32_val(w); break;
      }
      case tensorflow::DT_UINT64: {
        uint64_t w = static_cast<uint64_t>(v) << 56; Append(&raw, w); typed->add_uint64_val(w);
        break;
      }
      case tensorflow::DT_BOOL: {
        bool w = v > 127; Append(&raw, static_cast<uint8_t>(w)); typed->add_bool_val(w); break;
      }
      case tensorflow::DT_HALF: case tensorflow::DT_BFLOAT16: {
        uint16_t w = Upper16(v);
        Append(&raw, w); typed->add_half_val(w); break;
      }
      case tensorflow::DT_COMPLEX64:
        Append(&raw, static_cast<float>(v)); Append(&raw, static_cast<float>(-x[kCount - 1 - i]));
        typed->add_scomplex_val(v); typed->add_scomplex_val(-x[kCount - 1 - i]); break;
      case tensorflow::DT_COMPLEX128:
        Append(&raw, v); Append(&raw, -x[kCount - 1 - i]);
        typed->add_dcomplex_val(v); typed->add_dcomplex_val(-x[kCount - 1 - i]); break;
    }
  }
  for (TensorProto* t : {content, typed}) {
    t->set_dtype(static_cast<tensorflow::DataType>(dtype));
    for (int64_t d : kShape) t->mutable_tensor_shape()->add_dim()->set_size(d);
  }
  content->set_tensor_content(raw);
}

std::string Request(const TensorProto& t) {
  tensorflow::serving::PredictRequest r;
  r.mutable_model_spec()->set_name("m");
  (*r.mutable_inputs())["x"] = t;
  return r.SerializeAsString();
}

// One call as the server makes it: the wire bytes parsed, then checked and decoded. Returns
// the decoded bytes, so that both encodings can be compared.
std::string Decode(const std::string& wire, const std::map<std::string, Signature>& sigs) {
  tensorflow::serving::PredictRequest r;
  if (!r.ParseFromString(wire)) { std::fprintf(stderr, "parse failed\n"); std::exit(1); }
  predictd::Prepared p;
  predictd::Status s = predictd::Prepare("m", 1, sigs, &r, kCount, &p);
  if (!s.ok()) { std::fprintf(stderr, "%s\n", s.message.c_str()); std::exit(1); }
  return *p.inputs[0].bytes;
}

double PerCallMicros(const std::string& wire, const std::map<std::string, Signature>& sigs,
                     int rounds, int calls) {
  Decode(wire, sigs);
  std::vector<double> times;
  for (int r = 0; r < rounds; ++r) {
    double start = ThreadSeconds();
    for (int c = 0; c < calls; ++c) Decode(wire, sigs);
    times.push_back((ThreadSeconds() - start) / calls * 1e6);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  predictd::KeepFreedBuffers();  // as predictd does
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 7;
  const int calls = argc > 2 ? std::atoi(argv[2]) : 200;
  const int dtypes[] = {tensorflow::DT_FLOAT, tensorflow::DT_DOUBLE, tensorflow::DT_INT32,
                        tensorflow::DT_UINT8, tensorflow::DT_INT16, tensorflow::DT_INT8,
                        tensorflow::DT_COMPLEX64, tensorflow::DT_INT64, tensorflow::DT_BOOL,
                        tensorflow::DT_BFLOAT16, tensorflow::DT_UINT16, tensorflow::DT_COMPLEX128,
                        tensorflow::DT_HALF, tensorflow::DT_UINT32, tensorflow::DT_UINT64};
  std::printf("dtype\ttensor_content us\ttyped field us\ttyped/content\n");
  for (int dtype : dtypes) {
    predictd::TensorSpec spec{"x", "x:0", dtype, {-1, 28, 28}};
    std::map<std::string, Signature> sigs{{"serving_default", Signature{"serving_default", true,
                                                                        "", {spec}, {}}}};
    TensorProto content, typed;
    Fill(dtype, &content, &typed);
    const std::string c = Request(content), t = Request(typed);
    if (Decode(c, sigs) != Decode(t, sigs)) {
      std::fprintf(stderr, "%s: the two encodings decode differently\n",
                   predictd::DtypeName(dtype).c_str());
      return 1;
    }
    double cu = PerCallMicros(c, sigs, rounds, calls), tu = PerCallMicros(t, sigs, rounds, calls);
    std::printf("%s\t%.1f\t%.1f\t%.2fx\n", predictd::DtypeName(dtype).c_str(), cu, tu, tu / cu);
  }
  return 0;
}
