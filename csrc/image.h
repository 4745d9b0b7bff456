// Image decode + preprocessing: encoded bytes -> normalised CHW tensor, matching the reference
// PIL/torchvision path (featx.preprocess.reference_transform) within 1/255 per pixel.
//
// Policy (see featx.metadata.Preprocess): decode to RGB (EXIF orientation applied), resize so the
// shorter side is `resize_size` (or, squashed, both sides, as timm's crop_mode 'squash' does)
// with PIL's antialiased resampling, center-crop `crop_size` the way torchvision does, scale to
// [0, 1], subtract mean, divide by std.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace featx {

enum class Interpolation { kNearest, kBilinear, kBicubic };
enum class TensorType { kFloat32, kFloat16 };
enum class ResizeMode { kShorterSide, kSquash };

struct PreprocessSpec {
  int crop_size = 224;
  int resize_size = 256;
  Interpolation interpolation = Interpolation::kBilinear;
  ResizeMode resize_mode = ResizeMode::kShorterSide;
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
  TensorType output_type = TensorType::kFloat32;
  // Decoded images above this many pixels are refused before any pixel memory is allocated.
  int64_t max_pixels = 178956970;  // PIL's decompression-bomb error threshold (2x its warning)

  // Throws std::invalid_argument naming the field that is out of range. Done once where a spec
  // is made (spec_from_dict, BatchPipeline); the per-image functions below take a valid spec.
  void validate() const;
  // Elements of one preprocessed image: 3 * crop_size * crop_size.
  size_t tensor_elements() const;
};

// Names as featx.metadata.Preprocess writes them ("nearest", "bilinear", "bicubic") and output
// types ("float32", "float16"). Throw std::invalid_argument naming the field.
Interpolation parse_interpolation(const std::string& name);
// Policy names as featx.metadata.Preprocess writes them ("resize_shorter_center_crop",
// "resize_squash_center_crop").
ResizeMode parse_policy(const std::string& name);
TensorType parse_tensor_type(const std::string& name);

enum class DecodeStatus {
  kOk,             // `out` holds the preprocessed tensor
  kNeedsFallback,  // not a format decoded here (PNG, WebP, CMYK JPEG, ...): decode elsewhere, then
                   // call preprocess_rgb
  kError,          // unusable input (corrupt, truncated, empty, too large): `message` says why
};

struct DecodeResult {
  DecodeStatus status = DecodeStatus::kOk;
  std::string message;
};

// Decodes `size` bytes of an encoded image and writes the preprocessed tensor (CHW, of
// spec.output_type) to `out`, which must hold spec.tensor_elements() elements. Never throws for
// bad image data: that is reported in the result. Thread-safe.
DecodeResult preprocess_encoded(const uint8_t* data, size_t size, const PreprocessSpec& spec,
                                void* out);

// Reads the file at `path` and calls preprocess_encoded. Unreadable files are kError.
DecodeResult preprocess_file(const std::string& path, const PreprocessSpec& spec, void* out);

// Preprocesses an already decoded, oriented RGB image (HWC uint8, rows contiguous).
void preprocess_rgb(const uint8_t* rgb, int height, int width, const PreprocessSpec& spec,
                    void* out);

}  // namespace featx
