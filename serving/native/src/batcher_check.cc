// The batcher (batcher.cc) under concurrent callers, for ThreadSanitizer: `make native-check`
// builds this with -fsanitize=thread and runs it; a report ends it non-zero. Callers on
// several threads submit requests of 1-20 rows (more than max_batch_size: split) to queues of
// two dimensions and a model whose runs fail, each waiting for its answer; every answer must be
// its own rows (the run adds a row's number to it), every batch an allowed size, a refusal the
// queue-full message. No TensorFlow and no gRPC (docs/ARCHITECTURE.md, "The native data
// plane").
//
//   batcher_check [REQUESTS_PER_CALLER] [CALLERS]

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <thread>

#include "batcher.h"

using namespace predictd;

namespace {

constexpr int kFloat = 1;  // DT_FLOAT

std::atomic<int64_t> runs{0}, bad_sizes{0};

// Outputs y = 2x + 1 and each row's first element: by both a caller checks it got its own rows.
Status Run(std::vector<Input>& inputs, std::vector<Tensor>* outputs, bool fail) {
  runs.fetch_add(1);
  int64_t size = inputs[0].shape[0];
  if (size != 2 && size != 4 && size != 8) bad_sizes.fetch_add(1);
  if (fail) return {3, "InvalidArgumentError: this model fails"};
  const std::string& in = *inputs[0].bytes;
  Tensor y{kFloat, inputs[0].shape, std::string(in.size(), '\0')};
  const float* x = reinterpret_cast<const float*>(in.data());
  float* out = reinterpret_cast<float*>(y.bytes.data());
  for (size_t i = 0; i < in.size() / 4; ++i) out[i] = 2 * x[i] + 1;
  Tensor rows{kFloat, {size}, std::string(size * 4, '\0')};
  size_t row = in.size() / 4 / static_cast<size_t>(size);
  for (int64_t r = 0; r < size; ++r) std::memcpy(&rows.bytes[r * 4], &x[r * row], 4);
  outputs->push_back(std::move(y));
  outputs->push_back(std::move(rows));
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  int per_caller = argc > 1 ? std::atoi(argv[1]) : 1000;
  int callers = argc > 2 ? std::atoi(argv[2]) : 8;
  TensorSpec spec{"x", "x:0", kFloat, {-1, -1}};
  BatchOptions o;
  o.max_batch_size = 8;
  o.batch_timeout_micros = 300;
  o.max_enqueued_batches = 4;
  o.num_batch_threads = 3;
  o.allowed_batch_sizes = {2, 4, 8};
  std::atomic<int64_t> answered{0}, refused{0}, failed{0}, wrong{0};
  {
    Batcher batcher(o);
    std::vector<std::thread> threads;
    for (int c = 0; c < callers; ++c) {
      threads.emplace_back([&, c] {
        std::mt19937 rng(c);
        for (int i = 0; i < per_caller; ++i) {
          int64_t rows = 1 + rng() % 20, width = rng() % 2 ? 3 : 5;
          bool fail = rng() % 10 == 0;
          float base = static_cast<float>(c * 100000 + i * 100);
          Input in{&spec, {rows, width}, std::make_unique<std::string>(rows * width * 4, '\0')};
          float* x = reinterpret_cast<float*>(in.bytes->data());
          for (int64_t k = 0; k < rows * width; ++k) x[k] = base + static_cast<float>(k);
          std::vector<Input> inputs;
          inputs.push_back(std::move(in));
          std::promise<std::pair<Status, std::vector<Tensor>>> answer;
          Status s = batcher.Submit(
              fail ? "bad" : "good", 1, "serving_default", std::move(inputs),
              [fail](std::vector<Input>& in, std::vector<Tensor>* out) {
                return Run(in, out, fail);
              },
              [&answer](const Status& st, std::vector<Tensor> out) {
                answer.set_value({st, std::move(out)});
              });
          if (!s.ok()) {
            bool ok = s.code == 14 && s.message.rfind("The batch scheduling queue", 0) == 0;
            (ok ? refused : wrong).fetch_add(1);
            continue;
          }
          auto [st, out] = answer.get_future().get();
          if (fail) {
            (st.code == 3 ? failed : wrong).fetch_add(1);
            continue;
          }
          bool ok = st.ok() && out.size() == 2 && out[0].shape == std::vector<int64_t>{rows, width}
                    && out[1].shape == std::vector<int64_t>{rows};
          for (int64_t k = 0; ok && k < rows * width; ++k) {
            ok = reinterpret_cast<const float*>(out[0].bytes.data())[k] ==
                 2 * (base + static_cast<float>(k)) + 1;
          }
          for (int64_t r = 0; ok && r < rows; ++r) {
            ok = reinterpret_cast<const float*>(out[1].bytes.data())[r] ==
                 base + static_cast<float>(r * width);
          }
          (ok ? answered : wrong).fetch_add(1);
        }
      });
    }
    for (auto& t : threads) t.join();
    std::string stats = batcher.TakeStats();
    if (stats.rfind("batches\t", 0) != 0) {
      std::fprintf(stderr, "stats do not start with batches: %s\n", stats.c_str());
      return 1;
    }
  }
  std::printf("batcher_check: %lld answered, %lld failed runs, %lld refused, %lld wrong, "
              "%lld batches, %lld of a size not allowed\n",
              static_cast<long long>(answered), static_cast<long long>(failed),
              static_cast<long long>(refused), static_cast<long long>(wrong),
              static_cast<long long>(runs.load()), static_cast<long long>(bad_sizes.load()));
  return wrong == 0 && bad_sizes == 0 && answered > 0 ? 0 : 1;
}
