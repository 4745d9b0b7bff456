// EXIF orientation of a JPEG, read and applied the way PIL's ImageOps.exif_transpose does.
//
// The bytes are untrusted: every read is bounds-checked, and anything malformed counts as
// orientation 1 (upright) rather than an error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace featx {

// Orientation 1..8 of the JPEG in `data`: tag 0x0112 of IFD0 in the first APP1 "Exif" segment
// or, when that tag is absent, `tiff:Orientation` in the XMP segment (as PIL's getexif falls back
// to). Values outside 1..8 mean upright, as in PIL.
int jpeg_orientation(const uint8_t* data, size_t size);

// Transposes the HWC RGB image `source` (height x width) into `destination` as PIL's
// Image.transpose does for that orientation (6: ROTATE_270, 8: ROTATE_90, ...); `height` and
// `width` become the oriented size. Orientation 1 must not be passed (nothing to do).
void apply_orientation(int orientation, const uint8_t* source, int& height, int& width,
                       std::vector<uint8_t>& destination);

}  // namespace featx
