// JPEG decoding with TurboJPEG (libjpeg-turbo), producing the pixels PIL's JPEG decoder produces:
// accurate integer DCT and fancy upsampling, grayscale expanded to RGB.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "image.h"

namespace featx {

// JPEG magic bytes: SOI followed by the start of a marker.
bool is_jpeg(const uint8_t* data, size_t size);

// Decodes the JPEG in `data` to HWC RGB in `rgb` (resized to height * width * 3). The size is
// checked against `max_pixels` from the header, before any pixel memory is allocated.
// kNeedsFallback for what PIL decodes differently or more leniently (CMYK/YCCK, and non-fatal
// libjpeg warnings other than truncation); kError for corrupt, truncated or oversized images.
DecodeResult decode_jpeg(const uint8_t* data, size_t size, int64_t max_pixels,
                         std::vector<uint8_t>& rgb, int& height, int& width);

}  // namespace featx
