#include "tf_api.h"

#include <dlfcn.h>

namespace predictd {

bool TfApi::Open(const std::string& library, std::string* error) {
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!handle) {
    *error = dlerror();
    return false;
  }
#define PREDICTD_TF_RESOLVE(name)                                         \
  name = reinterpret_cast<decltype(name)>(dlsym(handle, #name));         \
  if (!name) {                                                            \
    *error = std::string(#name " not found in ") + library;               \
    return false;                                                         \
  }
  PREDICTD_TF_FUNCTIONS(PREDICTD_TF_RESOLVE)
#undef PREDICTD_TF_RESOLVE
  return true;
}

}  // namespace predictd
