// WebDataset tar shards, indexed in place: the 512-byte headers are read once (pread), no member
// is extracted, and each sample's image member is then read by byte range in the pipeline.
//
// WebDataset's convention: a sample is the run of consecutive members sharing a key, the member
// name up to the first '.' of its last path component ("a/000001.seg.png": key "a/000001",
// extension "seg.png"). Headers follow POSIX ustar (name prefix), GNU ('L' long names) and pax
// ('x' records with "path=").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace featx {

struct TarSample {
  std::string key;
  int64_t offset = 0;  // of the image member's data in the tar
  int64_t size = -1;   // of the image member; -1 when the sample is unusable (see error)
  std::string error;   // why the sample is unusable; empty when it is usable
};

// The samples of the tar at `path`, in file order; a sample's image member is its member whose
// extension (lowercased) comes first in `image_extensions`. A sample with no such member, one
// whose members are not contiguous, one cut by the end of the file, and the place where a
// damaged header stops the indexing are samples with an error. Throws std::runtime_error when the
// file cannot be read at all.
std::vector<TarSample> index_webdataset(const std::string& path,
                                        const std::vector<std::string>& image_extensions);

}  // namespace featx
