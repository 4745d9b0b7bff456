#include "ort_library.h"

#include <dlfcn.h>

#include <memory>
#include <mutex>
#include <stdexcept>

#include "onnxruntime_cxx_api.h"

namespace {

using GetApiBaseFn = const OrtApiBase*(ORT_API_CALL*)();

struct DlCloser {
  void operator()(void* handle) const {
    if (handle != nullptr) dlclose(handle);
  }
};

struct LoadedLibrary {
  std::unique_ptr<void, DlCloser> handle;
  GetApiBaseFn get_api_base = nullptr;
  std::string path;
};

std::mutex g_mutex;
LoadedLibrary g_library;

const LoadedLibrary& loaded_library() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_library.handle) {
    throw std::runtime_error(
        "ONNX Runtime is not loaded: call featx._runner.load_onnxruntime(path) first "
        "(featx.Runner does this for you)");
  }
  return g_library;
}

}  // namespace

// The C++ API's inline helpers call OrtGetApiBase(); with nothing linked from ORT, this module
// provides it and forwards to the dlopen'ed library. Hidden visibility keeps it private to
// featx._runner.
extern "C" const OrtApiBase* ORT_API_CALL OrtGetApiBase(void) NO_EXCEPTION {
  return g_library.get_api_base();
}

namespace featx {

void load_onnxruntime(const std::string& library_path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_library.handle) {
    if (g_library.path == library_path) return;
    throw std::runtime_error("ONNX Runtime is already loaded from '" + g_library.path +
                             "'; refusing to load a second copy from '" + library_path + "'");
  }
  std::unique_ptr<void, DlCloser> handle(dlopen(library_path.c_str(), RTLD_NOW | RTLD_LOCAL));
  if (!handle) {
    const char* reason = dlerror();
    throw std::runtime_error("cannot load ONNX Runtime from '" + library_path +
                             "': " + (reason != nullptr ? reason : "unknown dlopen error"));
  }
  auto get_api_base = reinterpret_cast<GetApiBaseFn>(dlsym(handle.get(), "OrtGetApiBase"));
  if (get_api_base == nullptr) {
    throw std::runtime_error("'" + library_path +
                             "' is not an ONNX Runtime library (no OrtGetApiBase symbol)");
  }
  const OrtApi* api = get_api_base()->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    throw std::runtime_error("ONNX Runtime " + std::string(get_api_base()->GetVersionString()) +
                             " at '" + library_path + "' is older than featx needs (API version " +
                             std::to_string(ORT_API_VERSION) +
                             ", ORT 1.21); upgrade the onnxruntime package");
  }
  Ort::InitApi(api);
  g_library.handle = std::move(handle);
  g_library.get_api_base = get_api_base;
  g_library.path = library_path;
}

bool onnxruntime_loaded() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<bool>(g_library.handle);
}

std::string onnxruntime_library_path() { return loaded_library().path; }

std::string onnxruntime_version() {
  loaded_library();
  return Ort::GetVersionString();
}

std::vector<std::string> onnxruntime_providers() {
  loaded_library();
  return Ort::GetAvailableProviders();
}

}  // namespace featx
