// TensorFlow's C API, reached through function pointers into the wheel's libtensorflow_cc.so.2,
// opened with dlopen(RTLD_LOCAL | RTLD_DEEPBIND): its own protobuf and RE2 copies then bind
// inside it, and this program's (Debian's, for grpc++) stay apart whatever the link order
// (docs/ARCHITECTURE.md, "The native data plane"). Only the header's types are used here.
#pragma once

#include <string>

#include "tensorflow/c/c_api.h"

namespace predictd {

struct TfApi {
#define PREDICTD_TF_FUNCTIONS(X)                                                           \
  X(TF_NewStatus) X(TF_DeleteStatus) X(TF_GetCode) X(TF_Message) X(TF_NewGraph)           \
  X(TF_DeleteGraph) X(TF_NewSessionOptions) X(TF_DeleteSessionOptions) X(TF_SetConfig)    \
  X(TF_LoadSessionFromSavedModel) X(TF_CloseSession) X(TF_DeleteSession)                  \
  X(TF_GraphOperationByName) X(TF_SessionRun) X(TF_NewTensor) X(TF_DeleteTensor)          \
  X(TF_TensorData) X(TF_TensorByteSize) X(TF_TensorType) X(TF_NumDims) X(TF_Dim)
#define PREDICTD_TF_POINTER(name) decltype(&::name) name = nullptr;
  PREDICTD_TF_FUNCTIONS(PREDICTD_TF_POINTER)
#undef PREDICTD_TF_POINTER

  // Opens `library` and resolves every function; false with `error` set if it cannot.
  bool Open(const std::string& library, std::string* error);
};

}  // namespace predictd
