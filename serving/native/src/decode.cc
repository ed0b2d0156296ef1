#include "decode.h"

#include <malloc.h>

#include <cstring>
#include <set>
#include <sstream>

#include "tensorflow/core/framework/types.pb.h"

namespace predictd {
namespace {

using tensorflow::TensorProto;

Status Invalid(std::string message) { return {kInvalidArgument, std::move(message)}; }

std::string Join(const std::set<std::string>& names) {
  std::string s;
  for (const auto& n : names) {
    if (!s.empty()) s += ",";
    s += n;
  }
  return s;
}

// The element count of a shape, exactly, or -1 when it does not fit (then Python words it).
__int128 Elements(const std::vector<int64_t>& shape) {
  __int128 n = 1;
  for (int64_t d : shape) {
    if (d != 0 && n > (static_cast<__int128>(1) << 100) / d) return -1;
    n *= d;
  }
  return n;
}

std::string ToString(__int128 v) {
  if (v == 0) return "0";
  std::string s;
  bool neg = v < 0;
  if (neg) v = -v;
  while (v > 0) {
    s.insert(s.begin(), static_cast<char>('0' + static_cast<int>(v % 10)));
    v /= 10;
  }
  return neg ? "-" + s : s;
}

// The typed value field of a dtype: its name, and how many values of the dtype it holds.
struct Field {
  const char* name;
  int64_t count;
};

Field ValueField(const TensorProto& t) {
  switch (t.dtype()) {
    case tensorflow::DT_FLOAT: return {"float_val", t.float_val_size()};
    case tensorflow::DT_DOUBLE: return {"double_val", t.double_val_size()};
    case tensorflow::DT_INT32: case tensorflow::DT_UINT8: case tensorflow::DT_INT8:
    case tensorflow::DT_INT16: case tensorflow::DT_UINT16:
      return {"int_val", t.int_val_size()};
    case tensorflow::DT_INT64: return {"int64_val", t.int64_val_size()};
    case tensorflow::DT_UINT32: return {"uint32_val", t.uint32_val_size()};
    case tensorflow::DT_UINT64: return {"uint64_val", t.uint64_val_size()};
    case tensorflow::DT_BOOL: return {"bool_val", t.bool_val_size()};
    case tensorflow::DT_HALF: case tensorflow::DT_BFLOAT16:
      return {"half_val", t.half_val_size()};
    case tensorflow::DT_COMPLEX64: return {"scomplex_val", t.scomplex_val_size()};
    case tensorflow::DT_COMPLEX128: return {"dcomplex_val", t.dcomplex_val_size()};
  }
  return {"", 0};
}

// The first `n` values of the typed field as the dtype's little-endian bytes at `out`: one
// loop per dtype (a memcpy where the field holds the dtype's own width), not a switch per value,
// so a float_val tensor costs about what its tensor_content does (issue 23).
template <typename To, typename Field>
void Narrow(const Field& values, int64_t n, char* out) {
  To* o = reinterpret_cast<To*>(out);  // `out` is a std::string's buffer: aligned for any type
  for (int64_t i = 0; i < n; ++i) o[i] = static_cast<To>(values[i]);
}

void PutValues(const TensorProto& t, int64_t n, char* out) {
  if (n == 0) return;  // an empty field's data() is null, which memcpy may not be given
  const auto copy = [out, n](const auto& field, size_t width) {
    std::memcpy(out, field.data(), static_cast<size_t>(n) * width);
  };
  switch (t.dtype()) {
    case tensorflow::DT_FLOAT: copy(t.float_val(), 4); break;
    case tensorflow::DT_DOUBLE: copy(t.double_val(), 8); break;
    case tensorflow::DT_INT32: copy(t.int_val(), 4); break;
    case tensorflow::DT_UINT8: Narrow<uint8_t>(t.int_val(), n, out); break;
    case tensorflow::DT_INT8: Narrow<int8_t>(t.int_val(), n, out); break;
    case tensorflow::DT_INT16: Narrow<int16_t>(t.int_val(), n, out); break;
    case tensorflow::DT_UINT16: Narrow<uint16_t>(t.int_val(), n, out); break;
    case tensorflow::DT_INT64: copy(t.int64_val(), 8); break;
    case tensorflow::DT_UINT32: copy(t.uint32_val(), 4); break;
    case tensorflow::DT_UINT64: copy(t.uint64_val(), 8); break;
    case tensorflow::DT_BOOL: Narrow<uint8_t>(t.bool_val(), n, out); break;
    case tensorflow::DT_HALF: case tensorflow::DT_BFLOAT16:
      Narrow<uint16_t>(t.half_val(), n, out); break;
    case tensorflow::DT_COMPLEX64: copy(t.scomplex_val(), 8); break;  // (real, imaginary) pairs
    case tensorflow::DT_COMPLEX128: copy(t.dcomplex_val(), 16); break;
  }
}

// tensors.to_ndarray: tensor_content as it is, else the value field (one value fills the
// tensor, none is zeros).
Status Decode(TensorProto* t, int64_t n, const std::vector<int64_t>& shape, Input* in) {
  const size_t size = ElementSize(t->dtype());
  in->bytes = std::make_unique<std::string>();
  if (!t->tensor_content().empty()) {
    if (t->tensor_content().size() != static_cast<size_t>(n) * size) {
      return Invalid("tensor_content holds " + std::to_string(t->tensor_content().size()) +
                     " bytes but shape " + Dims(shape, ", ") + " of " + DtypeName(t->dtype()) +
                     " needs " + std::to_string(static_cast<size_t>(n) * size));
    }
    in->bytes->swap(*t->mutable_tensor_content());
    return {};
  }
  Field f = ValueField(*t);
  int64_t count = f.count;
  bool complex = t->dtype() == tensorflow::DT_COMPLEX64 || t->dtype() == tensorflow::DT_COMPLEX128;
  if (complex) {
    if (count % 2) {
      return Invalid(std::string(f.name) + " holds " +
                     std::to_string(count * (t->dtype() == tensorflow::DT_COMPLEX64 ? 4 : 8)) +
                     " bytes, not a whole number of " + DtypeName(t->dtype()) + " values");
    }
    count /= 2;
  }
  if (count != n && count > 1) {
    return Invalid(std::string(f.name) + " holds " + std::to_string(count) +
                   " values but shape " + Dims(shape, ", ") + " needs " + std::to_string(n));
  }
  in->bytes->assign(static_cast<size_t>(n) * size, '\0');
  char* out = in->bytes->data();
  if (count == n) {
    PutValues(*t, n, out);
  } else if (count == 1 && n > 0) {
    PutValues(*t, 1, out);
    for (int64_t i = 1; i < n; ++i) std::memcpy(out + i * size, out, size);
  }
  return {};
}

}  // namespace

std::string Dims(const std::vector<int64_t>& shape, const char* sep) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += sep;
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

bool InputCheck::Matches(const std::vector<int64_t>& shape, const TensorSpec& spec) {
  bool match = shape.size() == spec.shape.size();
  for (size_t i = 0; match && i < shape.size(); ++i) {
    match = spec.shape[i] == -1 || spec.shape[i] == shape[i];
  }
  return match;
}

Status InputCheck::MismatchError(const std::string& name, const std::vector<int64_t>& shape,
                                 const std::string& expects) {
  return Invalid("input \"" + name + "\" has shape " + Dims(shape, ",") + " but " + expects);
}

Status InputCheck::Count(const std::string& name, const std::vector<int64_t>& shape,
                         const TensorSpec& spec, int64_t* elements) {
  __int128 n = Elements(shape);
  if (n < 0) return {kForward, ""};
  elements_ += n;
  const std::string quoted = "input \"" + name + "\"";
  if (elements_ > max_elements_) {
    return Invalid("the request asks for " + ToString(elements_) + " elements (" + quoted +
                   " has shape " + Dims(shape, ",") + "), more than the " +
                   std::to_string(max_elements_) +
                   " a request may hold (--max_request_elements)");
  }
  if (!spec.shape.empty() && spec.shape[0] == -1) {
    if (batched_ && shape[0] != batch_) {
      return Invalid(quoted + " has batch size " + std::to_string(shape[0]) +
                     " but another input has " + std::to_string(batch_) +
                     "; all inputs must have the same batch size");
    }
    batched_ = true;
    batch_ = shape[0];
  }
  *elements = static_cast<int64_t>(n);
  return {};
}

bool SkipsRun(const Prepared& p) {
  if (p.rows != 0) return false;
  for (const auto& o : p.signature->outputs) {
    if (o.shape.empty() || o.shape[0] != -1) return false;
  }
  return true;
}

void KeepFreedBuffers() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // a buffer below this comes from (and returns to) the heap
  mallopt(M_TRIM_THRESHOLD, 64 << 20);  // the heap is given back only past this much free top
}

size_t ElementSize(int dtype) {
  switch (dtype) {
    case tensorflow::DT_FLOAT: case tensorflow::DT_INT32: case tensorflow::DT_UINT32: return 4;
    case tensorflow::DT_DOUBLE: case tensorflow::DT_INT64: case tensorflow::DT_UINT64:
    case tensorflow::DT_COMPLEX64: return 8;
    case tensorflow::DT_COMPLEX128: return 16;
    case tensorflow::DT_UINT8: case tensorflow::DT_INT8: case tensorflow::DT_BOOL: return 1;
    case tensorflow::DT_INT16: case tensorflow::DT_UINT16: case tensorflow::DT_HALF:
    case tensorflow::DT_BFLOAT16: return 2;
  }
  return 0;
}

std::string DtypeName(int dtype) {
  if (tensorflow::DataType_IsValid(dtype)) {
    return tensorflow::DataType_Name(static_cast<tensorflow::DataType>(dtype));
  }
  return "DataType " + std::to_string(dtype) + " (no such type)";
}

// validation.prepare, in its order: signature, input names, then per input its dtype, shape,
// element count, batch size and values; last the output filter.
Status Prepare(const std::string& model, int64_t version,
               const std::map<std::string, Signature>& signatures,
               tensorflow::serving::PredictRequest* request, int64_t max_elements,
               Prepared* out) {
  std::string name = request->model_spec().signature_name();
  if (name.empty()) name = "serving_default";  // backends.DEFAULT_SIGNATURE
  auto found = signatures.find(name);
  if (found == signatures.end()) {
    std::string names;
    for (const auto& [k, _] : signatures) names += (names.empty() ? "" : ",") + k;
    return {kFailedPrecondition, "Serving signature key \"" + name + "\" not found. Model " +
                                     model + " version " + std::to_string(version) +
                                     " has signatures {" + names + "}."};
  }
  const Signature& sig = found->second;
  if (!sig.native) return {kForward, ""};
  out->signature = &sig;
  std::set<std::string> given, expected;
  for (const auto& [k, _] : request->inputs()) given.insert(k);
  for (const auto& s : sig.inputs) expected.insert(s.alias);
  if (given != expected) {
    std::set<std::string> extra, missing;
    for (const auto& g : given) if (!expected.count(g)) extra.insert(g);
    for (const auto& e : expected) if (!given.count(e)) missing.insert(e);
    return Invalid("input size does not match signature: " + std::to_string(given.size()) +
                   "!=" + std::to_string(expected.size()) + " len({" + Join(given) +
                   "}) != len({" + Join(expected) + "}). Sent extra: {" + Join(extra) +
                   "}. Missing but required: {" + Join(missing) + "}. (" + sig.describe + ")");
  }
  InputCheck check(max_elements);
  auto* inputs = request->mutable_inputs();
  for (const auto& spec : sig.inputs) {
    TensorProto& t = (*inputs)[spec.alias];
    const std::string quoted = "input \"" + spec.alias + "\"";
    if (t.dtype() != spec.dtype) {
      return Invalid(quoted + " has dtype " + DtypeName(t.dtype()) + " but " + sig.describe);
    }
    if (t.tensor_shape().unknown_rank()) return Invalid(quoted + ": tensor has unknown rank");
    std::vector<int64_t> shape;
    for (const auto& d : t.tensor_shape().dim()) shape.push_back(d.size());
    for (int64_t d : shape) {
      if (d < 0) {
        return Invalid(quoted + ": tensor shape " + Dims(shape, ", ") +
                       " has a negative dimension");
      }
    }
    int64_t n = 0;
    Status checked = check.Shape(spec.alias, shape, spec, [&sig] { return sig.describe; }, &n);
    if (!checked.ok()) return checked;
    Input in{&spec, shape, nullptr};
    Status s = Decode(&t, n, shape, &in);
    if (!s.ok()) return Invalid(quoted + ": " + s.message);
    out->inputs.push_back(std::move(in));
  }
  out->rows = out->inputs.empty() || out->inputs[0].shape.empty() ? 1 : out->inputs[0].shape[0];
  if (request->output_filter().empty()) {
    for (const auto& o : sig.outputs) out->outputs.push_back(&o);
    return {};
  }
  std::set<std::string> seen, all;
  for (const auto& o : sig.outputs) all.insert(o.alias);
  for (const auto& alias : request->output_filter()) {
    const TensorSpec* spec = nullptr;
    for (const auto& o : sig.outputs) if (o.alias == alias) spec = &o;
    if (!spec) {
      return Invalid("output tensor alias not found in signature: " + alias +
                     " Outputs expected to be in the set {" + Join(all) + "}.");
    }
    if (!seen.insert(alias).second) return Invalid("duplicate output tensor alias: " + alias);
    out->outputs.push_back(spec);
  }
  return {};
}

}  // namespace predictd
