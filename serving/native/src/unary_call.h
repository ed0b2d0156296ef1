// UnaryCall: one request message, one answer, the shape of every call predictd answers itself
// (Predict, ModelInfer, the v2 health calls; docs/ARCHITECTURE.md, "The native data plane").
// It reads the message, checks its token (auth.h), parses it (a message that does not parse is
// INVALID_ARGUMENT in grpc_server.RequestDecoding's words), times the call's phases as server_core.serve does, runs
// the model inline or on the worker pool, records the answer for "stats", and forwards the
// untouched bytes to the Python plane when the subclass decides this plane does not answer.
//
// Part of predictd.cc's translation unit (included inside its namespace after the worker pool,
// Record and the forward stub it uses), so that each call can live in its own file.
#pragma once

class UnaryCall : public grpc::ServerGenericBidiReactor {
 public:
  explicit UnaryCall(grpc::GenericCallbackServerContext* ctx) : ctx_(ctx) { StartRead(&in_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, Method() + " sent no request"));
      return;
    }
    start_ = std::chrono::steady_clock::now();
    if (auto refusal = Refused(ctx_->client_metadata())) {  // as auth.Guard: before any parse
      Record({"", -1, Method(), refusal->code, 0, -1, ctx_->peer()}, start_);
      Finish(grpc::Status(static_cast<grpc::StatusCode>(refusal->code), refusal->message));
      return;
    }
    Answer();
  }
  void OnDone() override { delete this; }

 protected:
  using Clock = std::chrono::steady_clock;
  // Runs of up to kInlineRows rows stay on gRPC's callback thread (as the Python plane runs
  // small requests inline: a hand-off costs more than they do); longer ones go to the worker
  // pool, so that a long run does not hold a callback thread.
  static constexpr int64_t kInlineRows = 8;

  virtual void Answer() = 0;

  // The method's last part: Predict, ModelInfer, ...
  std::string Method() const {
    const std::string& m = ctx_->method();
    return m.substr(m.rfind('/') + 1);
  }

  // Parses the request into `message`; false when it does not parse (then answered).
  template <class M>
  bool Parse(M* message) {
    size_t length = in_.Length();
    grpc::ByteBuffer copy = in_;  // Deserialize consumes its buffer; the original stays
    if (grpc::SerializationTraits<M>::Deserialize(&copy, message).ok()) return true;
    Record({"", -1, Method(), kInvalidArgument, 0, -1, ctx_->peer()}, start_);  // logged, not counted
    Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "Malformed request: " + std::to_string(length) + " bytes that are not a " +
                            Method() + " request message (protobuf)"));
    return false;
  }

  // Runs the model with `run` (inline or on the pool, timed: queue and infer), then `done`.
  void Execute(int64_t rows, std::function<Status()> run,
               std::function<void(const Status&)> done) {
    asked_ = Clock::now();
    auto job = [this, run = std::move(run), done = std::move(done)] {
      began_ = Clock::now();
      Status s = run();
      if (s.ok()) ran_ = Clock::now();
      done(s);
    };
    if (rows <= kInlineRows) {
      job();
    } else {
      pool->Post(std::move(job));
    }
  }

  // Whether a prepared request goes through the batcher (--max_batch_size given, rows to run,
  // a signature whose every input is batched).
  static bool Batching(const Prepared& p) {
    return batcher && p.rows > 0 && Batchable(*p.signature);
  }

  // Runs `p` of `v` through the batcher: every output of the signature is run, the ones `p`
  // asks for go into `response` as Run fills it, then `done` (on a batch thread, or here if
  // the queue is full).
  void Batch(const std::shared_ptr<Version>& v, Prepared& p,
             tensorflow::serving::PredictResponse* response,
             std::function<void(const Status&)> done) {
    response->mutable_model_spec()->set_name(v->name);
    response->mutable_model_spec()->mutable_version()->set_value(v->number);
    response->mutable_model_spec()->set_signature_name(p.signature->name);
    Clock::time_point asked = Clock::now();
    Status s = batcher->Submit(
        v->name, v->number, p.signature->name, std::move(p.inputs),
        [v, sig = p.signature](std::vector<Input>& in, std::vector<Tensor>* out) {
          return RunSession(tf, v->graph, v->session, in, sig->outputs, out);
        },
        [this, asked, &p, response, done](const Status& status, std::vector<Tensor> outputs) {
          if (status.ok()) {
            Batched(asked);
            FillPredict(*p.signature, p.outputs, outputs, response);
          }
          done(status);
        });
    if (!s.ok()) done(s);  // refused: neither function is called
  }

  // A request answered through the batcher, submitted at `asked`, has run: its wait in the
  // batcher counts as its infer time (the batcher's own stats give the wait, as
  // queuing_latency), and its batch, not the request, counts as the version's execution.
  void Batched(Clock::time_point asked) {
    asked_ = began_ = asked;
    ran_ = Clock::now();
    batched_ = true;
  }

  // Notes the answer for "stats": the version it was answered for (0: refused before one was
  // resolved, not counted in a version's statistics) and the run's phases if it ran.
  void Note(const std::string& model, int64_t version, const Status& s, const Prepared& p) {
    Answered a{model, version, Method(), s.code, 0, p.rows, ctx_->peer()};
    if (s.ok() && ran_ != Clock::time_point()) {
      a.asked = asked_;
      a.began = began_;
      a.ran = ran_;
      a.executed = SkipsRun(p) || batched_ ? 0 : p.rows;
    }
    Record(std::move(a), start_);
  }

  void Fail(const Status& s) {
    Finish(grpc::Status(static_cast<grpc::StatusCode>(s.code), s.message));
  }

  void Send(const google::protobuf::Message& response) {
    bool own;
    grpc::SerializationTraits<google::protobuf::Message>::Serialize(response, &out_, &own);
    StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
  }

  // The call as it came, to the Python plane; its answer (and metadata) back.
  void Forward() {
    CopyRequestContext(ctx_, &client_);
    python->UnaryCall(&client_, ctx_->method(), grpc::StubOptions(), &in_, &out_,
                      [this](grpc::Status status) {
                        CopyMetadata(client_.GetServerInitialMetadata(),
                                     [this](auto& k, auto& v) { ctx_->AddInitialMetadata(k, v); });
                        CopyMetadata(client_.GetServerTrailingMetadata(),
                                     [this](auto& k, auto& v) { ctx_->AddTrailingMetadata(k, v); });
                        if (status.ok()) {
                          StartWriteAndFinish(&out_, grpc::WriteOptions(), status);
                        } else {
                          Finish(status);
                        }
                      });
  }

  grpc::GenericCallbackServerContext* ctx_;

 private:
  grpc::ClientContext client_;
  grpc::ByteBuffer in_, out_;
  Clock::time_point start_, asked_, began_, ran_;
  bool batched_ = false;
};
