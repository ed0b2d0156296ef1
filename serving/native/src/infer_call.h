// The Open Inference Protocol's calls predictd answers itself (docs/ARCHITECTURE.md, "The native
// data plane"): inference.GRPCInferenceService/ModelInfer for the versions it holds (the checks
// and decoding in infer_decode.cc, the run Predict's), and the health calls ServerLive,
// ServerReady (what the control plane last said: "ready 0|1") and ModelReady (for a version it
// holds). Whatever it cannot answer as the Python plane does is forwarded.
//
// Part of predictd.cc's translation unit, like unary_call.h (it uses the loaded versions, Find
// and Run defined there; infer_decode.h is included at its top).
#pragma once

const char kInferService[] = "/inference.GRPCInferenceService/";

// -1 until the control plane says; then DataPlane.ready() (every configured model has a
// version, the server is not stopping) as of its last sync.
std::atomic<int> server_ready{-1};

// The version a v2 (name, version string) names if this plane holds it, else nullptr.
std::shared_ptr<Version> FindInfer(const std::string& name, const std::string& version) {
  int64_t number = 0;
  if (name.empty() || !InferVersion(version, &number)) return nullptr;
  tensorflow::serving::ModelSpec spec;
  spec.set_name(name);
  if (!version.empty()) spec.mutable_version()->set_value(number);
  return Find(spec);
}

class InferCall : public UnaryCall {
 public:
  using UnaryCall::UnaryCall;

 private:
  void Answer() override {
    if (!Parse(&request_)) return;
    version_ = FindInfer(request_.model_name(), request_.model_version());
    Status wire = CheckWire(request_);  // refused before the version is resolved
    if (wire.code == kForward || (wire.ok() && !version_)) return Forward();
    if (!wire.ok()) {
      Note(request_.model_name(), 0, wire, prepared_);
      return Fail(wire);
    }
    Status s = PrepareInfer(version_->name, version_->number, version_->signatures, &request_,
                            options.max_request_elements, &prepared_);
    if (s.code == kForward) return Forward();
    if (!s.ok()) return Reply(s);
    if (Batching(prepared_)) {  // in the same queues as Predict, as the Python plane batches
      return Batch(version_, prepared_, &predicted_, [this](const Status& s) { Reply(s); });
    }
    Execute(prepared_.rows, [this] { return Run(*version_, prepared_, &predicted_); },
            [this](const Status& s) { Reply(s); });
  }

  void Reply(const Status& s) {
    if (s.ok()) {
      EncodeInfer(prepared_, version_->name, version_->number, request_.id(), &predicted_,
                  &response_);
    }
    Note(version_->name, version_->number, s, prepared_);
    if (!s.ok()) return Fail(s);
    Send(response_);
  }

  inference::ModelInferRequest request_;
  inference::ModelInferResponse response_;
  tensorflow::serving::PredictResponse predicted_;
  std::shared_ptr<Version> version_;
  Prepared prepared_;
};

class ServerLiveCall : public UnaryCall {
 public:
  using UnaryCall::UnaryCall;

 private:
  void Answer() override {
    inference::ServerLiveRequest request;
    if (!Parse(&request)) return;
    inference::ServerLiveResponse response;
    response.set_live(true);
    Send(response);
  }
};

class ServerReadyCall : public UnaryCall {
 public:
  using UnaryCall::UnaryCall;

 private:
  void Answer() override {
    inference::ServerReadyRequest request;
    if (!Parse(&request)) return;
    int ready = server_ready.load();
    if (ready < 0) return Forward();
    inference::ServerReadyResponse response;
    response.set_ready(ready == 1);
    Send(response);
  }
};

// DataPlane.model_ready: the version resolves and has a "serving_default" signature.
class ModelReadyCall : public UnaryCall {
 public:
  using UnaryCall::UnaryCall;

 private:
  void Answer() override {
    inference::ModelReadyRequest request;
    if (!Parse(&request)) return;
    auto version = FindInfer(request.name(), request.version());
    if (!version) return Forward();  // a "not ready" is the Python plane's to say
    inference::ModelReadyResponse response;
    response.set_ready(version->signatures.count("serving_default") > 0);
    Send(response);
  }
};

// The reactor for a v2 method this plane answers, nullptr for any other.
grpc::ServerGenericBidiReactor* NewInferCall(grpc::GenericCallbackServerContext* ctx) {
  const std::string& m = ctx->method();
  if (m.rfind(kInferService, 0) != 0) return nullptr;
  const std::string name = m.substr(sizeof kInferService - 1);
  if (name == "ModelInfer") return new InferCall(ctx);
  if (name == "ServerLive") return new ServerLiveCall(ctx);
  if (name == "ServerReady") return new ServerReadyCall(ctx);
  if (name == "ModelReady") return new ModelReadyCall(ctx);
  return nullptr;
}
