#include "file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace featx {
namespace {

// strerror_r is the XSI variant (returns int, fills the buffer) or the GNU one (returns the
// message); the overloads accept either.
[[maybe_unused]] const char* strerror_message(int /*xsi_result*/, const char* buffer) {
  return buffer;
}
[[maybe_unused]] const char* strerror_message(const char* gnu_result, const char* /*buffer*/) {
  return gnu_result;
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::string error_text(int code) {
  char buffer[256] = "";
  return strerror_message(strerror_r(code, buffer, sizeof buffer), buffer);
}

int read_file(const std::string& path, std::vector<uint8_t>& contents) {
  const FileDescriptor file(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (file.get() < 0) return errno;
  struct stat info{};
  if (fstat(file.get(), &info) != 0) return errno;
  if (S_ISDIR(info.st_mode)) return EISDIR;
  // st_size is a hint (the file may change meanwhile): read until end of file.
  contents.resize(info.st_size > 0 ? static_cast<size_t>(info.st_size) : 0);
  size_t filled = 0;
  while (true) {
    if (filled == contents.size()) contents.resize(contents.empty() ? 65536 : contents.size() * 2);
    const ssize_t got = read(file.get(), contents.data() + filled, contents.size() - filled);
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (got == 0) break;
    filled += static_cast<size_t>(got);
  }
  contents.resize(filled);
  return 0;
}

int read_range(const std::string& path, int64_t offset, int64_t size,
               std::vector<uint8_t>& contents) {
  const FileDescriptor file(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (file.get() < 0) return errno;
  contents.resize(static_cast<size_t>(size));
  size_t filled = 0;
  while (filled < contents.size()) {
    const ssize_t got = pread(file.get(), contents.data() + filled, contents.size() - filled,
                              offset + static_cast<int64_t>(filled));
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (got == 0) return EIO;
    filled += static_cast<size_t>(got);
  }
  return 0;
}

}  // namespace featx
