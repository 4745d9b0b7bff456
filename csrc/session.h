// An ONNX Runtime inference session for a featx-exported model: one image-batch input
// (batch, 3, H, W) and one embeddings output (batch, D), both float32 or float16.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "image.h"

namespace featx {

enum class Device { kCpu, kCuda };

struct SessionConfig {
  std::string model_path;
  Device device = Device::kCpu;
  // 0 lets ORT pick (one thread per physical core).
  int intra_op_threads = 0;
  // "all", "extended", "basic" or "disabled" (ORT graph optimisation levels).
  std::string optimization_level = "all";
  // Idle intra-op threads spin for work by default; when decode workers share the cores, their
  // spinning steals CPU from decoding.
  bool allow_spinning = true;
  // ORT's CPU memory arena: faster repeated runs at a fixed batch size, more resident memory.
  bool memory_arena = true;
  int cuda_device_id = 0;
};

// The custom metadata of the ONNX model at `path` (the featx.* keys written by featx-export), read
// by ONNX Runtime from a session created with graph optimisations off: what `featx inspect` and
// featx.read_metadata use where no inference follows. Throws std::runtime_error when ORT cannot
// load the file.
std::map<std::string, std::string> model_metadata(const std::string& path);

class Session {
 public:
  // Throws std::runtime_error saying what is wrong with the model or the requested device.
  explicit Session(const SessionConfig& config);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Runs the images in `input` (of type `type` and shape `shape`, which must be
  // (batch, 3, H, W) of input_type()) into `output` (batch x embedding_dim() of output_type()).
  // Both buffers are caller-owned and used in place. Thread-safe. Throws std::invalid_argument
  // saying what was expected when the input does not fit the model.
  void run(const void* input, TensorType type, const std::vector<int64_t>& shape,
           void* output) const;

  int64_t embedding_dim() const { return embedding_dim_; }
  const std::array<int64_t, 3>& input_chw() const { return input_chw_; }
  TensorType input_type() const { return input_type_; }
  TensorType output_type() const { return output_type_; }
  const std::string& provider() const { return provider_; }
  // The model's custom metadata (featx.* keys written by featx-export).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t embedding_dim_ = 0;
  std::array<int64_t, 3> input_chw_{};
  TensorType input_type_ = TensorType::kFloat32;
  TensorType output_type_ = TensorType::kFloat32;
  std::string provider_;
  bool cuda_ = false;
  std::map<std::string, std::string> metadata_;
};

}  // namespace featx
