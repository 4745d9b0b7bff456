// Resize + center crop + normalise of a decoded RGB image, reproducing torchvision's
// Resize(resize_size, antialias=True) -> CenterCrop(crop_size) on a PIL image bit for bit (or,
// squashed, Resize((resize_size, resize_size))).
//
// PIL resizes with a separable filter (horizontal pass, then vertical), fixed-point weights and
// uint8 rounding between the passes (Pillow's Resample.c), or, for NEAREST, with an affine
// nearest-neighbour lookup. Every output pixel depends only on its own filter window, so only the
// pixels that survive the crop are computed: the values are identical, and for a 4:3 photo at
// resize 256 / crop 224 the 224x224 crop is 57% of the 341x256 resized image.
#pragma once

#include <cstdint>

#include "image.h"

namespace featx {

// Writes the preprocessed tensor for an HWC uint8 RGB image to `out` (CHW, spec.output_type).
// Returns false, writing nothing, when the resized image would not fit PIL's int-sized images
// (an extreme aspect ratio, e.g. 1 x 10^8 resized to a 256 shorter side).
bool resize_crop_normalize(const uint8_t* rgb, int height, int width, const PreprocessSpec& spec,
                           void* out);

}  // namespace featx
