// A cheap gRPC load generator for benchmarks/serving_load.py.
//
//   grpc_load ADDRESS METHOD REQUEST_FILE CONCURRENCY SECONDS CHANNELS LATENCIES_FILE
//
// Keeps exactly CONCURRENCY unary calls of METHOD in flight for SECONDS, spread round-robin over
// CHANNELS channels (each its own TCP connection, so a server with several processes on one
// port sees several connections). The request is the pre-serialised bytes of REQUEST_FILE, sent
// through the generic stub: nothing is parsed or built per call. One thread and one completion
// queue: the point is to leave the CPU to the server (a Python client costs about as much CPU
// per call as the server does). Every call has a 10 s deadline; its status is checked (errors
// are counted by code) and an OK reply must be non-empty. Latencies (float64 seconds, OK calls
// only) go to LATENCIES_FILE; one JSON line on stdout summarises the run.

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

using Clock = std::chrono::steady_clock;

namespace {

const char* CodeName(grpc::StatusCode code) {
  static const char* names[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  int i = static_cast<int>(code);
  return i >= 0 && i <= 16 ? names[i] : "UNKNOWN";
}

double CpuSeconds() {
  rusage r;
  getrusage(RUSAGE_SELF, &r);
  return r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec +
         r.ru_stime.tv_usec * 1e-6;
}

struct Call {
  grpc::ClientContext context;
  grpc::ByteBuffer reply;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  Clock::time_point started;
  size_t channel = 0;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s ADDRESS METHOD REQUEST_FILE CONCURRENCY SECONDS CHANNELS "
                 "LATENCIES_FILE\n", argv[0]);
    return 2;
  }
  const std::string address = argv[1], method = argv[2];
  std::ifstream in(argv[3], std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", argv[3]);
    return 2;
  }
  const std::string payload((std::istreambuf_iterator<char>(in)), {});
  const int concurrency = std::stoi(argv[4]);
  const double seconds = std::stod(argv[5]);
  const size_t n_channels = std::max(1, std::stoi(argv[6]));

  grpc::Slice slice(payload);
  const grpc::ByteBuffer request(&slice, 1);
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (size_t i = 0; i < n_channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // do not share connections
    args.SetInt("zoo.load.channel", static_cast<int>(i));
    args.SetMaxReceiveMessageSize(-1);
    auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30))) {
      std::fprintf(stderr, "cannot connect to %s\n", address.c_str());
      return 1;
    }
    stubs.push_back(std::make_unique<grpc::GenericStub>(channel));
  }

  grpc::CompletionQueue queue;
  auto start_call = [&](size_t channel) {
    auto* call = new Call;
    call->channel = channel;
    call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    call->started = Clock::now();
    call->reader = stubs[channel]->PrepareUnaryCall(&call->context, method, request, &queue);
    call->reader->StartCall();
    call->reader->Finish(&call->reply, &call->status, call);
  };

  std::vector<double> latencies;
  latencies.reserve(1 << 20);
  std::map<std::string, long> errors;
  const double cpu0 = CpuSeconds();
  const auto t0 = Clock::now();
  const auto stop_at = t0 + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(seconds));
  for (int i = 0; i < concurrency; ++i) start_call(i % n_channels);
  int in_flight = concurrency;
  void* tag;
  bool ok;
  while (in_flight > 0 && queue.Next(&tag, &ok)) {
    auto* call = static_cast<Call*>(tag);
    const auto now = Clock::now();
    if (call->status.ok() && call->reply.Length() > 0) {
      latencies.push_back(std::chrono::duration<double>(now - call->started).count());
    } else {
      ++errors[call->status.ok() ? "EMPTY_REPLY" : CodeName(call->status.error_code())];
    }
    const size_t channel = call->channel;
    delete call;
    if (now < stop_at) {
      start_call(channel);
    } else {
      --in_flight;
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = CpuSeconds() - cpu0;

  std::ofstream out(argv[7], std::ios::binary);
  out.write(reinterpret_cast<const char*>(latencies.data()),
            static_cast<std::streamsize>(latencies.size() * sizeof(double)));
  std::printf("{\"requests\": %zu, \"elapsed\": %.6f, \"client_cpu_seconds\": %.6f, \"errors\": {",
              latencies.size(), elapsed, cpu);
  const char* sep = "";
  for (const auto& [name, count] : errors) {
    std::printf("%s\"%s\": %ld", sep, name.c_str(), count);
    sep = ", ";
  }
  std::printf("}}\n");
  return 0;
}
