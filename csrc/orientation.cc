#include "orientation.h"

#include <cstdint>
#include <cstring>

namespace featx {
namespace {

constexpr uint16_t kOrientationTag = 0x0112;

// A bounds-checked view of untrusted bytes. Reads past the end report failure.
class ByteView {
 public:
  ByteView(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t size() const { return size_; }
  const uint8_t* data() const { return data_; }

  bool starts_with(const char* prefix, size_t length, size_t at = 0) const {
    return at <= size_ && length <= size_ - at && std::memcmp(data_ + at, prefix, length) == 0;
  }
  bool read16(size_t at, bool big_endian, uint32_t& value) const {
    if (at > size_ || size_ - at < 2) return false;
    value = big_endian ? (data_[at] << 8) | data_[at + 1] : data_[at] | (data_[at + 1] << 8);
    return true;
  }
  bool read32(size_t at, bool big_endian, uint32_t& value) const {
    uint32_t first = 0;
    uint32_t second = 0;
    if (!read16(at, big_endian, first) || !read16(at + 2, big_endian, second)) return false;
    value = big_endian ? (first << 16) | second : (second << 16) | first;
    return true;
  }
  ByteView sub(size_t at) const {
    return at <= size_ ? ByteView(data_ + at, size_ - at) : ByteView(data_, 0);
  }

 private:
  const uint8_t* data_;
  size_t size_;
};

// Size in bytes of one element of a TIFF field type; 0 for types PIL skips (the tag is then
// absent).
size_t type_size(uint32_t type) {
  switch (type) {
    case 1:  // BYTE
    case 2:  // ASCII
    case 6:  // SBYTE
    case 7:  // UNDEFINED
      return 1;
    case 3:  // SHORT
    case 8:  // SSHORT
      return 2;
    case 4:   // LONG
    case 9:   // SLONG
    case 11:  // FLOAT
    case 13:  // IFD
      return 4;
    case 5:   // RATIONAL
    case 10:  // SRATIONAL
    case 12:  // DOUBLE
    case 16:  // LONG8
      return 8;
    default:
      return 0;
  }
}

// The orientation PIL's exif_transpose derives from the first element of the entry's value: a
// number equal to an integer counts as that integer (PIL compares with ==), bytes and strings as
// no orientation (0). Returns false when PIL would not store the tag at all (unknown type, no
// elements, data out of bounds).
bool entry_value(const ByteView& tiff, size_t entry, bool big_endian, int64_t& value) {
  uint32_t type = 0;
  uint32_t count = 0;
  if (!tiff.read16(entry + 2, big_endian, type) || !tiff.read32(entry + 4, big_endian, count)) {
    return false;
  }
  const size_t unit = type_size(type);
  if (unit == 0 || count == 0) return false;
  const uint64_t bytes = static_cast<uint64_t>(count) * unit;
  size_t at = entry + 8;
  if (bytes > 4) {
    uint32_t offset = 0;
    if (!tiff.read32(entry + 8, big_endian, offset)) return false;
    if (offset > tiff.size() || bytes > tiff.size() - offset) return false;
    at = offset;
  }
  uint32_t low = 0;
  uint32_t high = 0;
  if (unit >= 4 && !tiff.read32(at, big_endian, low)) return false;
  if (unit == 8 && !tiff.read32(at + 4, big_endian, high)) return false;
  value = 0;
  switch (type) {
    case 3:
    case 8: {
      uint32_t raw = 0;
      if (!tiff.read16(at, big_endian, raw)) return false;
      value = type == 8 ? static_cast<int16_t>(raw) : static_cast<int64_t>(raw);
      return true;
    }
    case 6:
      if (at >= tiff.size()) return false;
      value = static_cast<int8_t>(tiff.data()[at]);
      return true;
    case 4:
    case 13:
      value = low;
      return true;
    case 9:
      value = static_cast<int32_t>(low);
      return true;
    case 16:
      // Any value of a LONG8 beyond 32 bits is no orientation; only the low word can be 1..8.
      value = (big_endian ? low : high) == 0 ? (big_endian ? high : low) : 0;
      return true;
    case 5:
    case 10: {  // numerator, denominator
      const int64_t numerator = type == 10 ? static_cast<int32_t>(low) : int64_t{low};
      const int64_t denominator = type == 10 ? static_cast<int32_t>(high) : int64_t{high};
      if (denominator != 0 && numerator % denominator == 0) value = numerator / denominator;
      return true;
    }
    case 11: {
      float number;
      std::memcpy(&number, &low, sizeof number);
      if (number >= 1 && number <= 8 && number == static_cast<int>(number))
        value = static_cast<int>(number);
      return true;
    }
    case 12: {
      const uint64_t bits =
          big_endian ? (uint64_t{low} << 32) | high : (uint64_t{high} << 32) | low;
      double number;
      std::memcpy(&number, &bits, sizeof number);
      if (number >= 1 && number <= 8 && number == static_cast<int>(number))
        value = static_cast<int>(number);
      return true;
    }
    default:  // BYTE, ASCII, UNDEFINED: PIL keeps bytes or text, never equal to a number
      return true;
  }
}

// Orientation tag of a TIFF structure (the APP1 payload after "Exif\0\0"). False when absent.
bool exif_orientation(ByteView tiff, int64_t& orientation) {
  bool big_endian = false;
  if (tiff.starts_with("II*\0", 4)) {
    big_endian = false;
  } else if (tiff.starts_with("MM\0*", 4)) {
    big_endian = true;
  } else {
    return false;
  }
  uint32_t ifd = 0;
  uint32_t entries = 0;
  if (!tiff.read32(4, big_endian, ifd) || !tiff.read16(ifd, big_endian, entries)) return false;
  for (uint32_t i = 0; i < entries; ++i) {
    const size_t entry = static_cast<size_t>(ifd) + 2 + static_cast<size_t>(i) * 12;
    uint32_t tag = 0;
    if (!tiff.read16(entry, big_endian, tag) || tiff.size() - entry < 12) return false;
    // PIL keeps the first readable entry of a tag.
    if (tag == kOrientationTag && entry_value(tiff, entry, big_endian, orientation)) return true;
  }
  return false;
}

// First `tiff:Orientation="D` or `tiff:Orientation>D` in an XMP packet (PIL's regex search).
bool xmp_orientation(ByteView xmp, int64_t& orientation) {
  static constexpr char kKey[] = "tiff:Orientation";
  constexpr size_t kKeyLength = sizeof kKey - 1;
  for (size_t at = 0; at + kKeyLength < xmp.size(); ++at) {
    if (!xmp.starts_with(kKey, kKeyLength, at)) continue;
    const uint8_t* rest = xmp.data() + at + kKeyLength;
    const size_t left = xmp.size() - at - kKeyLength;
    size_t digit = 0;
    if (left >= 3 && rest[0] == '=' && rest[1] == '"') {
      digit = 2;
    } else if (left >= 2 && rest[0] == '>') {
      digit = 1;
    } else {
      continue;
    }
    if (rest[digit] >= '0' && rest[digit] <= '9') {
      orientation = rest[digit] - '0';
      return true;
    }
  }
  return false;
}

}  // namespace

int jpeg_orientation(const uint8_t* data, size_t size) {
  static constexpr char kExif[] = "Exif\0\0";
  static constexpr char kXmp[] = "http://ns.adobe.com/xap/1.0/";  // followed by a NUL
  constexpr size_t kExifLength = sizeof kExif - 1;
  constexpr size_t kXmpLength = sizeof kXmp;  // with the NUL

  const ByteView jpeg(data, size);
  ByteView exif(nullptr, 0);
  ByteView xmp(nullptr, 0);
  bool have_exif = false;
  bool have_xmp = false;
  // Walk the marker segments from SOI to the first scan, like PIL's JPEG parser: non-0xFF bytes
  // between segments are skipped, 0xFF runs are fill.
  size_t at = 2;
  while (at < size) {
    if (data[at] != 0xFF) {
      ++at;
      continue;
    }
    while (at < size && data[at] == 0xFF) ++at;
    if (at >= size) break;
    const uint8_t marker = data[at++];
    if (marker == 0xDA || marker == 0xD9) break;  // start of scan / end of image
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;  // no length field
    uint32_t length = 0;
    if (!jpeg.read16(at, true, length) || length < 2 || length > size - at) break;
    const ByteView payload(data + at + 2, length - 2);
    if (marker == 0xE1) {
      if (!have_exif && payload.starts_with(kExif, kExifLength)) {
        exif = payload.sub(kExifLength);
        // PIL strips the "Exif\0\0" header twice where a writer doubled it.
        if (exif.starts_with(kExif, kExifLength)) exif = exif.sub(kExifLength);
        have_exif = true;
      } else if (payload.starts_with(kXmp, kXmpLength)) {
        xmp = payload.sub(kXmpLength);  // PIL keeps the last XMP packet
        have_xmp = true;
      }
    }
    at += length;
  }

  int64_t orientation = 1;
  if (!(have_exif && exif_orientation(exif, orientation)) && have_xmp) {
    xmp_orientation(xmp, orientation);
  }
  return orientation >= 1 && orientation <= 8 ? static_cast<int>(orientation) : 1;
}

void apply_orientation(int orientation, const uint8_t* source, int& height, int& width,
                       std::vector<uint8_t>& destination) {
  // Orientations 5..8 swap the axes. For each output pixel (x, y), the source pixel is
  // (sx, sy) = (flip_x ? W-1-a : a, flip_y ? H-1-b : b) with (a, b) = swap ? (y, x) : (x, y).
  const bool swap = orientation >= 5;
  const bool flip_x = orientation == 2 || orientation == 3 || orientation == 7 || orientation == 8;
  const bool flip_y = orientation == 3 || orientation == 4 || orientation == 6 || orientation == 7;
  const int out_height = swap ? width : height;
  const int out_width = swap ? height : width;
  destination.resize(static_cast<size_t>(out_height) * out_width * 3);
  for (int y = 0; y < out_height; ++y) {
    uint8_t* out = &destination[static_cast<size_t>(y) * out_width * 3];
    for (int x = 0; x < out_width; ++x) {
      const int a = swap ? y : x;
      const int b = swap ? x : y;
      const int sx = flip_x ? width - 1 - a : a;
      const int sy = flip_y ? height - 1 - b : b;
      std::memcpy(out + 3 * static_cast<size_t>(x),
                  source + (static_cast<size_t>(sy) * width + sx) * 3, 3);
    }
  }
  height = out_height;
  width = out_width;
}

}  // namespace featx
