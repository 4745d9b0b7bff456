#include "normalize.h"

#include <cstring>

namespace featx {

ChannelTables<float> float_tables(const PreprocessSpec& spec) {
  ChannelTables<float> tables{};
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      // ToTensor divides by 255 in float32, Normalize subtracts then divides: same order here.
      const float scaled = static_cast<float>(v) / 255.0f;
      tables[c][v] = (scaled - spec.mean[c]) / spec.std[c];
    }
  }
  return tables;
}

ChannelTables<uint16_t> half_tables(const PreprocessSpec& spec) {
  const ChannelTables<float> values = float_tables(spec);
  ChannelTables<uint16_t> tables{};
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) tables[c][v] = float_to_half(values[c][v]);
  }
  return tables;
}

uint16_t float_to_half(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t magnitude = bits & 0x7fffffffu;

  constexpr uint32_t kFloatInfinity = 0xffu << 23;
  // 65536.0f: from here on (and from 65520 after rounding) the half result is infinite.
  constexpr uint32_t kHalfOverflow = (127u + 16u) << 23;
  // 2^-14, the smallest normal half.
  constexpr uint32_t kHalfMinNormal = 113u << 23;

  if (magnitude >= kHalfOverflow) {
    const uint32_t nan_payload = magnitude > kFloatInfinity ? 0x0200u : 0u;
    return static_cast<uint16_t>(sign | 0x7c00u | nan_payload);
  }
  if (magnitude < kHalfMinNormal) {
    // Subnormal or zero: adding 0.5f aligns the half's 10 subnormal bits with the bottom of the
    // float mantissa, and the float addition itself rounds to nearest even.
    constexpr uint32_t kAlign = 126u << 23;  // 0.5f
    float aligned;
    std::memcpy(&aligned, &magnitude, sizeof aligned);
    float half_point;
    std::memcpy(&half_point, &kAlign, sizeof half_point);
    aligned += half_point;
    uint32_t aligned_bits;
    std::memcpy(&aligned_bits, &aligned, sizeof aligned_bits);
    return static_cast<uint16_t>(sign | (aligned_bits - kAlign));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest
  // even; a carry out of the mantissa correctly bumps the exponent (up to infinity).
  const uint32_t mantissa_odd = (magnitude >> 13) & 1u;
  magnitude += (static_cast<uint32_t>(15 - 127) << 23) + 0x0fffu + mantissa_odd;
  return static_cast<uint16_t>(sign | (magnitude >> 13));
}

}  // namespace featx
