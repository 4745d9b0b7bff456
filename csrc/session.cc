#include "session.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "onnxruntime_cxx_api.h"
#include "ort_library.h"

namespace featx {
namespace {

// One ORT environment per process: it owns the global thread pools and logging.
Ort::Env& environment() {
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "featx");
  return env;
}

GraphOptimizationLevel optimization_level(const std::string& name) {
  if (name == "all") return ORT_ENABLE_ALL;
  if (name == "extended") return ORT_ENABLE_EXTENDED;
  if (name == "basic") return ORT_ENABLE_BASIC;
  if (name == "disabled") return ORT_DISABLE_ALL;
  throw std::invalid_argument("optimization_level must be all, extended, basic or disabled, got '" +
                              name + "'");
}

TensorType tensor_type(ONNXTensorElementDataType type, const std::string& what) {
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return TensorType::kFloat32;
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) return TensorType::kFloat16;
  throw std::runtime_error(what + " must be float32 or float16 (ONNX element type " +
                           std::to_string(static_cast<int>(type)) + ")");
}

ONNXTensorElementDataType onnx_type(TensorType type) {
  return type == TensorType::kFloat32 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                      : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
}

size_t element_bytes(TensorType type) { return type == TensorType::kFloat32 ? 4 : 2; }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + ")";
}

void append_cuda(Ort::SessionOptions& options, int device_id) {
  const auto providers = onnxruntime_providers();
  if (std::find(providers.begin(), providers.end(), "CUDAExecutionProvider") == providers.end()) {
    throw std::runtime_error(
        "device 'cuda' was asked for, but the installed ONNX Runtime has no CUDA execution "
        "provider (it has: " +
        [&] {
          std::string names;
          for (const auto& name : providers) names += (names.empty() ? "" : ", ") + name;
          return names;
        }() +
        "). Install onnxruntime-gpu instead of onnxruntime, or use --device cpu.");
  }
  OrtCUDAProviderOptions cuda{};
  cuda.device_id = device_id;
  options.AppendExecutionProvider_CUDA(cuda);
}

std::map<std::string, std::string> custom_metadata(const Ort::Session& session) {
  Ort::AllocatorWithDefaultOptions allocator;
  const Ort::ModelMetadata model_metadata = session.GetModelMetadata();
  std::map<std::string, std::string> metadata;
  for (const auto& key : model_metadata.GetCustomMetadataMapKeysAllocated(allocator)) {
    metadata[key.get()] =
        model_metadata.LookupCustomMetadataMapAllocated(key.get(), allocator).get();
  }
  return metadata;
}

Ort::Session load_session(const std::string& path, const Ort::SessionOptions& options) {
  try {
    return Ort::Session(environment(), path.c_str(), options);
  } catch (const Ort::Exception& err) {
    throw std::runtime_error("ONNX Runtime cannot load '" + path + "': " + err.what());
  }
}

}  // namespace

std::map<std::string, std::string> model_metadata(const std::string& path) {
  Ort::SessionOptions options;
  options.SetGraphOptimizationLevel(ORT_DISABLE_ALL);
  options.DisableCpuMemArena();
  options.SetIntraOpNumThreads(1);
  return custom_metadata(load_session(path, options));
}

struct Session::Impl {
  Ort::Session session{nullptr};
  Ort::MemoryInfo cpu_memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::string input_name;
  std::string output_name;
};

Session::Session(const SessionConfig& config) : impl_(std::make_unique<Impl>()) {
  if (config.intra_op_threads < 0) {
    throw std::invalid_argument("intra_op_threads must be >= 0 (0 = one per core), got " +
                                std::to_string(config.intra_op_threads));
  }
  Ort::SessionOptions options;
  options.SetGraphOptimizationLevel(optimization_level(config.optimization_level));
  options.SetIntraOpNumThreads(config.intra_op_threads);
  // One model graph, run batch after batch: parallelism within operators, not between them.
  options.SetExecutionMode(ORT_SEQUENTIAL);
  options.SetInterOpNumThreads(1);
  options.AddConfigEntry("session.intra_op.allow_spinning", config.allow_spinning ? "1" : "0");
  if (config.memory_arena) {
    options.EnableCpuMemArena();
  } else {
    options.DisableCpuMemArena();
  }
  cuda_ = config.device == Device::kCuda;
  if (cuda_) append_cuda(options, config.cuda_device_id);
  provider_ = cuda_ ? "CUDAExecutionProvider" : "CPUExecutionProvider";

  impl_->session = load_session(config.model_path, options);
  Ort::Session& session = impl_->session;
  if (session.GetInputCount() != 1 || session.GetOutputCount() != 1) {
    throw std::runtime_error(
        "'" + config.model_path + "' has " + std::to_string(session.GetInputCount()) +
        " inputs and " + std::to_string(session.GetOutputCount()) +
        " outputs; a featx model has one of each (export it with featx-export)");
  }
  Ort::AllocatorWithDefaultOptions allocator;
  impl_->input_name = session.GetInputNameAllocated(0, allocator).get();
  impl_->output_name = session.GetOutputNameAllocated(0, allocator).get();

  // The shape views borrow from their TypeInfo, which must outlive them.
  const Ort::TypeInfo input_type_info = session.GetInputTypeInfo(0);
  const auto input_info = input_type_info.GetTensorTypeAndShapeInfo();
  const auto input_shape = input_info.GetShape();
  input_type_ = tensor_type(input_info.GetElementType(), "the model input");
  if (input_shape.size() != 4 || input_shape[1] != 3 || input_shape[2] <= 0 ||
      input_shape[3] <= 0) {
    throw std::runtime_error("'" + config.model_path +
                             "' input must be (batch, 3, H, W) with fixed H and W");
  }
  input_chw_ = {input_shape[1], input_shape[2], input_shape[3]};

  const Ort::TypeInfo output_type_info = session.GetOutputTypeInfo(0);
  const auto output_info = output_type_info.GetTensorTypeAndShapeInfo();
  const auto output_shape = output_info.GetShape();
  output_type_ = tensor_type(output_info.GetElementType(), "the model output");
  if (output_shape.size() != 2 || output_shape[1] <= 0) {
    throw std::runtime_error("'" + config.model_path +
                             "' output must be (batch, D) with a fixed embedding size D");
  }
  embedding_dim_ = output_shape[1];
  metadata_ = custom_metadata(session);
}

Session::~Session() = default;

void Session::run(const void* input, TensorType type, const std::vector<int64_t>& shape,
                  void* output) const {
  if (type != input_type_) {
    throw std::invalid_argument(std::string("the model takes ") +
                                (input_type_ == TensorType::kFloat32 ? "float32" : "float16") +
                                " images, got " +
                                (type == TensorType::kFloat32 ? "float32" : "float16"));
  }
  if (shape.size() != 4 || shape[0] < 1 || shape[1] != input_chw_[0] || shape[2] != input_chw_[1] ||
      shape[3] != input_chw_[2]) {
    throw std::invalid_argument("the model takes images of shape (batch >= 1, " +
                                std::to_string(input_chw_[0]) + ", " +
                                std::to_string(input_chw_[1]) + ", " +
                                std::to_string(input_chw_[2]) + "), got " + shape_text(shape));
  }
  const int64_t batch = shape[0];
  const std::array<int64_t, 4> input_shape{batch, input_chw_[0], input_chw_[1], input_chw_[2]};
  const std::array<int64_t, 2> output_shape{batch, embedding_dim_};
  const size_t input_bytes =
      batch * input_chw_[0] * input_chw_[1] * input_chw_[2] * element_bytes(input_type_);
  const size_t output_bytes = batch * embedding_dim_ * element_bytes(output_type_);
  // ORT reads the input and writes the output in place: CreateTensor wraps caller memory.
  Ort::Value input_tensor =
      Ort::Value::CreateTensor(impl_->cpu_memory, const_cast<void*>(input), input_bytes,
                               input_shape.data(), input_shape.size(), onnx_type(input_type_));
  Ort::Value output_tensor =
      Ort::Value::CreateTensor(impl_->cpu_memory, output, output_bytes, output_shape.data(),
                               output_shape.size(), onnx_type(output_type_));
  const char* input_names[] = {impl_->input_name.c_str()};
  const char* output_names[] = {impl_->output_name.c_str()};
  try {
    if (cuda_) {
      // IO binding: ORT copies the host batch to the device once and writes the embeddings
      // straight into the caller's host buffer, with no intermediate ORT-owned output.
      Ort::IoBinding binding(impl_->session);
      binding.BindInput(input_names[0], input_tensor);
      binding.BindOutput(output_names[0], output_tensor);
      impl_->session.Run(Ort::RunOptions{nullptr}, binding);
    } else {
      impl_->session.Run(Ort::RunOptions{nullptr}, input_names, &input_tensor, 1, output_names,
                         &output_tensor, 1);
    }
  } catch (const Ort::Exception& err) {
    throw std::runtime_error(std::string("inference failed: ") + err.what());
  }
}

}  // namespace featx
