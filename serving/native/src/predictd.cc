// predictd: the native data plane (docs/ARCHITECTURE.md, "The native data plane"). It listens on
// the server's public gRPC port and answers TF Serving's PredictionService/Predict for the
// SavedModel versions the Python control plane told it to load, and the Open Inference
// Protocol's ModelInfer and health calls for them (infer_call.h); every other call, and every
// request it cannot answer itself (a version label, a version it does not hold, a dtype it does
// not decode), is forwarded unchanged to the Python server's gRPC port on loopback.
//
//   predictd --listen HOST:PORT --forward HOST:PORT --tf_library PATH
//            [--max_request_bytes N] [--max_request_elements N] [--threads N]
//            [--intra_op N] [--inter_op N]
//            [--max_batch_size N [--batch_timeout_micros N] [--max_enqueued_batches N]
//             [--num_batch_threads N] [--allowed_batch_sizes N,N,...]]   (batching: batcher.h)
//
// The control channel is stdin/stdout, one tab-separated line each (serving/native/plane.py):
//   load NAME VERSION PATH NSIGS, then per signature
//     sig NAME NATIVE(0|1) DESCRIBE NIN NOUT, then NIN + NOUT lines
//     in|out ALIAS TENSOR DTYPE DIMS(comma-separated)
//   available NAME V1,V2,...   the versions the Python plane serves (it decides; this follows)
//   unload NAME VERSION
//   auth N ...                 the bearer tokens and the Python plane's refusals (auth.h)
//   stats                      the calls answered since the last stats: N, then N lines
//                              MODEL VERSION METHOD CODE SECONDS ROWS PEER NS INPUT_NS
//                              QUEUE_NS INFER_NS OUTPUT_NS EXECUTED END_MS (for the Python
//                              plane's metrics, access log and version statistics: MODEL empty
//                              for a message that does not parse or a refused token, counted in
//                              no metric; VERSION 0 or -1 refused before a version was
//                              resolved; INPUT_NS -1 did not run, else server_core.serve's
//                              phases, and the access log has no version or rows for it;
//                              EXECUTED the rows of the model run it counts, 0 none; END_MS its
//                              end, Unix ms, the access log's time), then the batcher's part:
//                              batches M Q and M + Q lines (batcher.h, Batcher::TakeStats)
//   ready 0|1                  what the v2 ServerReady answers (DataPlane.ready())
//   quit                       stop: the calls in flight finish (up to 5 s), then a last
//                              stats answer
// Answers: "listening PORT" once, then "ok ..." or "error ... MESSAGE" for each command.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/proto_utils.h>

#include <sys/prctl.h>

#include <atomic>
#include <csignal>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "auth.h"
#include "batcher.h"
#include "decode.h"
#include "infer_decode.h"
#include "session.h"
#include "tf_api.h"

namespace predictd {
namespace {

TfApi tf;
const char kPredict[] = "/tensorflow.serving.PredictionService/Predict";

struct Options {
  std::string listen = "127.0.0.1:0", forward, tf_library;
  int64_t max_request_bytes = 64 << 20, max_request_elements = (64 << 20) / 4;
  int threads = 0, intra_op = 0, inter_op = 0;
  bool batching = false;  // --max_batch_size given
  BatchOptions batch;
} options;

// ---------------------------------------------------------------- loaded versions
struct Version {
  std::string name;
  int64_t number = 0;
  TF_Graph* graph = nullptr;
  TF_Session* session = nullptr;
  std::map<std::string, Signature> signatures;

  ~Version() {
    if (session) {
      TF_Status* s = tf.TF_NewStatus();
      tf.TF_CloseSession(session, s);
      tf.TF_DeleteSession(session, s);
      tf.TF_DeleteStatus(s);
    }
    if (graph) tf.TF_DeleteGraph(graph);
  }
};

struct Model {
  std::map<int64_t, std::shared_ptr<Version>> loaded;
  std::set<int64_t> available;  // what the Python plane serves
};

std::shared_mutex models_mutex;
std::map<std::string, Model> models;

// The version a request names, if this plane should answer it: the Python plane serves it
// and it is loaded here. Anything else is the Python plane's to answer.
std::shared_ptr<Version> Find(const tensorflow::serving::ModelSpec& spec) {
  if (spec.name().empty() || spec.has_version_label()) return nullptr;
  std::shared_lock lock(models_mutex);
  auto m = models.find(spec.name());
  if (m == models.end() || m->second.available.empty()) return nullptr;
  int64_t v = spec.has_version() ? spec.version().value() : *m->second.available.rbegin();
  if (!m->second.available.count(v)) return nullptr;
  auto found = m->second.loaded.find(v);
  return found == m->second.loaded.end() ? nullptr : found->second;
}

// A serialized ConfigProto with the two thread counts (fields 2 and 5, varints): the only
// options the plane sets, so it is written here rather than generated.
std::string SessionConfig() {
  std::string out;
  auto varint = [&out](uint64_t v) {
    do {
      out.push_back(static_cast<char>((v & 0x7F) | (v > 0x7F ? 0x80 : 0)));
      v >>= 7;
    } while (v);
  };
  if (options.intra_op) { varint(2 << 3); varint(options.intra_op); }
  if (options.inter_op) { varint(5 << 3); varint(options.inter_op); }
  return out;
}

std::string LoadVersion(const std::string& path, Version* v) {
  TF_Status* status = tf.TF_NewStatus();
  TF_SessionOptions* opts = tf.TF_NewSessionOptions();
  std::string config = SessionConfig();
  tf.TF_SetConfig(opts, config.data(), config.size(), status);
  v->graph = tf.TF_NewGraph();
  const char* tags[] = {"serve"};
  if (tf.TF_GetCode(status) == TF_OK) {
    v->session = tf.TF_LoadSessionFromSavedModel(opts, nullptr, path.c_str(), tags, 1, v->graph,
                                                 nullptr, status);
  }
  std::string error = tf.TF_GetCode(status) == TF_OK ? "" : tf.TF_Message(status);
  tf.TF_DeleteSessionOptions(opts);
  tf.TF_DeleteStatus(status);
  if (!error.empty()) return error;
  for (auto& [_, sig] : v->signatures) {
    for (auto* list : {&sig.inputs, &sig.outputs}) {
      for (const auto& t : *list) {
        std::string op = t.tensor.substr(0, t.tensor.rfind(':'));
        if (!tf.TF_GraphOperationByName(v->graph, op.c_str())) {
          return "signature " + sig.name + ": no operation " + op + " in the graph";
        }
      }
    }
  }
  return "";
}

// Runs a prepared request; fills `response` or returns the error.
Status Run(const Version& v, Prepared& p, tensorflow::serving::PredictResponse* response) {
  response->mutable_model_spec()->set_name(v.name);
  response->mutable_model_spec()->mutable_version()->set_value(v.number);
  response->mutable_model_spec()->set_signature_name(p.signature->name);
  auto& outputs = *response->mutable_outputs();
  if (SkipsRun(p)) {  // server_core._run: an empty batch is not run
    for (const auto* o : p.outputs) {
      auto& t = outputs[o->alias];
      t.set_dtype(static_cast<tensorflow::DataType>(o->dtype));
      t.mutable_tensor_shape()->add_dim()->set_size(0);
      for (size_t i = 1; i < o->shape.size(); ++i) {
        t.mutable_tensor_shape()->add_dim()->set_size(std::max<int64_t>(o->shape[i], 0));
      }
    }
    return {};
  }
  return RunGraph(tf, v.graph, v.session, p.inputs, p.outputs, [&](size_t i, TF_Tensor* t) {
    auto& proto = outputs[p.outputs[i]->alias];
    proto.set_dtype(static_cast<tensorflow::DataType>(tf.TF_TensorType(t)));
    for (int d = 0; d < tf.TF_NumDims(t); ++d) {
      proto.mutable_tensor_shape()->add_dim()->set_size(tf.TF_Dim(t, d));
    }
    proto.set_tensor_content(static_cast<const char*>(tf.TF_TensorData(t)),
                             tf.TF_TensorByteSize(t));
  });
}

// ---------------------------------------------------------------- what was answered
// Each call this plane answered, for the Python plane's metrics, access log and version
// statistics ("stats" drains them). `method` is the gRPC method's last part (Predict,
// ModelInfer, ...); version 0: refused before a version was resolved.
struct Answered {
  std::string model;
  int64_t version;
  std::string method;
  int code;
  double seconds;
  int64_t rows;
  std::string peer;
  // The run's clock points (unset: it did not run to its end) and the rows of the model run
  // it counts as an execution (0: none, e.g. an empty batch); Record makes the phases of them.
  std::chrono::steady_clock::time_point asked{}, began{}, ran{};
  int64_t executed = 0;
  int64_t ns = 0, input_ns = -1, queue_ns = 0, infer_ns = 0, output_ns = 0, end_ms = 0;
};
std::mutex answered_mutex;
std::vector<Answered> answered;

void Record(Answered a, std::chrono::steady_clock::time_point start) {
  auto end = std::chrono::steady_clock::now();
  auto ns = [](auto d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); };
  a.seconds = std::chrono::duration<double>(end - start).count();
  a.ns = ns(end - start);
  if (a.ran != std::chrono::steady_clock::time_point()) {  // server_core.serve's phases
    a.input_ns = ns(a.asked - start);
    a.queue_ns = ns(a.began - a.asked);
    a.infer_ns = ns(a.ran - a.began);
    a.output_ns = ns(end - a.ran);
  }
  a.end_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch()).count();
  std::lock_guard lock(answered_mutex);
  answered.push_back(std::move(a));
}

// ---------------------------------------------------------------- the worker threads
class Pool {
 public:
  explicit Pool(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { Work(); });
  }
  void Post(std::function<void()> job) {
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [this] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
};

Pool* pool;
Batcher* batcher;  // with --max_batch_size
std::unique_ptr<grpc::GenericStub> python;  // the Python plane's gRPC server

// The call's metadata and deadline, for the same call to the Python plane, and the caller's
// address for its access log (access_log.FORWARDED_PEER; a caller's own value is dropped).
void CopyRequestContext(const grpc::GenericCallbackServerContext* from,
                        grpc::ClientContext* to) {
  for (const auto& [k, v] : from->client_metadata()) {
    std::string key(k.data(), k.size());
    if (key == "user-agent" || key.rfind("grpc-", 0) == 0 || key[0] == ':' ||
        key == "zoo-forwarded-peer") {
      continue;
    }
    to->AddMetadata(key, std::string(v.data(), v.size()));
  }
  to->AddMetadata("zoo-forwarded-peer", from->peer());
  if (from->deadline() != std::chrono::system_clock::time_point::max()) {
    to->set_deadline(from->deadline());
  }
}

void CopyMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& from,
                  const std::function<void(const std::string&, const std::string&)>& add) {
  for (const auto& [k, v] : from) add(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
}

// ---------------------------------------------------------------- Predict
#include "unary_call.h"

class PredictCall : public UnaryCall {
 public:
  using UnaryCall::UnaryCall;

 private:
  void Answer() override {
    if (!Parse(&request_)) return;
    version_ = Find(request_.model_spec());
    if (!version_) return Forward();
    Status s = Prepare(version_->name, version_->number, version_->signatures, &request_,
                       options.max_request_elements, &prepared_);
    if (s.code == kForward) return Forward();
    if (!s.ok()) return Reply(s);
    if (Batching(prepared_)) {
      return Batch(version_, prepared_, &response_, [this](const Status& s) { Reply(s); });
    }
    Execute(prepared_.rows, [this] { return Run(*version_, prepared_, &response_); },
            [this](const Status& s) { Reply(s); });
  }

  void Reply(const Status& s) {
    Note(version_->name, version_->number, s, prepared_);
    if (!s.ok()) return Fail(s);
    Send(response_);
  }

  tensorflow::serving::PredictRequest request_;
  tensorflow::serving::PredictResponse response_;
  std::shared_ptr<Version> version_;
  Prepared prepared_;
};

// ---------------------------------------------------------------- the Open Inference Protocol
#include "infer_call.h"

// ---------------------------------------------------------------- everything else: a proxy
// Each message from the caller goes on to the Python plane and each of its answers back, one
// at a time each way; the Python plane's status (and metadata) ends the call. Two reactors, one
// per side, share one Proxy, deleted when both are done.
struct Proxy;

class ToPython : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit ToPython(Proxy* p) : p_(p) {}
  void OnReadInitialMetadataDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnWritesDoneDone(bool) override {}
  void OnDone(const grpc::Status& status) override;
  using grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>::RemoveHold;

 private:
  Proxy* p_;
};

class FromCaller : public grpc::ServerGenericBidiReactor {
 public:
  explicit FromCaller(Proxy* p) : p_(p) {}
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  Proxy* p_;
};

struct Proxy {
  explicit Proxy(grpc::GenericCallbackServerContext* c) : ctx(c), python_side(this),
                                                         caller_side(this) {
    CopyRequestContext(ctx, &client);
    python->PrepareBidiStreamingCall(&client, ctx->method(), grpc::StubOptions(), &python_side);
    python_side.AddHold();  // ops on this side are started from the caller side's callbacks
    python_side.StartRead(&from_python);
    python_side.StartCall();
    caller_side.StartRead(&from_caller);
  }
  void Release() {
    if (--alive == 0) delete this;
  }

  grpc::GenericCallbackServerContext* ctx;
  grpc::ClientContext client;
  ToPython python_side;
  FromCaller caller_side;
  grpc::ByteBuffer from_caller, from_python;
  std::mutex mutex;
  bool python_ended = false;  // no more ops may start on python_side (its hold is released)
  std::atomic<int> alive{2};
};

void FromCaller::OnReadDone(bool ok) {  // a message from the caller, or its half-close
  std::lock_guard lock(p_->mutex);
  if (p_->python_ended) return;
  if (ok) {
    p_->python_side.StartWrite(&p_->from_caller);
  } else {
    p_->python_side.StartWritesDone();
  }
}
void ToPython::OnWriteDone(bool ok) {  // the caller's message reached Python: read the next
  if (ok) p_->caller_side.StartRead(&p_->from_caller);
}
void ToPython::OnReadInitialMetadataDone(bool ok) {
  if (!ok) return;
  CopyMetadata(p_->client.GetServerInitialMetadata(),
               [this](auto& k, auto& v) { p_->ctx->AddInitialMetadata(k, v); });
}
void ToPython::OnReadDone(bool ok) {  // an answer from Python, or the end of its answers
  if (ok) {
    p_->caller_side.StartWrite(&p_->from_python);
    return;
  }
  std::lock_guard lock(p_->mutex);
  p_->python_ended = true;
  RemoveHold();
}
void FromCaller::OnWriteDone(bool ok) {  // the answer reached the caller: read the next
  std::lock_guard lock(p_->mutex);
  if (p_->python_ended) return;
  if (ok) {
    p_->python_side.StartRead(&p_->from_python);
  } else {
    p_->client.TryCancel();
  }
}
void FromCaller::OnCancel() { p_->client.TryCancel(); }
void FromCaller::OnDone() { p_->Release(); }
void ToPython::OnDone(const grpc::Status& status) {
  CopyMetadata(p_->client.GetServerTrailingMetadata(),
               [this](auto& k, auto& v) { p_->ctx->AddTrailingMetadata(k, v); });
  p_->caller_side.Finish(status);
  p_->Release();
}

class Service : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    if (ctx->method() == kPredict) return new PredictCall(ctx);
    if (auto* call = NewInferCall(ctx)) return call;
    return &(new Proxy(ctx))->caller_side;
  }
};

// ---------------------------------------------------------------- the control channel
std::vector<std::string> Fields(const std::string& line) {
  std::vector<std::string> out;
  std::string field;
  std::istringstream in(line);
  while (std::getline(in, field, '\t')) out.push_back(field);
  return out;
}

std::vector<int64_t> Numbers(const std::string& text) {
  std::vector<int64_t> out;
  std::string item;
  std::istringstream in(text);
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(std::stoll(item));
  }
  return out;
}

void Say(const std::string& line) { std::cout << line << std::endl; }

// The "stats" answer: the calls answered since the last one.
void SayStats() {
  std::vector<Answered> taken;
  {
    std::lock_guard lock(answered_mutex);
    taken.swap(answered);
  }
  std::string out = "ok\tstats\t" + std::to_string(taken.size()) + "\n";
  for (const auto& a : taken) {  // std::to_string of a double: "%f", microseconds
    out += a.model + "\t" + std::to_string(a.version) + "\t" + a.method + "\t" +
           std::to_string(a.code) + "\t" + std::to_string(a.seconds) + "\t" +
           std::to_string(a.rows) + "\t" + a.peer + "\t" + std::to_string(a.ns) + "\t" +
           std::to_string(a.input_ns) + "\t" + std::to_string(a.queue_ns) + "\t" +
           std::to_string(a.infer_ns) + "\t" + std::to_string(a.output_ns) + "\t" +
           std::to_string(a.executed) + "\t" + std::to_string(a.end_ms) + "\n";
  }
  out += batcher ? batcher->TakeStats() : "batches\t0\t0\n";
  std::cout << out << std::flush;
}

// One "load" command and the signature lines after it.
void Load(const std::vector<std::string>& f) {
  auto v = std::make_shared<Version>();
  v->name = f.at(1);
  v->number = std::stoll(f.at(2));
  int sigs = std::stoi(f.at(4));
  std::string line;
  for (int i = 0; i < sigs && std::getline(std::cin, line); ++i) {
    auto s = Fields(line);
    Signature sig;
    sig.name = s.at(1);
    sig.native = s.at(2) == "1";
    sig.describe = s.at(3);
    int nin = std::stoi(s.at(4)), nout = std::stoi(s.at(5));
    for (int j = 0; j < nin + nout && std::getline(std::cin, line); ++j) {
      auto t = Fields(line);
      TensorSpec spec{t.at(1), t.at(2), std::stoi(t.at(3)), Numbers(t.size() > 4 ? t[4] : "")};
      (j < nin ? sig.inputs : sig.outputs).push_back(spec);
    }
    v->signatures[sig.name] = std::move(sig);
  }
  std::string error = LoadVersion(f.at(3), v.get());
  std::string what = "load\t" + v->name + "\t" + f.at(2);
  if (!error.empty()) {
    for (char& c : error) if (c == '\n' || c == '\t') c = ' ';
    Say("error\t" + what + "\t" + error);
    return;
  }
  {
    std::unique_lock lock(models_mutex);
    models[v->name].loaded[v->number] = v;
  }
  Say("ok\t" + what);
}

void Control() {
  std::string line;
  while (std::getline(std::cin, line)) {
    auto f = Fields(line);
    if (f.empty()) continue;
    try {
      if (f[0] == "load") {
        Load(f);
      } else if (f[0] == "available") {
        auto numbers = Numbers(f.size() > 2 ? f[2] : "");
        std::unique_lock lock(models_mutex);
        models[f.at(1)].available = std::set<int64_t>(numbers.begin(), numbers.end());
        lock.unlock();
        Say("ok\tavailable\t" + f[1]);
      } else if (f[0] == "unload") {
        std::shared_ptr<Version> gone;  // the session closes when its last request is done
        std::unique_lock lock(models_mutex);
        auto m = models.find(f.at(1));
        if (m != models.end()) {
          auto v = m->second.loaded.find(std::stoll(f.at(2)));
          if (v != m->second.loaded.end()) {
            gone = v->second;
            m->second.loaded.erase(v);
          }
        }
        lock.unlock();
        gone.reset();
        Say("ok\tunload\t" + f[1] + "\t" + f[2]);
      } else if (f[0] == "auth") {
        Say(AuthCommand(f, std::cin));
      } else if (f[0] == "stats") {
        SayStats();
      } else if (f[0] == "ready") {
        server_ready = std::stoi(f.at(1)) ? 1 : 0;
        Say("ok\tready");
      } else if (f[0] == "quit") {
        return;
      } else {
        Say("error\t" + f[0] + "\tunknown command");
      }
    } catch (const std::exception& e) {
      Say("error\t" + f[0] + "\tbad command: " + e.what());
    }
  }
}

bool ParseArgs(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--listen") options.listen = v;
    else if (k == "--forward") options.forward = v;
    else if (k == "--tf_library") options.tf_library = v;
    else if (k == "--max_request_bytes") options.max_request_bytes = std::stoll(v);
    else if (k == "--max_request_elements") options.max_request_elements = std::stoll(v);
    else if (k == "--threads") options.threads = std::stoi(v);
    else if (k == "--intra_op") options.intra_op = std::stoi(v);
    else if (k == "--inter_op") options.inter_op = std::stoi(v);
    else if (k == "--max_batch_size") options.batch.max_batch_size = std::stoll(v);
    else if (k == "--batch_timeout_micros") options.batch.batch_timeout_micros = std::stoll(v);
    else if (k == "--max_enqueued_batches") options.batch.max_enqueued_batches = std::stoll(v);
    else if (k == "--num_batch_threads") options.batch.num_batch_threads = std::stoll(v);
    else if (k == "--allowed_batch_sizes") options.batch.allowed_batch_sizes = Numbers(v);
    else return false;
    if (k == "--max_batch_size") options.batching = true;
  }
  return argc % 2 == 1 && !options.forward.empty() && !options.tf_library.empty();
}

}  // namespace
}  // namespace predictd

int main(int argc, char** argv) {
  using namespace predictd;
  prctl(PR_SET_PDEATHSIG, SIGKILL);  // dies with the Python server, even one killed by SIGKILL
  // A message that does not parse is answered INVALID_ARGUMENT; protobuf need not log it too.
  google::protobuf::SetLogHandler(nullptr);
  KeepFreedBuffers();
  if (!ParseArgs(argc, argv)) {
    std::cerr << "usage: predictd --listen HOST:PORT --forward HOST:PORT --tf_library PATH "
                 "[--max_request_bytes N] [--max_request_elements N] [--threads N] "
                 "[--intra_op N] [--inter_op N] [--max_batch_size N [--batch_timeout_micros N] "
                 "[--max_enqueued_batches N] [--num_batch_threads N] "
                 "[--allowed_batch_sizes N,N,...]]\n";
    return 2;
  }
  std::string error;
  if (!tf.Open(options.tf_library, &error)) {
    std::cerr << "predictd: cannot load TensorFlow: " << error << "\n";
    return 1;
  }
  int threads = options.threads > 0 ? options.threads
                                    : std::max(1u, std::thread::hardware_concurrency());
  pool = new Pool(threads);
  if (options.batching) batcher = new Batcher(options.batch);  // never deleted: see _Exit below
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  python = std::make_unique<grpc::GenericStub>(
      grpc::CreateCustomChannel(options.forward, grpc::InsecureChannelCredentials(), args));
  Service service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &port);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a port in use is an error
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_request_bytes));
  builder.SetMaxSendMessageSize(-1);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "predictd: cannot listen on " << options.listen << "\n";
    return 1;
  }
  Say("listening\t" + std::to_string(port));
  Control();  // until "quit" or the end of stdin (the control plane is gone)
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  SayStats();  // what was answered since the last stats, for the access log
  std::_Exit(0);  // TF's and gRPC's static destructors race their own threads
}
