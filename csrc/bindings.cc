// featx._runner: Python bindings only. Logic and validation live in the core library; the
// lambdas here only convert between numpy arrays and buffers and release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <chrono>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "image.h"
#include "ort_library.h"
#include "pipeline.h"
#include "session.h"
#include "sources.h"
#include "tar.h"

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
  if (spec.contains("policy")) {
    parsed.resize_mode = featx::parse_policy(spec_field<std::string>(spec, "policy"));
  }
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
                                             bool arena, bool spinning) {
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

// How long next() waits with the GIL released before it looks for signals: Ctrl-C then stops a
// job within this time even while a worker is stuck in a read.
constexpr std::chrono::milliseconds kSignalCheckInterval{100};

// Blocks with items still to decode that a block source holds: the one being decoded and the
// next, ready; the reader fetches the one after while the first is finished.
constexpr int kBlocksAhead = 2;

py::tuple next_batch(featx::BatchPipeline& pipeline, const py::object& self) {
  featx::PreparedBatch batch;
  featx::BatchPipeline::Next got = featx::BatchPipeline::Next::kTimedOut;
  while (got == featx::BatchPipeline::Next::kTimedOut) {
    {
      py::gil_scoped_release release;
      got = pipeline.next(batch, kSignalCheckInterval);
    }
    if (got == featx::BatchPipeline::Next::kTimedOut && PyErr_CheckSignals() != 0) {
      throw py::error_already_set();
    }
  }
  if (got == featx::BatchPipeline::Next::kEnd) return py::tuple();
  const featx::PreprocessSpec& spec = pipeline.spec();
  const py::dtype dtype(spec.output_type == featx::TensorType::kFloat16 ? "float16" : "float32");
  // A view of the pipeline's buffer, valid until the next call; `self` keeps the buffer alive.
  py::array tensor(
      dtype, {batch.rows, py::ssize_t{3}, py::ssize_t{spec.crop_size}, py::ssize_t{spec.crop_size}},
      batch.tensor, self);
  py::list statuses;
  for (const featx::DecodeResult& result : *batch.results) {
    statuses.append(py::make_tuple(status_name(result.status), result.message));
  }
  return py::make_tuple(batch.first_item, batch.rows, tensor, statuses);
}

// (H, W, 3) uint8 image dimensions, checked.
std::pair<int, int> rgb_size(const py::array_t<uint8_t, py::array::c_style>& rgb) {
  constexpr auto kMaxSide = py::ssize_t{std::numeric_limits<int>::max()};
  if (rgb.ndim() != 3 || rgb.shape(2) != 3 || rgb.shape(0) > kMaxSide || rgb.shape(1) > kMaxSide) {
    throw std::invalid_argument("rgb must be an (H, W, 3) uint8 array");
  }
  return {static_cast<int>(rgb.shape(0)), static_cast<int>(rgb.shape(1))};
}

// Joins the pipeline's workers with the GIL released: a worker may be waiting for the GIL to
// call the Python fallback decoder, and would never get it while the join holds it.
struct ReleaseGilAndDelete {
  void operator()(featx::BatchPipeline* pipeline) const {
    py::gil_scoped_release release;
    std::default_delete<featx::BatchPipeline>()(pipeline);
  }
};

// `value` in a shared_ptr that deletes it with the GIL held, whichever thread drops the last
// reference: how Python objects are kept by the pipeline's threads.
template <typename T>
std::shared_ptr<T> held_with_gil(T value) {
  return std::shared_ptr<T>(std::make_unique<T>(std::move(value)).release(), [](T* object) {
    py::gil_scoped_acquire gil;
    std::default_delete<T>()(object);
  });
}

// The pipeline's fallback decoder from a Python callable: (item, encoded bytes as a read-only
// memoryview, valid only during the call) -> (H, W, 3) uint8 RGB array, or a str saying why the
// item is unusable. The workers call it concurrently, each taking the GIL for the call (Pillow
// releases it while it decodes) and releasing it to preprocess.
featx::FallbackDecoder python_fallback(py::object decode, const featx::PreprocessSpec& spec) {
  if (decode.is_none()) return nullptr;
  std::shared_ptr<py::object> held = held_with_gil(std::move(decode));
  return [held, spec](int64_t item, const uint8_t* data, size_t size,
                      void* out) -> featx::DecodeResult {
    py::gil_scoped_acquire gil;
    py::memoryview encoded = py::memoryview::from_memory(data, static_cast<py::ssize_t>(size));
    py::object decoded;
    try {
      decoded = (*held)(item, encoded);
    } catch (...) {
      encoded.attr("release")();
      throw;
    }
    // The bytes belong to the pipeline: a view kept past the call would outlive them.
    encoded.attr("release")();
    if (py::isinstance<py::str>(decoded)) {
      return {featx::DecodeStatus::kError, decoded.cast<std::string>()};
    }
    const auto rgb = decoded.cast<py::array_t<uint8_t, py::array::c_style>>();
    const auto [height, width] = rgb_size(rgb);
    const uint8_t* pixels = rgb.data();
    try {
      py::gil_scoped_release release;
      featx::preprocess_rgb(pixels, height, width, spec, out);
    } catch (const std::invalid_argument& err) {
      return {featx::DecodeStatus::kError, err.what()};
    }
    return {};
  };
}

using Int64Array = py::array_t<int64_t, py::array::c_style>;

// What a Python block reader's block holds on to while the pipeline uses its memory.
struct PythonBlock {
  py::buffer data;
  py::buffer_info data_view;
  Int64Array starts;
  Int64Array sizes;
};

// The pipeline's block reader from a Python callable: () -> None at the end, (count, reason)
// for `count` items that cannot be read, or (data, starts, sizes): a bytes-like buffer and two
// int64 arrays, one entry per item (size -1: no image). Nothing is copied: the block keeps the
// buffer, released with the GIL once its last item is decoded.
featx::BlockReader python_block_reader(py::object read) {
  std::shared_ptr<py::object> held = held_with_gil(std::move(read));
  return [held]() -> std::optional<featx::EncodedBlock> {
    py::gil_scoped_acquire gil;
    const py::object got = (*held)();
    if (got.is_none()) return std::nullopt;
    const auto parts = got.cast<py::tuple>();
    featx::EncodedBlock block;
    if (parts.size() == 2) {
      block.count = parts[0].cast<int64_t>();
      block.error = parts[1].cast<std::string>();
      return block;
    }
    if (parts.size() != 3) {
      throw std::invalid_argument(
          "a block reader returns None, (count, reason) or (data, starts, sizes)");
    }
    PythonBlock kept{
        parts[0].cast<py::buffer>(), {}, parts[1].cast<Int64Array>(), parts[2].cast<Int64Array>()};
    kept.data_view = kept.data.request();
    if (kept.data_view.itemsize != 1 || kept.data_view.ndim != 1 || kept.starts.ndim() != 1 ||
        kept.sizes.ndim() != 1 || kept.starts.shape(0) != kept.sizes.shape(0)) {
      throw std::invalid_argument(
          "a block is a 1-d bytes buffer and two 1-d int64 arrays of the same length");
    }
    block.count = kept.starts.shape(0);
    block.data = static_cast<const uint8_t*>(kept.data_view.ptr);
    block.data_size = static_cast<size_t>(kept.data_view.size);
    block.starts = kept.starts.data();
    block.sizes = kept.sizes.data();
    block.memory = held_with_gil(std::move(kept));
    return block;
  };
}

// The source of a pipeline's items, from BatchPipeline's arguments.
std::unique_ptr<featx::ItemSource> item_source(std::vector<std::string> paths,
                                               std::vector<int64_t> offsets,
                                               std::vector<int64_t> sizes, py::object blocks,
                                               int64_t items) {
  if (!blocks.is_none()) {
    if (!paths.empty() || !offsets.empty() || !sizes.empty()) {
      throw std::invalid_argument("items come from paths (and byte ranges) or from blocks");
    }
    return std::make_unique<featx::BlockSource>(items, python_block_reader(std::move(blocks)),
                                                kBlocksAhead);
  }
  if (offsets.empty() && sizes.empty()) {
    return std::make_unique<featx::FileSource>(std::move(paths));
  }
  return std::make_unique<featx::RangeSource>(std::move(paths), std::move(offsets),
                                              std::move(sizes));
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

  m.def(
      "model_metadata",
      [](const std::string& path) {
        py::gil_scoped_release release;
        return featx::model_metadata(path);
      },
      py::arg("path"),
      "The custom metadata map of an ONNX file, read by ONNX Runtime (no graph optimisation).");

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
      "featx.runtime.decode.decode_rgb and call preprocess_rgb.");
  m.def(
      "preprocess_rgb",
      [](const py::array_t<uint8_t, py::array::c_style>& rgb, const py::dict& spec_dict) {
        const featx::PreprocessSpec spec = spec_from_dict(spec_dict);
        const auto [height, width] = rgb_size(rgb);
        py::array tensor = tensor_for(spec);
        void* out = tensor.mutable_data();
        const uint8_t* pixels = rgb.data();
        {
          py::gil_scoped_release released;
          featx::preprocess_rgb(pixels, height, width, spec, out);
        }
        return tensor;
      },
      py::arg("rgb"), py::arg("spec"),
      "Preprocess a decoded, oriented (H, W, 3) uint8 RGB image -> (3, crop, crop) tensor.");

  m.def(
      "index_webdataset",
      [](const std::string& path, const std::vector<std::string>& image_extensions) {
        std::vector<featx::TarSample> samples;
        {
          py::gil_scoped_release released;
          samples = featx::index_webdataset(path, image_extensions);
        }
        const auto count = static_cast<py::ssize_t>(samples.size());
        py::list keys(count);
        py::array_t<int64_t> offsets(count);
        py::array_t<int64_t> sizes(count);
        py::dict errors;
        auto offset = offsets.mutable_unchecked<1>();
        auto size = sizes.mutable_unchecked<1>();
        for (py::ssize_t i = 0; i < count; ++i) {
          const featx::TarSample& sample = samples[static_cast<size_t>(i)];
          keys[i] = py::str(sample.key);
          offset(i) = sample.offset;
          size(i) = sample.size;
          if (!sample.error.empty()) errors[py::int_(i)] = py::str(sample.error);
        }
        return py::make_tuple(keys, offsets, sizes, errors);
      },
      py::arg("path"), py::arg("image_extensions"),
      "The samples of a WebDataset tar -> (keys, offsets, sizes, {index: error}): the image "
      "member's byte range per sample (size -1 where the sample is unusable).");

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

  py::class_<featx::BatchPipeline, std::unique_ptr<featx::BatchPipeline, ReleaseGilAndDelete>>(
      m, "BatchPipeline")
      .def(py::init([](std::vector<int64_t> batch_ends, const py::dict& spec, int workers,
                       int prefetch, std::vector<std::string> paths, std::vector<int64_t> offsets,
                       std::vector<int64_t> sizes, py::object blocks, py::object fallback) {
             const featx::PreprocessSpec parsed = spec_from_dict(spec);
             const int64_t items = batch_ends.empty() ? 0 : batch_ends.back();
             auto source = item_source(std::move(paths), std::move(offsets), std::move(sizes),
                                       std::move(blocks), items);
             return std::unique_ptr<featx::BatchPipeline, ReleaseGilAndDelete>(
                 std::make_unique<featx::BatchPipeline>(
                     std::move(source), std::move(batch_ends), parsed, workers, prefetch,
                     python_fallback(std::move(fallback), parsed))
                     .release());
           }),
           py::arg("batch_ends"), py::arg("spec"), py::arg("workers"), py::arg("prefetch"),
           py::arg("paths") = std::vector<std::string>{},
           py::arg("offsets") = std::vector<int64_t>{}, py::arg("sizes") = std::vector<int64_t>{},
           py::arg("blocks") = py::none(), py::arg("fallback") = py::none(),
           "Items are whole files (paths), byte ranges of them (paths, offsets, sizes: tar "
           "members), or come from blocks() -> None | (count, reason) | (data, starts, sizes), "
           "called by a reading thread ahead of the workers (parquet record batches). "
           "fallback(item, encoded: memoryview) -> RGB array or str (why unusable) decodes, in "
           "the worker threads, what the C++ decoder cannot; without it such rows come back as "
           "'fallback'.")
      .def(
          "next",
          [](py::object self) -> py::object {
            py::tuple batch = next_batch(self.cast<featx::BatchPipeline&>(), self);
            return batch.empty() ? py::none() : py::object(batch);
          },
          "Next batch (first_item, rows, tensor view, [(status, message)]) or None at the end.")
      .def("cancel", &featx::BatchPipeline::cancel);
}
