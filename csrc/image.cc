#include "image.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "file_io.h"
#include "jpeg.h"
#include "orientation.h"
#include "resample.h"
#include "scratch.h"

namespace featx {
namespace {

// Bounds on sizes keep every index computation comfortably inside int.
constexpr int kMaxSide = 1 << 15;

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument(message);
}

// The resized image of a decoded image does not fit an int-sized image (extreme aspect ratio).
std::string too_elongated(int height, int width, int resize_size) {
  return "image is " + std::to_string(width) + "x" + std::to_string(height) +
         ": resizing its shorter side to " + std::to_string(resize_size) +
         " gives a longer side above 2^31 pixels";
}

struct Buffers {
  std::vector<uint8_t> file;
  std::vector<uint8_t> decoded;
  std::vector<uint8_t> oriented;
};

Buffers& thread_buffers() {
  thread_local Buffers buffers;
  return buffers;
}

}  // namespace

void PreprocessSpec::validate() const {
  require(crop_size >= 1 && crop_size <= kMaxSide, "crop_size must be in [1, " +
                                                       std::to_string(kMaxSide) + "], got " +
                                                       std::to_string(crop_size));
  require(resize_size >= 1 && resize_size <= kMaxSide, "resize_size must be in [1, " +
                                                           std::to_string(kMaxSide) + "], got " +
                                                           std::to_string(resize_size));
  require(interpolation == Interpolation::kNearest || interpolation == Interpolation::kBilinear ||
              interpolation == Interpolation::kBicubic,
          "interpolation must be nearest, bilinear or bicubic");
  for (int c = 0; c < 3; ++c) {
    require(std::isfinite(mean[c]), "mean[" + std::to_string(c) + "] must be finite");
    require(std::isfinite(std[c]) && std[c] > 0,
            "std[" + std::to_string(c) + "] must be finite and > 0, got " + std::to_string(std[c]));
  }
  require(output_type == TensorType::kFloat32 || output_type == TensorType::kFloat16,
          "output must be float32 or float16");
  require(max_pixels >= 1, "max_pixels must be >= 1, got " + std::to_string(max_pixels));
}

size_t PreprocessSpec::tensor_elements() const {
  return 3 * static_cast<size_t>(crop_size) * static_cast<size_t>(crop_size);
}

Interpolation parse_interpolation(const std::string& name) {
  if (name == "nearest") return Interpolation::kNearest;
  if (name == "bilinear") return Interpolation::kBilinear;
  if (name == "bicubic") return Interpolation::kBicubic;
  throw std::invalid_argument("interpolation must be nearest, bilinear or bicubic, got '" + name +
                              "'");
}

ResizeMode parse_policy(const std::string& name) {
  if (name == "resize_shorter_center_crop") return ResizeMode::kShorterSide;
  if (name == "resize_squash_center_crop") return ResizeMode::kSquash;
  throw std::invalid_argument(
      "policy must be resize_shorter_center_crop or resize_squash_center_crop, got '" + name + "'");
}

TensorType parse_tensor_type(const std::string& name) {
  if (name == "float32") return TensorType::kFloat32;
  if (name == "float16") return TensorType::kFloat16;
  throw std::invalid_argument("output must be float32 or float16, got '" + name + "'");
}

DecodeResult preprocess_encoded(const uint8_t* data, size_t size, const PreprocessSpec& spec,
                                void* out) {
  if (size == 0) return {DecodeStatus::kError, "empty file"};
  if (!is_jpeg(data, size)) return {DecodeStatus::kNeedsFallback, "not a JPEG"};

  Buffers& buffers = thread_buffers();
  int height = 0;
  int width = 0;
  DecodeResult result = decode_jpeg(data, size, spec.max_pixels, buffers.decoded, height, width);
  if (result.status == DecodeStatus::kOk) {
    const uint8_t* rgb = buffers.decoded.data();
    const int orientation = jpeg_orientation(data, size);
    if (orientation != 1) {
      apply_orientation(orientation, rgb, height, width, buffers.oriented);
      rgb = buffers.oriented.data();
    }
    if (!resize_crop_normalize(rgb, height, width, spec, out)) {
      result = {DecodeStatus::kError, too_elongated(height, width, spec.resize_size)};
    }
  }
  release_if_outsized(buffers.decoded);
  release_if_outsized(buffers.oriented);
  return result;
}

DecodeResult preprocess_file(const std::string& path, const PreprocessSpec& spec, void* out) {
  Buffers& buffers = thread_buffers();
  const int read_error = read_file(path, buffers.file);
  DecodeResult result =
      read_error != 0 ? DecodeResult{DecodeStatus::kError, "cannot read: " + error_text(read_error)}
                      : preprocess_encoded(buffers.file.data(), buffers.file.size(), spec, out);
  release_if_outsized(buffers.file);
  return result;
}

void preprocess_rgb(const uint8_t* rgb, int height, int width, const PreprocessSpec& spec,
                    void* out) {
  require(height >= 1 && width >= 1, "image must be at least 1x1, got " + std::to_string(width) +
                                         "x" + std::to_string(height));
  require(resize_crop_normalize(rgb, height, width, spec, out),
          too_elongated(height, width, spec.resize_size));
}

}  // namespace featx
