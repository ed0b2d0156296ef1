#include "batcher.h"

#include <algorithm>
#include <cstring>

namespace predictd {

constexpr int kUnavailable = 14, kInternal = 13;

// One Submit. A request split into parts is answered when its last part has run: the parts'
// rows concatenated, or the first error one of them met.
struct Batcher::Request {
  BatchRun run;
  BatchDone done;
  std::mutex mutex;
  size_t remaining = 0;
  std::vector<std::vector<Tensor>> results;  // per part
  Status error;
};

bool Batchable(const Signature& sig) {
  if (sig.inputs.empty()) return false;  // no rows to count: run as it is
  for (const auto& in : sig.inputs) {
    if (in.shape.empty() || in.shape[0] != -1) return false;
  }
  return true;
}

Batcher::Batcher(const BatchOptions& options) : options_(options) {
  for (int64_t i = 0; i < std::max<int64_t>(1, options_.num_batch_threads); ++i) {
    threads_.emplace_back([this] { Work(); });
  }
}

Batcher::~Batcher() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

int64_t Batcher::PaddedSize(int64_t rows) const {
  for (int64_t size : options_.allowed_batch_sizes) {
    if (size >= rows) return size;
  }
  return rows;
}

void Batcher::QueueRows(const Queue& q) {
  // Summed over the queues of one (model, version, signature): they differ only in dimensions.
  int64_t rows = 0;
  std::string prefix = q.model + "\t" + std::to_string(q.version) + "\t" + q.signature + "\t";
  for (auto it = queues_.lower_bound(prefix); it != queues_.end() &&
       it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    rows += it->second->rows;
  }
  queue_rows_[prefix.substr(0, prefix.size() - 1)] = rows;
}

Status Batcher::Submit(const std::string& model, int64_t version, const std::string& signature,
                       std::vector<Input> inputs, BatchRun run, BatchDone done) {
  const int64_t max = options_.max_batch_size;
  const int64_t rows = inputs.at(0).shape.at(0);
  std::string key = model + "\t" + std::to_string(version) + "\t" + signature + "\t";
  for (const auto& in : inputs) {
    for (size_t d = 1; d < in.shape.size(); ++d) key += std::to_string(in.shape[d]) + ",";
    key += ";";
  }
  auto request = std::make_shared<Request>();
  request->run = std::move(run);
  request->done = std::move(done);
  // The parts (as TF Serving's large-batch splitting, and the Python plane, split): rows
  // [i * max, (i + 1) * max) of every input.
  std::vector<Task> parts;
  if (rows <= max) {
    parts.push_back({std::move(inputs), rows, request, 0, {}});
  } else {
    for (int64_t start = 0; start < rows; start += max) {
      int64_t n = std::min(max, rows - start);
      Task t{{}, n, request, parts.size(), {}};
      for (const auto& in : inputs) {
        size_t row = in.bytes->size() / static_cast<size_t>(rows);
        Input part{in.spec, in.shape, std::make_unique<std::string>(
                                          *in.bytes, start * row, n * row)};
        part.shape[0] = n;
        t.inputs.push_back(std::move(part));
      }
      parts.push_back(std::move(t));
    }
  }
  request->remaining = parts.size();
  request->results.resize(parts.size());
  auto now = std::chrono::steady_clock::now();
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    auto& slot = queues_[key];
    if (!slot) slot.reset(new Queue{model, signature, version, {}, 0});
    Queue& q = *slot;
    for (size_t i = 0; i < parts.size(); ++i) {
      // Batches already waiting, counting the open (partial) one: serving/core/batching.py.
      int64_t waiting = (q.rows + parts[i].rows + max - 1) / max;
      if (waiting > options_.max_enqueued_batches) {
        std::string message =
            "The batch scheduling queue to which this task was submitted is full (" +
            std::to_string(q.rows) + " rows in " + std::to_string(options_.max_enqueued_batches) +
            " batches of at most " + std::to_string(max) + "); retry later";
        for (size_t j = 0; j < i; ++j) {  // this request's parts queued so far are withdrawn
          q.rows -= q.tasks.back().rows;
          q.tasks.pop_back();
        }
        QueueRows(q);
        return {kUnavailable, message};
      }
      wake |= q.tasks.empty() || q.rows + parts[i].rows >= max;
      parts[i].enqueued = now;
      q.rows += parts[i].rows;
      q.tasks.push_back(std::move(parts[i]));
    }
    QueueRows(q);
  }
  if (wake) cv_.notify_one();
  return {};
}

void Batcher::Work() {
  const auto timeout = std::chrono::microseconds(options_.batch_timeout_micros);
  const int64_t max = options_.max_batch_size;
  std::unique_lock lock(mutex_);
  for (;;) {
    // The queue to run: one with a full batch or whose oldest request has waited long enough
    // (the one with the oldest request, if several are); else sleep until the next deadline.
    auto now = std::chrono::steady_clock::now();
    Queue* ready = nullptr;
    auto earliest = std::chrono::steady_clock::time_point::max();
    for (auto it = queues_.begin(); it != queues_.end();) {
      Queue* q = it->second.get();
      if (q->tasks.empty()) {
        it = queues_.erase(it);
        continue;
      }
      auto front = q->tasks.front().enqueued;
      if (stopping_ || q->rows >= max || front + timeout <= now) {
        if (!ready || front < ready->tasks.front().enqueued) ready = q;
      } else {
        earliest = std::min(earliest, front + timeout);
      }
      ++it;
    }
    if (!ready) {
      if (stopping_) return;
      if (earliest == std::chrono::steady_clock::time_point::max()) {
        cv_.wait(lock);
      } else {
        cv_.wait_until(lock, earliest);
      }
      continue;
    }
    std::vector<Task> batch;
    int64_t rows = 0;
    while (!ready->tasks.empty() && rows + ready->tasks.front().rows <= max) {
      rows += ready->tasks.front().rows;
      batch.push_back(std::move(ready->tasks.front()));
      ready->tasks.pop_front();
    }
    ready->rows -= rows;
    QueueRows(*ready);
    std::string model = ready->model, signature = ready->signature;
    int64_t version = ready->version;
    cv_.notify_one();  // another batch may be ready too: an idle thread looks
    lock.unlock();
    RunBatch(model, version, signature, std::move(batch));
    lock.lock();
  }
}

void Batcher::RunBatch(const std::string& model, int64_t version, const std::string& signature,
                       std::vector<Task> batch) {
  int64_t rows = 0;
  for (const auto& t : batch) rows += t.rows;
  const int64_t size = PaddedSize(rows);
  // The batch's inputs: each request's rows in turn, then the first row repeated (TF Serving's
  // padding); one request that needs no padding is run as it is.
  std::vector<Input> inputs;
  for (size_t i = 0; i < batch[0].inputs.size(); ++i) {
    Input& first = batch[0].inputs[i];
    if (batch.size() == 1 && size == rows) {
      inputs.push_back(std::move(first));
      continue;
    }
    size_t row = first.bytes->size() / static_cast<size_t>(first.shape[0]);
    auto bytes = std::make_unique<std::string>();
    bytes->reserve(row * static_cast<size_t>(size));
    for (const auto& t : batch) bytes->append(*t.inputs[i].bytes);
    for (int64_t r = rows; r < size; ++r) bytes->append(first.bytes->data(), row);
    Input in{first.spec, first.shape, std::move(bytes)};
    in.shape[0] = size;
    inputs.push_back(std::move(in));
  }
  BatchRecord record{model, signature, version, size, rows, 0, true, {}};
  auto began = std::chrono::steady_clock::now();
  for (const auto& t : batch) {
    record.waits.push_back(std::chrono::duration<double>(began - t.enqueued).count());
  }
  std::vector<Tensor> outputs;
  Status status = batch[0].request->run(inputs, &outputs);
  record.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  for (size_t i = 0; status.ok() && i < outputs.size(); ++i) {
    if (outputs[i].shape.empty() || outputs[i].shape[0] != size) {
      status = {kInternal, "output " + std::to_string(i) + " of a batch of " +
                               std::to_string(size) + " rows does not have " +
                               std::to_string(size) + " rows"};
    }
  }
  record.ok = status.ok();
  {
    std::lock_guard lock(stats_mutex_);
    records_.push_back(std::move(record));
  }
  int64_t start = 0;
  for (const auto& t : batch) {
    std::vector<Tensor> own;
    if (status.ok()) {
      for (const auto& o : outputs) {
        size_t row = o.bytes.size() / static_cast<size_t>(size);
        Tensor part{o.dtype, o.shape, o.bytes.substr(start * row, t.rows * row)};
        part.shape[0] = t.rows;
        own.push_back(std::move(part));
      }
    }
    start += t.rows;
    Answer(t, status, std::move(own));
  }
}

void Batcher::Answer(const Task& task, const Status& status, std::vector<Tensor> outputs) {
  Request& r = *task.request;
  {
    std::lock_guard lock(r.mutex);
    if (!status.ok() && r.error.ok()) r.error = status;
    r.results[task.part] = std::move(outputs);
    if (--r.remaining > 0) return;
  }
  // The last part: no other thread touches the request any more.
  if (!r.error.ok()) return r.done(r.error, {});
  if (r.results.size() == 1) return r.done(status, std::move(r.results[0]));
  std::vector<Tensor> joined = std::move(r.results[0]);
  for (size_t p = 1; p < r.results.size(); ++p) {
    for (size_t i = 0; i < joined.size(); ++i) {
      joined[i].bytes += r.results[p][i].bytes;
      joined[i].shape[0] += r.results[p][i].shape[0];
    }
  }
  r.done(status, std::move(joined));
}

std::string Batcher::TakeStats() {
  std::vector<BatchRecord> records;
  std::map<std::string, int64_t> rows;
  {
    std::lock_guard lock(stats_mutex_);
    records.swap(records_);
  }
  {
    std::lock_guard lock(mutex_);
    rows.swap(queue_rows_);
  }
  std::string out = "batches\t" + std::to_string(records.size()) + "\t" +
                    std::to_string(rows.size()) + "\n";
  for (const auto& r : records) {
    out += r.model + "\t" + std::to_string(r.version) + "\t" + r.signature + "\t" +
           std::to_string(r.size) + "\t" + std::to_string(r.rows) + "\t" +
           std::to_string(r.seconds) + "\t" + (r.ok ? "1" : "0") + "\t";
    for (size_t i = 0; i < r.waits.size(); ++i) {
      out += (i ? "," : "") + std::to_string(r.waits[i]);
    }
    out += "\n";
  }
  for (const auto& [key, n] : rows) out += key + "\t" + std::to_string(n) + "\n";
  return out;
}

}  // namespace predictd
