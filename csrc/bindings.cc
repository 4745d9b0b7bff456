// featx._runner: Python bindings only. Logic and validation live in the core library; the
// lambdas here only convert between numpy arrays and buffers and release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ort_library.h"
#include "session.h"

namespace py = pybind11;

namespace {

featx::TensorType array_type(const py::array& array) {
  if (array.dtype().is(py::dtype::of<float>())) return featx::TensorType::kFloat32;
  if (array.dtype().kind() == 'f' && array.itemsize() == 2) return featx::TensorType::kFloat16;
  throw py::value_error("images must be a float32 or float16 array, got dtype " +
                        py::str(array.dtype()).cast<std::string>());
}

py::array run_session(const featx::Session& session, const py::array& images) {
  if (!(images.flags() & py::array::c_style)) {
    throw py::value_error("images must be C-contiguous (np.ascontiguousarray)");
  }
  const featx::TensorType type = array_type(images);
  std::vector<int64_t> shape(images.shape(), images.shape() + images.ndim());
  const py::dtype out_dtype = session.output_type() == featx::TensorType::kFloat32
                                  ? py::dtype::of<float>()
                                  : py::dtype("float16");
  py::array embeddings(
      out_dtype, std::vector<py::ssize_t>{shape.empty() ? 0 : shape[0], session.embedding_dim()});
  const void* input = images.data();
  void* output = embeddings.mutable_data();
  {
    py::gil_scoped_release release;
    session.run(input, type, shape, output);
  }
  return embeddings;
}

std::unique_ptr<featx::Session> open_session(const std::string& path, const std::string& device,
                                             int threads, const std::string& optimization,
                                             bool arena) {
  featx::SessionConfig config;
  config.model_path = path;
  if (device != "cpu" && device != "cuda") {
    throw py::value_error("device must be 'cpu' or 'cuda', got '" + device + "'");
  }
  config.device = device == "cuda" ? featx::Device::kCuda : featx::Device::kCpu;
  config.intra_op_threads = threads;
  config.optimization_level = optimization;
  config.memory_arena = arena;
  config.allow_spinning = spinning;
  py::gil_scoped_release release;
  return std::make_unique<featx::Session>(config);
}

}  // namespace

PYBIND11_MODULE(_runner, m) {
  m.doc() = "featx native runner (ONNX Runtime C++ API)";
  py::register_exception<std::invalid_argument>(m, "InvalidArgument", PyExc_ValueError);

  m.def("load_onnxruntime", &featx::load_onnxruntime, py::arg("library_path"),
        "Load the ONNX Runtime shared library and initialise its C++ API.");
  m.def("onnxruntime_loaded", &featx::onnxruntime_loaded);
  m.def("onnxruntime_library_path", &featx::onnxruntime_library_path);
  m.def("onnxruntime_version", &featx::onnxruntime_version);
  m.def("onnxruntime_providers", &featx::onnxruntime_providers);

  py::class_<featx::Session>(m, "Session")
      .def(py::init(&open_session), py::arg("model_path"), py::arg("device") = "cpu",
           py::arg("threads") = 0, py::arg("optimization") = "all", py::arg("memory_arena") = true,
           py::arg("spinning") = true)
      .def("run", &run_session, py::arg("images"),
           "(batch, 3, H, W) images -> (batch, D) embeddings; the GIL is released meanwhile.")
      .def_property_readonly("embedding_dim", &featx::Session::embedding_dim)
      .def_property_readonly("input_chw", &featx::Session::input_chw)
      .def_property_readonly("provider", &featx::Session::provider)
      .def_property_readonly("metadata", &featx::Session::metadata);
}
