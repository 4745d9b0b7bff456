// Whole-file and byte-range reads into a caller's reusable buffer, with errno-based failures
// (the pipeline turns them into per-image error messages; nothing here throws).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace featx {

// Reads the whole file at `path` into `contents`; returns 0 or the errno of the failure.
int read_file(const std::string& path, std::vector<uint8_t>& contents);

// Reads `size` bytes at `offset` of the file at `path` into `contents`; returns 0 or the errno
// of the failure (EIO for a file that ends before them).
int read_range(const std::string& path, int64_t offset, int64_t size,
               std::vector<uint8_t>& contents);

// strerror(code), thread-safe.
std::string error_text(int code);

}  // namespace featx
