#include "jpeg.h"

#include <turbojpeg.h>

#include <cstring>
#include <memory>
#include <string>
#include <type_traits>

namespace featx {
namespace {

struct TurboJpegDestroyer {
  void operator()(void* handle) const { tjDestroy(handle); }
};
using TurboJpegHandle = std::unique_ptr<std::remove_pointer_t<tjhandle>, TurboJpegDestroyer>;

// A TurboJPEG handle is not thread-safe; one per thread is, and is reused across images.
TurboJpegHandle& thread_decompressor() {
  thread_local TurboJpegHandle handle;
  if (!handle) handle.reset(tjInitDecompress());
  return handle;
}

// libjpeg's text for JWRN_JPEG_EOF: the data ended before the image did (a truncated file).
constexpr char kTruncationWarning[] = "Premature end of JPEG file";

DecodeResult error(std::string message) { return {DecodeStatus::kError, std::move(message)}; }

// A failed TurboJPEG call. Warnings are libjpeg's recoverable complaints: PIL refuses truncated
// files but decodes through the others (e.g. extraneous bytes before a marker), so those go to
// the PIL fallback to be decoded or refused exactly as the reference path would.
// The handle is discarded afterwards: TurboJPEG 2.1 leaves it mid-header after an error in
// tjDecompressHeader3, and the next image decoded with it would fail with the same error.
DecodeResult failure(TurboJpegHandle& handle) {
  const std::string reason = tjGetErrorStr2(handle.get());
  const bool warning = tjGetErrorCode(handle.get()) == TJERR_WARNING;
  handle.reset();
  if (warning) {
    if (reason.find(kTruncationWarning) != std::string::npos) {
      return error("truncated JPEG: " + reason);
    }
    return {DecodeStatus::kNeedsFallback, "libjpeg warning: " + reason};
  }
  return error("corrupt JPEG: " + reason);
}

}  // namespace

bool is_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

DecodeResult decode_jpeg(const uint8_t* data, size_t size, int64_t max_pixels,
                         std::vector<uint8_t>& rgb, int& height, int& width) {
  TurboJpegHandle& handle = thread_decompressor();
  if (!handle) return error("cannot initialise TurboJPEG: " + std::string(tjGetErrorStr2(nullptr)));

  int subsampling = 0;
  int colorspace = 0;
  if (tjDecompressHeader3(handle.get(), data, size, &width, &height, &subsampling, &colorspace) !=
      0) {
    return failure(handle);
  }
  // PIL converts CMYK (Adobe-inverted or not) and YCCK itself; leave those to it.
  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) {
    return {DecodeStatus::kNeedsFallback, "CMYK JPEG"};
  }
  const int64_t pixels = static_cast<int64_t>(width) * height;
  if (pixels > max_pixels) {
    return error("image is " + std::to_string(width) + "x" + std::to_string(height) + " = " +
                 std::to_string(pixels) + " pixels, above the limit of " +
                 std::to_string(max_pixels) + " pixels (max_pixels)");
  }
  rgb.resize(static_cast<size_t>(pixels) * 3);
  // ACCURATEDCT: PIL decodes with libjpeg's accurate integer DCT. STOPONWARNING: stop at the first
  // warning instead of decoding the rest of a damaged file. LIMITSCANS: refuse progressive files
  // with more than 500 scans, a decompression-time attack on untrusted input.
  constexpr int kFlags = TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS;
  if (tjDecompress2(handle.get(), data, size, rgb.data(), width, width * 3, height, TJPF_RGB,
                    kFlags) != 0) {
    return failure(handle);
  }
  return {};
}

}  // namespace featx
