// Loading of the ONNX Runtime shared library at run time.
//
// featx compiles against ORT's C++ headers with ORT_API_MANUAL_INIT and links nothing from ORT:
// the library shipped by the installed onnxruntime Python package is dlopen'ed here and the C++
// API is initialised against it. This keeps the extension free of versioned ORT symbols, so any
// ORT at or above the headers' API version works.
#pragma once

#include <string>
#include <vector>

namespace featx {

// Loads the ORT library at `library_path` and initialises the C++ API. Loading the same path
// twice is a no-op; a second, different path is refused (one ORT per process).
// Throws std::runtime_error naming the path and the reason on failure.
void load_onnxruntime(const std::string& library_path);

bool onnxruntime_loaded();

// Path given to load_onnxruntime(); throws if nothing is loaded yet.
std::string onnxruntime_library_path();

// Version string reported by the loaded library (e.g. "1.31.1").
std::string onnxruntime_version();

// Execution providers compiled into the loaded library (e.g. "CPUExecutionProvider").
std::vector<std::string> onnxruntime_providers();

}  // namespace featx
