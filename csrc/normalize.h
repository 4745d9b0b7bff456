// Normalisation of uint8 pixels, (v / 255 - mean) / std per channel, as torchvision's ToTensor +
// Normalize compute it in float32. A pixel has 256 possible values per channel, so each value is
// computed once per image into a table and the pixel loop is a lookup.
#pragma once

#include <array>
#include <cstdint>

#include "image.h"

namespace featx {

template <typename T>
using ChannelTables = std::array<std::array<T, 256>, 3>;

// float32 values, computed with the same float32 operations as torchvision (bit-identical).
ChannelTables<float> float_tables(const PreprocessSpec& spec);

// IEEE binary16 bit patterns of the float32 values, rounded to nearest even (what
// numpy's astype(float16) and torch's .half() give).
ChannelTables<uint16_t> half_tables(const PreprocessSpec& spec);

uint16_t float_to_half(float value);

}  // namespace featx
