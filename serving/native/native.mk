# The native data plane (docs/ARCHITECTURE.md, "The native data plane"), built into build/native/:
# C++ message classes generated at build time from the descriptors inside the installed _pb2
# modules (serving/native/descriptors.py), and predictd over TensorFlow's C API (the wheel's
# library, opened at run time). Needs g++, libgrpc++-dev, protobuf-compiler-grpc,
# libprotobuf-dev. Included by the top-level Makefile: `make native`.
NATIVE_OUT := build/native
NATIVE_GEN := $(NATIVE_OUT)/gen
NATIVE_SRC := serving/native/src
CXX ?= g++
NATIVE_CXXFLAGS := -std=c++17 -O2 -g -Wall -Wno-unused-parameter -Wno-switch -fPIC
# What the request path compiles: predict.proto, Triton's grpc_service.proto (the Open
# Inference Protocol) and the files they import.
NATIVE_PROTOS := tensorflow/core/framework/tensor_shape tensorflow/core/framework/types \
	tensorflow/core/framework/resource_handle tensorflow/core/framework/tensor \
	tensorflow_serving/apis/model tensorflow_serving/apis/predict model_config grpc_service
NATIVE_PB_CC := $(NATIVE_PROTOS:%=$(NATIVE_GEN)/%.pb.cc)
NATIVE_PB_O := $(NATIVE_PB_CC:%.cc=%.o)
NATIVE_GRPC = $(shell pkg-config --libs grpc++ protobuf)
# What the build needs of Python (descriptors.py, the wheel's headers): the .venv, or nothing
# where PY is an interpreter that has the packages (the Dockerfile: PY=python NATIVE_PY_READY=).
NATIVE_PY_READY ?= $(VENV)/.installed

$(NATIVE_OUT)/descriptors.pb: serving/native/descriptors.py $(NATIVE_PY_READY)
	@mkdir -p $(NATIVE_OUT)
	$(PY) -P serving/native/descriptors.py $@ > $(NATIVE_OUT)/protos.txt

# Every non-Google file of the set (the well-known types are libprotobuf's own), with gRPC
# service stubs for those that declare services (prediction_service, Triton's grpc_service).
$(NATIVE_OUT)/generated: $(NATIVE_OUT)/descriptors.pb
	@rm -rf $(NATIVE_GEN) && mkdir -p $(NATIVE_GEN)
	protoc --descriptor_set_in=$< --cpp_out=$(NATIVE_GEN) --grpc_out=$(NATIVE_GEN) \
	  --plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) \
	  $$(grep -v '^google/' $(NATIVE_OUT)/protos.txt)
	@touch $@

$(NATIVE_PB_CC): $(NATIVE_OUT)/generated

$(NATIVE_GEN)/%.pb.o: $(NATIVE_GEN)/%.pb.cc
	$(CXX) $(NATIVE_CXXFLAGS) -I$(NATIVE_GEN) -c $< -o $@

# TensorFlow's C API headers, and only those: the wheel's include folder also holds its own
# protobuf headers, which must not meet Debian's. A folder of links to the four folders c_api.h
# reads from.
NATIVE_TF_INCLUDE := $(NATIVE_OUT)/tf_include
$(NATIVE_TF_INCLUDE): $(NATIVE_PY_READY)
	@rm -rf $@ && mkdir -p $@/tensorflow/core
	@inc=$$($(PY) -P -c 'import sysconfig, pathlib; print(pathlib.Path(sysconfig.get_paths()["purelib"]) / "tensorflow" / "include")') && \
	  ln -s $$inc/tensorflow/c $@/tensorflow/c && \
	  ln -s $$inc/tensorflow/core/platform $@/tensorflow/core/platform && \
	  ln -s $$inc/tsl $@/tsl && ln -s $$inc/xla $@/xla

$(NATIVE_OUT)/%.o: $(NATIVE_SRC)/%.cc $(wildcard $(NATIVE_SRC)/*.h) $(NATIVE_OUT)/generated \
		| $(NATIVE_TF_INCLUDE)
	$(CXX) $(NATIVE_CXXFLAGS) -I$(NATIVE_GEN) -isystem $(NATIVE_TF_INCLUDE) -c $< -o $@

$(NATIVE_OUT)/predictd: $(NATIVE_OUT)/predictd.o $(NATIVE_OUT)/decode.o \
		$(NATIVE_OUT)/infer_decode.o $(NATIVE_OUT)/tf_api.o $(NATIVE_OUT)/batcher.o \
		$(NATIVE_OUT)/session.o $(NATIVE_OUT)/auth.o $(NATIVE_PB_O)
	$(CXX) -o $@ $^ $(NATIVE_GRPC) -ldl -lpthread

native: $(NATIVE_OUT)/predictd

# `make test` and `make run` build the plane where the toolchain is installed, and say in one
# line when not (the server then runs the Python plane; tests/test_native_plane.py skips, saying
# why). NATIVE_TARGETS: what to build (make run needs no sanitizer build).
NATIVE_TOOLCHAIN := $(shell command -v $(CXX) >/dev/null && command -v protoc >/dev/null && \
	command -v grpc_cpp_plugin >/dev/null && pkg-config --exists grpc++ protobuf && echo yes)
NATIVE_TARGETS ?= native $(NATIVE_SAN_OUT)/decode_check $(NATIVE_TSAN_OUT)/batcher_check \
	$(NATIVE_OUT)/decode_bench
native-if-possible:
ifeq ($(NATIVE_TOOLCHAIN),yes)
	@$(MAKE) --no-print-directory $(NATIVE_TARGETS)
else
	@echo "[native] not built: needs g++ and pkg-config, libgrpc++-dev, protobuf-compiler-grpc, libprotobuf-dev (apt-get install g++ pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev); the server runs the Python plane"
endif

# The request decoding under AddressSanitizer + UBSan, over malformed and mutated requests
# (src/decode_check.cc); TensorFlow is not in it (the sanitizers refuse RTLD_DEEPBIND).
NATIVE_SAN_OUT := $(NATIVE_OUT)/sanitized
NATIVE_SAN_FLAGS := -std=c++17 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer -Wall -Wno-switch
NATIVE_SAN_PB_O := $(NATIVE_PROTOS:%=$(NATIVE_SAN_OUT)/%.pb.o)

$(NATIVE_SAN_OUT)/%.pb.o: $(NATIVE_GEN)/%.pb.cc
	@mkdir -p $(dir $@)
	$(CXX) $(NATIVE_SAN_FLAGS) -I$(NATIVE_GEN) -c $< -o $@

NATIVE_CHECKED := $(NATIVE_SRC)/decode_check.cc $(NATIVE_SRC)/decode.cc \
	$(NATIVE_SRC)/infer_decode.cc
$(NATIVE_SAN_OUT)/decode_check: $(NATIVE_CHECKED) $(NATIVE_SRC)/decode.h \
		$(NATIVE_SRC)/infer_decode.h $(NATIVE_SAN_PB_O)
	$(CXX) $(NATIVE_SAN_FLAGS) -I$(NATIVE_GEN) -o $@ $(NATIVE_CHECKED) $(NATIVE_SAN_PB_O) \
	  $$(pkg-config --libs protobuf)

# The batcher under ThreadSanitizer, over concurrent callers (src/batcher_check.cc): no
# TensorFlow and no gRPC in it, only the queues, the batch threads and the answers.
NATIVE_TSAN_OUT := $(NATIVE_OUT)/tsan
NATIVE_TSAN_FLAGS := -std=c++17 -O1 -g -fsanitize=thread -fno-omit-frame-pointer -Wall -Wno-switch

$(NATIVE_TSAN_OUT)/batcher_check: $(NATIVE_SRC)/batcher_check.cc $(NATIVE_SRC)/batcher.cc \
		$(NATIVE_SRC)/batcher.h $(NATIVE_SRC)/decode.h $(NATIVE_OUT)/generated
	@mkdir -p $(dir $@)
	$(CXX) $(NATIVE_TSAN_FLAGS) -I$(NATIVE_GEN) -o $@ $(NATIVE_SRC)/batcher_check.cc \
	  $(NATIVE_SRC)/batcher.cc -lpthread

native-check: $(NATIVE_SAN_OUT)/decode_check $(NATIVE_TSAN_OUT)/batcher_check
	$< $(or $(ITERATIONS),20000)
	$(NATIVE_TSAN_OUT)/batcher_check

# The request decoding's own cost, typed value fields against tensor_content
# (src/decode_bench.cc, run by benchmarks/tensor_decode.py).
$(NATIVE_OUT)/decode_bench: $(NATIVE_OUT)/decode_bench.o $(NATIVE_OUT)/decode.o $(NATIVE_PB_O)
	$(CXX) -o $@ $^ $$(pkg-config --libs protobuf)
