#include "session.h"

namespace predictd {

const char* TfErrorName(int code) {
  static const char* names[] = {
      "OK", "CancelledError", "UnknownError", "InvalidArgumentError", "DeadlineExceededError",
      "NotFoundError", "AlreadyExistsError", "PermissionDeniedError", "ResourceExhaustedError",
      "FailedPreconditionError", "AbortedError", "OutOfRangeError", "UnimplementedError",
      "InternalError", "UnavailableError", "DataLossError", "UnauthenticatedError"};
  return code >= 0 && code <= 16 ? names[code] : "UnknownError";
}

const TF_Buffer* InlineRunOptions() {
  static const char kInline[] = "\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01";  // field 3, -1
  static const TF_Buffer options{kInline, sizeof kInline - 1, nullptr};
  return &options;
}

namespace {

TF_Output GraphOutput(const TfApi& tf, TF_Graph* graph, const std::string& tensor) {
  size_t colon = tensor.rfind(':');
  std::string op = colon == std::string::npos ? tensor : tensor.substr(0, colon);
  int index = colon == std::string::npos ? 0 : std::stoi(tensor.substr(colon + 1));
  return {tf.TF_GraphOperationByName(graph, op.c_str()), index};
}

}  // namespace

Status RunGraph(const TfApi& tf, TF_Graph* graph, TF_Session* session,
                std::vector<Input>& inputs, const std::vector<const TensorSpec*>& outputs,
                const std::function<void(size_t, TF_Tensor*)>& take) {
  std::vector<TF_Output> ins, outs;
  std::vector<TF_Tensor*> in_values, out_values(outputs.size(), nullptr);
  for (auto& in : inputs) {
    ins.push_back(GraphOutput(tf, graph, in.spec->tensor));
    std::string* bytes = in.bytes.release();
    in_values.push_back(tf.TF_NewTensor(
        static_cast<TF_DataType>(in.spec->dtype), in.shape.data(),
        static_cast<int>(in.shape.size()), bytes->data(), bytes->size(),
        [](void*, size_t, void* owner) { delete static_cast<std::string*>(owner); }, bytes));
  }
  for (const auto* o : outputs) outs.push_back(GraphOutput(tf, graph, o->tensor));
  TF_Status* status = tf.TF_NewStatus();
  tf.TF_SessionRun(session, InlineRunOptions(), ins.data(), in_values.data(),
                   static_cast<int>(ins.size()), outs.data(), out_values.data(),
                   static_cast<int>(outs.size()), nullptr, 0, nullptr, status);
  Status result;
  if (tf.TF_GetCode(status) != TF_OK) {
    std::string message = tf.TF_Message(status);
    message = message.substr(0, message.find('\n'));
    TF_Code code = tf.TF_GetCode(status);
    result = {code == TF_INVALID_ARGUMENT ? kInvalidArgument : 13,
              std::string(TfErrorName(code)) + ": " + message};
  }
  tf.TF_DeleteStatus(status);
  for (auto* t : in_values) tf.TF_DeleteTensor(t);
  for (size_t i = 0; i < out_values.size(); ++i) {
    if (!out_values[i]) continue;
    if (result.ok()) take(i, out_values[i]);
    tf.TF_DeleteTensor(out_values[i]);
  }
  return result;
}

Status RunSession(const TfApi& tf, TF_Graph* graph, TF_Session* session,
                  std::vector<Input>& inputs, const std::vector<TensorSpec>& outputs,
                  std::vector<Tensor>* results) {
  std::vector<const TensorSpec*> wanted;
  for (const auto& o : outputs) wanted.push_back(&o);
  results->assign(outputs.size(), Tensor{});
  Status s = RunGraph(tf, graph, session, inputs, wanted, [&](size_t i, TF_Tensor* t) {
    Tensor& out = (*results)[i];
    out.dtype = tf.TF_TensorType(t);
    for (int d = 0; d < tf.TF_NumDims(t); ++d) out.shape.push_back(tf.TF_Dim(t, d));
    out.bytes.assign(static_cast<const char*>(tf.TF_TensorData(t)), tf.TF_TensorByteSize(t));
  });
  if (!s.ok()) results->clear();
  return s;
}

void FillPredict(const Signature& sig, const std::vector<const TensorSpec*>& wanted,
                 std::vector<Tensor>& all, tensorflow::serving::PredictResponse* response) {
  auto& outputs = *response->mutable_outputs();
  for (const TensorSpec* spec : wanted) {
    Tensor& t = all.at(static_cast<size_t>(spec - sig.outputs.data()));
    auto& proto = outputs[spec->alias];
    proto.set_dtype(static_cast<tensorflow::DataType>(t.dtype));
    for (int64_t d : t.shape) proto.mutable_tensor_shape()->add_dim()->set_size(d);
    proto.set_tensor_content(std::move(t.bytes));
  }
}

}  // namespace predictd
