// featx._runner: Python bindings only. Logic and validation live in the core library.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ort_library.h"

namespace py = pybind11;

PYBIND11_MODULE(_runner, m) {
  m.doc() = "featx native runner (ONNX Runtime C++ API)";
  m.def("load_onnxruntime", &featx::load_onnxruntime, py::arg("library_path"),
        "Load the ONNX Runtime shared library and initialise its C++ API.");
  m.def("onnxruntime_loaded", &featx::onnxruntime_loaded);
  m.def("onnxruntime_library_path", &featx::onnxruntime_library_path);
  m.def("onnxruntime_version", &featx::onnxruntime_version);
  m.def("onnxruntime_providers", &featx::onnxruntime_providers);
}
