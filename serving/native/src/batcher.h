// Dynamic batching in the native plane with TF Serving's BatchingParameters, as the Python
// plane batches (serving/core/batching.py; docs/ARCHITECTURE.md, "The native data plane"):
// one queue per (model, version, signature, non-batch dimensions of the inputs); a batch runs
// on one of num_batch_threads threads when max_batch_size rows wait or the oldest request has
// waited batch_timeout_micros; it is padded to the next allowed_batch_sizes entry by repeating
// its first row; each request gets back its own rows. A request of more than max_batch_size
// rows is split into parts of max_batch_size, each queued on its own; a request that would make
// more than max_enqueued_batches batches wait is refused UNAVAILABLE at once, with the Python
// plane's message.
//
// The API takes the prepared input tensors of one request (decode.h's Input), not a protocol
// message, so that any protocol's call (Predict, ModelInfer) can go through it: the caller
// gives the tensors, a function that runs a batch, and a function that gets the request's rows
// of every output. No TensorFlow and no gRPC here (this part is built alone under
// ThreadSanitizer with src/batcher_check.cc).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "decode.h"

namespace predictd {

struct BatchOptions {  // TF Serving's defaults, as serving/core/batching.py's BatchingOptions
  int64_t max_batch_size = 1000;
  int64_t batch_timeout_micros = 0;
  int64_t max_enqueued_batches = 10;
  int64_t num_batch_threads = 1;
  std::vector<int64_t> allowed_batch_sizes;  // increasing; the last is max_batch_size
};

// An output tensor: dtype (tensorflow DataType), shape, little-endian elements in C order.
struct Tensor {
  int dtype = 0;
  std::vector<int64_t> shape;
  std::string bytes;
};

// Runs one batch: `inputs` are the batch's tensors (the requests' rows one after another, then
// the padding), one per input of the signature in its order; fills `outputs` with every output
// of the signature, in its order, each with the batch's rows along dimension 0.
using BatchRun = std::function<Status(std::vector<Input>& inputs, std::vector<Tensor>* outputs)>;
// A request's answer: its own rows of every output (in the order BatchRun gave them), or the
// batch's error. Called once, on a batch thread.
using BatchDone = std::function<void(const Status& status, std::vector<Tensor> outputs)>;

// Whether requests of `sig` are batched: it has inputs and every one has a leading batch
// dimension (-1), as the Python plane's lifecycle decides.
bool Batchable(const Signature& sig);

// What one batch did, for the Python plane's batch metrics (the "stats" command).
struct BatchRecord {
  std::string model, signature;
  int64_t version = 0;
  int64_t size = 0;  // rows run, after padding
  int64_t rows = 0;  // the requests' rows
  double seconds = 0;  // the run
  bool ok = true;
  std::vector<double> waits;  // each request's seconds in the queue
};

class Batcher {
 public:
  explicit Batcher(const BatchOptions& options);
  ~Batcher();  // runs what is queued, then joins the threads

  // Queues a request of model/version/signature: `inputs` (each with the request's rows along
  // dimension 0, at least one row) for `run`, answered through `done`. A status that is not OK
  // (the queue is full) means neither is called. `run` is kept by the request's tasks only (so a
  // queue never keeps a version alive past its requests).
  Status Submit(const std::string& model, int64_t version, const std::string& signature,
                std::vector<Input> inputs, BatchRun run, BatchDone done);

  // The batches run since the last call, and the rows waiting now in each (model, version,
  // signature) whose count changed since the last call, as the "stats" command's appended part:
  //   batches M Q, then M lines MODEL VERSION SIGNATURE SIZE ROWS SECONDS OK WAITS (comma-
  //   separated seconds), then Q lines MODEL VERSION SIGNATURE ROWS (tab-separated).
  std::string TakeStats();

  const BatchOptions& options() const { return options_; }

 private:
  struct Request;  // one Submit: its run, its answer, the results of its parts
  struct Task {      // a request, or one part of a split one
    std::vector<Input> inputs;
    int64_t rows = 0;
    std::shared_ptr<Request> request;
    size_t part = 0;
    std::chrono::steady_clock::time_point enqueued;
  };
  struct Queue {
    std::string model, signature;
    int64_t version = 0;
    std::deque<Task> tasks;
    int64_t rows = 0;
  };

  void Work();
  void RunBatch(const std::string& model, int64_t version, const std::string& signature,
                std::vector<Task> batch);
  static void Answer(const Task& task, const Status& status, std::vector<Tensor> outputs);
  int64_t PaddedSize(int64_t rows) const;
  void QueueRows(const Queue& q);  // notes the rows now waiting (mutex_ held)

  const BatchOptions options_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::string, std::unique_ptr<Queue>> queues_;  // key: model, version, sig, dims
  bool stopping_ = false;
  std::vector<std::thread> threads_;
  std::mutex stats_mutex_;
  std::vector<BatchRecord> records_;
  std::map<std::string, int64_t> queue_rows_;  // "model\tversion\tsig" -> rows, since last take
};

}  // namespace predictd
