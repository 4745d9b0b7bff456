// Per-thread scratch buffers: kept from one image to the next so that steady-state preprocessing
// allocates nothing, but given back after an outsized image so that a worker thread does not pin
// hundreds of MiB for the rest of its life.
#pragma once

#include <cstddef>
#include <vector>

namespace featx {

// A 4000 x 3000 RGB photo (36 MiB) stays cached; a panorama or scan does not.
constexpr size_t kRetainedScratchBytes = size_t{64} << 20;

template <typename T>
void release_if_outsized(std::vector<T>& buffer) {
  if (buffer.capacity() * sizeof(T) > kRetainedScratchBytes) std::vector<T>().swap(buffer);
}

}  // namespace featx
