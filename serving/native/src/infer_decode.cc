#include "infer_decode.h"

#include <cstring>
#include <limits>
#include <set>

#include "tensorflow/core/framework/types.pb.h"

namespace predictd {
namespace {

using inference::ModelInferRequest;

Status Invalid(std::string message) { return {kInvalidArgument, std::move(message)}; }

// v2_tensors.NUMPY's datatypes, in its order (the order its refusal lists them).
const char* const kDatatypes[] = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8",
                                  "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"};

bool Known(const std::string& datatype) {
  for (const char* d : kDatatypes) if (datatype == d) return true;
  return false;
}

// Python's repr() of a str, for ASCII; false for any other (the Python plane words it).
bool PyRepr(const std::string& s, std::string* out) {
  const char quote = s.find('\'') != std::string::npos && s.find('"') == std::string::npos
                         ? '"' : '\'';
  *out = quote;
  for (unsigned char c : s) {
    if (c >= 0x80) return false;
    if (c == '\\' || c == static_cast<unsigned char>(quote)) {
      *out += '\\';
      *out += static_cast<char>(c);
    } else if (c == '\t') {
      *out += "\\t";
    } else if (c == '\n') {
      *out += "\\n";
    } else if (c == '\r') {
      *out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      static const char hex[] = "0123456789abcdef";
      *out += "\\x";
      *out += hex[c >> 4];
      *out += hex[c & 15];
    } else {
      *out += static_cast<char>(c);
    }
  }
  *out += quote;
  return true;
}

std::vector<int64_t> ShapeOf(const ModelInferRequest::InferInputTensor& t) {
  return std::vector<int64_t>(t.shape().begin(), t.shape().end());
}

// v2_tensors.describe: "FP32 [1,28,28]".
std::string Describe(const std::string& datatype, const std::vector<int64_t>& shape) {
  return datatype + " " + Dims(shape, ",");
}

// The typed contents field of a datatype (v2_tensors.CONTENTS_FIELD), "" for FP16.
const char* ContentsField(const std::string& d) {
  if (d == "BOOL") return "bool_contents";
  if (d == "INT8" || d == "INT16" || d == "INT32") return "int_contents";
  if (d == "INT64") return "int64_contents";
  if (d == "UINT8" || d == "UINT16" || d == "UINT32") return "uint_contents";
  if (d == "UINT64") return "uint64_contents";
  if (d == "FP32") return "fp32_contents";
  if (d == "FP64") return "fp64_contents";
  return "";
}

// The values of a typed field as `T`, little-endian; false if one does not fit `T` (numpy
// raises OverflowError there, which the Python plane answers).
template <class T, class Repeated>
bool Narrow(const Repeated& values, std::string* out) {
  out->resize(values.size() * sizeof(T));
  char* p = out->data();
  for (const auto v : values) {
    if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) return false;
    T t = static_cast<T>(v);
    std::memcpy(p, &t, sizeof t);
    p += sizeof t;
  }
  return true;
}

int64_t ContentsCount(const inference::InferTensorContents& c, const std::string& d) {
  const std::string field = ContentsField(d);
  if (field == "bool_contents") return c.bool_contents_size();
  if (field == "int_contents") return c.int_contents_size();
  if (field == "int64_contents") return c.int64_contents_size();
  if (field == "uint_contents") return c.uint_contents_size();
  if (field == "uint64_contents") return c.uint64_contents_size();
  if (field == "fp32_contents") return c.fp32_contents_size();
  return c.fp64_contents_size();
}

// tensors.from_contents after its count check: np.asarray(values, dtype).
bool FromContents(const inference::InferTensorContents& c, const std::string& d,
                  std::string* out) {
  if (d == "BOOL") {
    out->resize(c.bool_contents_size());
    for (int i = 0; i < c.bool_contents_size(); ++i) (*out)[i] = c.bool_contents(i) ? 1 : 0;
    return true;
  }
  if (d == "INT8") return Narrow<int8_t>(c.int_contents(), out);
  if (d == "INT16") return Narrow<int16_t>(c.int_contents(), out);
  if (d == "INT32") return Narrow<int32_t>(c.int_contents(), out);
  if (d == "INT64") return Narrow<int64_t>(c.int64_contents(), out);
  if (d == "UINT8") return Narrow<uint8_t>(c.uint_contents(), out);
  if (d == "UINT16") return Narrow<uint16_t>(c.uint_contents(), out);
  if (d == "UINT32") return Narrow<uint32_t>(c.uint_contents(), out);
  if (d == "UINT64") return Narrow<uint64_t>(c.uint64_contents(), out);
  if (d == "FP32") {
    out->assign(reinterpret_cast<const char*>(c.fp32_contents().data()),
                c.fp32_contents_size() * sizeof(float));
    return true;
  }
  out->assign(reinterpret_cast<const char*>(c.fp64_contents().data()),
              c.fp64_contents_size() * sizeof(double));
  return true;
}

}  // namespace

const char* V2Datatype(int dtype) {
  switch (dtype) {
    case tensorflow::DT_BOOL: return "BOOL";
    case tensorflow::DT_UINT8: return "UINT8";
    case tensorflow::DT_UINT16: return "UINT16";
    case tensorflow::DT_UINT32: return "UINT32";
    case tensorflow::DT_UINT64: return "UINT64";
    case tensorflow::DT_INT8: return "INT8";
    case tensorflow::DT_INT16: return "INT16";
    case tensorflow::DT_INT32: return "INT32";
    case tensorflow::DT_INT64: return "INT64";
    case tensorflow::DT_HALF: return "FP16";
    case tensorflow::DT_FLOAT: return "FP32";
    case tensorflow::DT_DOUBLE: return "FP64";
  }
  return "";
}

bool InferVersion(const std::string& text, int64_t* version) {
  *version = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    if (*version > (std::numeric_limits<int64_t>::max() - (c - '0')) / 10) return false;
    *version = *version * 10 + (c - '0');
  }
  return true;
}

Status CheckWire(const ModelInferRequest& r) {
  const int raw = r.raw_input_contents_size();
  if (raw && raw != r.inputs_size()) {
    return Invalid("raw_input_contents holds " + std::to_string(raw) + " entries for " +
                   std::to_string(r.inputs_size()) +
                   " inputs; give one per input, in order, or none");
  }
  for (const auto& t : r.inputs()) {
    const std::string quoted = "input \"" + t.name() + "\"";
    for (int64_t d : t.shape()) {
      if (d < 0) {
        return Invalid(quoted + ": shape " + Dims(ShapeOf(t), ",") + " has a negative dimension");
      }
    }
    if (!Known(t.datatype())) {
      std::string repr;
      if (!PyRepr(t.datatype(), &repr)) return {kForward, ""};
      std::string all;
      for (const char* d : kDatatypes) all += (all.empty() ? "" : ", ") + std::string(d);
      return Invalid(quoted + ": datatype " + repr + " is not supported (one of " + all + ")");
    }
    if (raw && t.has_contents()) {
      return Invalid(quoted + " has both contents and raw_input_contents");
    }
  }
  for (const auto& o : r.outputs()) {
    if (o.parameters().count("classification")) {
      return Invalid("requested output \"" + o.name() + "\": the classification extension is "
                     "not supported; request the output and take its argmax");
    }
  }
  return {};
}

Status PrepareInfer(const std::string& model, int64_t version,
                    const std::map<std::string, Signature>& signatures,
                    ModelInferRequest* request, int64_t max_elements, Prepared* out) {
  const std::string described = "model " + model + " version " + std::to_string(version);
  auto found = signatures.find("serving_default");  // backends.DEFAULT_SIGNATURE
  if (found == signatures.end()) {
    return {kFailedPrecondition, described + " has no \"serving_default\" signature, which "
                                             "the v2 protocol serves"};
  }
  const Signature& sig = found->second;
  if (!sig.native) return {kForward, ""};
  for (const auto* list : {&sig.inputs, &sig.outputs}) {
    for (const auto& s : *list) if (!*V2Datatype(s.dtype)) return {kForward, ""};
  }
  out->signature = &sig;
  auto expects = [&] {
    std::string s = described + " expects inputs ";
    for (size_t i = 0; i < sig.inputs.size(); ++i) {
      s += (i ? ", \"" : "\"") + sig.inputs[i].alias + "\" " +
           Describe(V2Datatype(sig.inputs[i].dtype), sig.inputs[i].shape);
    }
    return s;
  };
  auto spec_of = [&sig](const std::string& name) -> const TensorSpec* {
    for (const auto& s : sig.inputs) if (s.alias == name) return &s;
    return nullptr;
  };
  // DataPlane._check: names (repeated, unexpected, missing), then each input's datatype and shape
  std::set<std::string> names, repeated;
  for (const auto& t : request->inputs()) {
    if (!names.insert(t.name()).second) repeated.insert(t.name());
  }
  if (!repeated.empty()) return Invalid("input \"" + *repeated.begin() + "\" is given more than once");
  for (const auto& t : request->inputs()) {
    if (!spec_of(t.name())) return Invalid("unexpected input \"" + t.name() + "\": " + expects());
  }
  for (const auto& s : sig.inputs) {
    if (!names.count(s.alias)) return Invalid("input \"" + s.alias + "\" is missing: " + expects());
  }
  InputCheck check(max_elements);
  std::vector<int64_t> counts;
  for (const auto& t : request->inputs()) {
    const TensorSpec& spec = *spec_of(t.name());
    if (t.datatype() != V2Datatype(spec.dtype)) {
      return Invalid("input \"" + t.name() + "\" has datatype " + t.datatype() + " but " +
                     expects());
    }
    int64_t n = 0;
    Status s = check.Shape(t.name(), ShapeOf(t), spec, expects, &n);
    if (!s.ok()) return s;
    counts.push_back(n);
  }
  // DataPlane._outputs
  std::string all;
  for (const auto& o : sig.outputs) all += (all.empty() ? "" : ", ") + o.alias;
  std::set<std::string> asked;
  for (const auto& o : request->outputs()) {
    const TensorSpec* spec = nullptr;
    for (const auto& s : sig.outputs) if (s.alias == o.name()) spec = &s;
    if (!spec) {
      return Invalid("requested output \"" + o.name() + "\" is not an output of " + described +
                     ": its outputs are " + all);
    }
    asked.insert(o.name());
    out->outputs.push_back(spec);
  }
  if (asked.size() != out->outputs.size()) return Invalid("an output is requested more than once");
  if (out->outputs.empty()) {
    for (const auto& o : sig.outputs) out->outputs.push_back(&o);
  }
  // the decoding, in the request's order
  const bool raw = request->raw_input_contents_size() > 0;
  for (int i = 0; i < request->inputs_size(); ++i) {
    auto* t = request->mutable_inputs(i);
    const std::string quoted = "input \"" + t->name() + "\"";
    Input in{spec_of(t->name()), ShapeOf(*t), std::make_unique<std::string>()};
    const std::string described_input = Describe(t->datatype(), in.shape);
    if (raw) {
      std::string* bytes = request->mutable_raw_input_contents(i);
      const size_t need = static_cast<size_t>(counts[i]) * ElementSize(in.spec->dtype);
      if (bytes->size() != need) {
        return Invalid(quoted + ": raw content holds " + std::to_string(bytes->size()) +
                       " bytes but " + described_input + " needs " + std::to_string(need));
      }
      in.bytes->swap(*bytes);
    } else {
      const std::string field = ContentsField(t->datatype());
      if (field.empty()) {
        return Invalid(quoted + ": " + t->datatype() + " has no typed contents field; send it "
                       "in raw_input_contents");
      }
      const int64_t given = ContentsCount(t->contents(), t->datatype());
      if (given != counts[i]) {
        return Invalid(quoted + ": contents." + field + " holds " + std::to_string(given) +
                       " values but " + described_input + " needs " +
                       std::to_string(counts[i]));
      }
      if (!FromContents(t->contents(), t->datatype(), in.bytes.get())) return {kForward, ""};
    }
    out->inputs.push_back(std::move(in));
  }
  // server_core.run: the rows of the first input given (a scalar there: Python's IndexError)
  if (out->inputs.empty()) return {};
  if (out->inputs[0].shape.empty()) return {kForward, ""};
  out->rows = out->inputs[0].shape[0];
  return {};
}

void EncodeInfer(const Prepared& prepared, const std::string& model, int64_t version,
                 const std::string& id, tensorflow::serving::PredictResponse* predicted,
                 inference::ModelInferResponse* out) {
  out->set_model_name(model);
  out->set_model_version(std::to_string(version));
  out->set_id(id);
  auto& outputs = *predicted->mutable_outputs();
  for (const TensorSpec* o : prepared.outputs) {
    tensorflow::TensorProto& t = outputs[o->alias];
    auto* tensor = out->add_outputs();
    tensor->set_name(o->alias);
    tensor->set_datatype(V2Datatype(t.dtype()));
    for (const auto& d : t.tensor_shape().dim()) tensor->add_shape(d.size());
    out->add_raw_output_contents()->swap(*t.mutable_tensor_content());
  }
}

}  // namespace predictd
