// featx._runner: Python bindings only. Logic and validation live in the core library.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>

#include "image.h"
#include "ort_library.h"

namespace py = pybind11;

namespace {

// spec[name] as T; a missing or mistyped field is a ValueError naming it.
template <typename T>
T spec_field(const py::dict& spec, const char* name) {
  if (!spec.contains(name)) throw std::invalid_argument(std::string("spec has no '") + name + "'");
  try {
    return spec[name].cast<T>();
  } catch (const py::cast_error&) {
    throw std::invalid_argument(std::string("spec field '") + name + "' has the wrong type: " +
                                std::string(py::str(py::type::of(spec[name]).attr("__name__"))));
  }
}

// The dict written by featx.preprocess.spec_dict (keys of featx.metadata.Preprocess + output,
// max_pixels).
featx::PreprocessSpec spec_from_dict(const py::dict& spec) {
  featx::PreprocessSpec parsed;
  parsed.crop_size = spec_field<int>(spec, "crop_size");
  parsed.resize_size = spec_field<int>(spec, "resize_size");
  parsed.interpolation = featx::parse_interpolation(spec_field<std::string>(spec, "interpolation"));
  parsed.mean = spec_field<std::array<float, 3>>(spec, "mean");
  parsed.std = spec_field<std::array<float, 3>>(spec, "std");
  parsed.output_type = featx::parse_tensor_type(spec_field<std::string>(spec, "output"));
  if (spec.contains("max_pixels")) parsed.max_pixels = spec_field<int64_t>(spec, "max_pixels");
  parsed.validate();
  return parsed;
}

// An uninitialised (3, crop, crop) array of the spec's output type.
py::array tensor_for(const featx::PreprocessSpec& spec) {
  const py::dtype dtype(spec.output_type == featx::TensorType::kFloat16 ? "float16" : "float32");
  return py::array(dtype, {3, spec.crop_size, spec.crop_size});
}

const char* status_name(featx::DecodeStatus status) {
  switch (status) {
    case featx::DecodeStatus::kOk:
      return "ok";
    case featx::DecodeStatus::kNeedsFallback:
      return "fallback";
    case featx::DecodeStatus::kError:
      return "error";
  }
  return "error";
}

}  // namespace

PYBIND11_MODULE(_runner, m) {
  m.doc() = "featx native runner (ONNX Runtime C++ API)";
  m.def("load_onnxruntime", &featx::load_onnxruntime, py::arg("library_path"),
        "Load the ONNX Runtime shared library and initialise its C++ API.");
  m.def("onnxruntime_loaded", &featx::onnxruntime_loaded);
  m.def("onnxruntime_library_path", &featx::onnxruntime_library_path);
  m.def("onnxruntime_version", &featx::onnxruntime_version);
  m.def("onnxruntime_providers", &featx::onnxruntime_providers);

  m.def(
      "preprocess_file",
      [](const std::filesystem::path& path, const py::dict& spec_dict) {
        const featx::PreprocessSpec spec = spec_from_dict(spec_dict);
        py::array tensor = tensor_for(spec);
        void* out = tensor.mutable_data();
        featx::DecodeResult result;
        {
          py::gil_scoped_release released;
          result = featx::preprocess_file(path.string(), spec, out);
        }
        const bool ok = result.status == featx::DecodeStatus::kOk;
        return py::make_tuple(status_name(result.status), result.message,
                              ok ? py::object(tensor) : py::none());
      },
      py::arg("path"), py::arg("spec"),
      "Decode + preprocess an image file -> (status 'ok'|'fallback'|'error', message, tensor or "
      "None). 'fallback': not decoded here (PNG, CMYK JPEG, ...); decode it with "
      "featx.preprocess.decode_rgb and call preprocess_rgb.");
  m.def(
      "preprocess_rgb",
      [](const py::array_t<uint8_t, py::array::c_style>& rgb, const py::dict& spec_dict) {
        const featx::PreprocessSpec spec = spec_from_dict(spec_dict);
        constexpr auto kMaxSide = py::ssize_t{std::numeric_limits<int>::max()};
        if (rgb.ndim() != 3 || rgb.shape(2) != 3 || rgb.shape(0) > kMaxSide ||
            rgb.shape(1) > kMaxSide) {
          throw std::invalid_argument("rgb must be an (H, W, 3) uint8 array");
        }
        py::array tensor = tensor_for(spec);
        void* out = tensor.mutable_data();
        const uint8_t* pixels = rgb.data();
        const auto height = static_cast<int>(rgb.shape(0));
        const auto width = static_cast<int>(rgb.shape(1));
        {
          py::gil_scoped_release released;
          featx::preprocess_rgb(pixels, height, width, spec, out);
        }
        return tensor;
      },
      py::arg("rgb"), py::arg("spec"),
      "Preprocess a decoded, oriented (H, W, 3) uint8 RGB image -> (3, crop, crop) tensor.");
}
