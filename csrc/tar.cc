#include "tar.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <unordered_map>

namespace featx {
namespace {

constexpr int64_t kBlock = 512;

class ReadOnlyFile {
 public:
  explicit ReadOnlyFile(const std::string& path) : fd_(open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
    struct stat info{};
    if (fstat(fd_, &info) != 0) {
      close(fd_);
      throw std::runtime_error(path + ": cannot stat: " + std::strerror(errno));
    }
    size_ = info.st_size;
  }
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  ~ReadOnlyFile() { close(fd_); }

  int64_t size() const { return size_; }

  // Fills `out` with `length` bytes at `offset`; false on a read error or a short file.
  bool read_at(int64_t offset, size_t length, char* out) const {
    size_t filled = 0;
    while (filled < length) {
      const ssize_t got = pread(fd_, out + filled, length - filled, offset + filled);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return false;
      filled += static_cast<size_t>(got);
    }
    return true;
  }

 private:
  int fd_;
  int64_t size_ = 0;
};

using Header = std::array<char, kBlock>;

std::string field(const Header& header, size_t start, size_t length) {
  const char* begin = header.data() + start;
  return std::string(begin, strnlen(begin, length));
}

// A numeric field: octal digits (space/NUL padded), or GNU base-256 when the high bit is set;
// -1 when it is neither.
int64_t number(const Header& header, size_t start, size_t length) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(header.data() + start);
  int64_t value = 0;
  if (bytes[0] & 0x80) {
    for (size_t i = 1; i < length; ++i) value = (value << 8) | bytes[i];
    return value;
  }
  size_t i = 0;
  while (i < length && bytes[i] == ' ') ++i;
  for (; i < length && bytes[i] >= '0' && bytes[i] <= '7'; ++i)
    value = value * 8 + (bytes[i] - '0');
  for (; i < length; ++i) {
    if (bytes[i] != ' ' && bytes[i] != 0) return -1;
  }
  return value;
}

bool checksum_matches(const Header& header) {
  const int64_t stored = number(header, 148, 8);
  int64_t unsigned_sum = 0;
  int64_t signed_sum = 0;
  for (size_t i = 0; i < header.size(); ++i) {
    const bool in_field = i >= 148 && i < 156;
    unsigned_sum += in_field ? ' ' : static_cast<unsigned char>(header[i]);
    signed_sum += in_field ? ' ' : static_cast<signed char>(header[i]);
  }
  return stored >= 0 && (stored == unsigned_sum || stored == signed_sum);
}

std::string cut_header(int64_t offset) {
  return "the tar is truncated inside a member header at byte " + std::to_string(offset) +
         "; whatever followed is lost";
}

bool all_zero(const Header& header) {
  return std::all_of(header.begin(), header.end(), [](char c) { return c == 0; });
}

// The "path" record of a pax extended header ("LENGTH path=VALUE\n" records), or "".
std::string pax_path(const std::string& records) {
  size_t at = 0;
  while (at < records.size()) {
    const size_t space = records.find(' ', at);
    if (space == std::string::npos) break;
    const long length = std::strtol(records.c_str() + at, nullptr, 10);
    if (length <= 0 || at + static_cast<size_t>(length) > records.size()) break;
    const std::string record = records.substr(space + 1, at + length - space - 2);
    if (record.rfind("path=", 0) == 0) return record.substr(5);
    at += static_cast<size_t>(length);
  }
  return "";
}

std::string lowercase(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

struct Member {
  std::string key;
  std::string extension;
};

Member split_name(const std::string& name) {
  const size_t slash = name.rfind('/');
  const size_t dot = name.find('.', slash == std::string::npos ? 0 : slash + 1);
  if (dot == std::string::npos) return {name, ""};
  return {name.substr(0, dot), name.substr(dot + 1)};
}

class Indexer {
 public:
  explicit Indexer(const std::vector<std::string>& image_extensions)
      : extensions_(image_extensions) {}

  void add_member(const std::string& name, int64_t offset, int64_t size) {
    Member member = split_name(name);
    if (current_ < 0 || samples_[current_].key != member.key) {
      const auto seen = by_key_.find(member.key);
      if (seen != by_key_.end()) {
        current_ = static_cast<int64_t>(seen->second);
        fail(current_, "its members are not contiguous in the tar: " + name + " at byte " +
                           std::to_string(offset) + " comes after other samples");
      } else {
        current_ = static_cast<int64_t>(samples_.size());
        by_key_.emplace(member.key, samples_.size());
        samples_.push_back({member.key, 0, -1, ""});
        ranks_.push_back(extensions_.size());
        members_.emplace_back();
      }
    }
    members_[current_] += (members_[current_].empty() ? "" : ", ") + member.extension;
    const auto rank = static_cast<size_t>(
        std::find(extensions_.begin(), extensions_.end(), lowercase(member.extension)) -
        extensions_.begin());
    TarSample& sample = samples_[current_];
    if (rank < ranks_[current_] && sample.error.empty()) {
      ranks_[current_] = rank;
      sample.offset = offset;
      sample.size = size;
    }
  }

  // The member named `name` is cut by the end of the file: its sample is unusable.
  void truncated_member(const std::string& name, int64_t offset, int64_t size, int64_t end) {
    add_member(name, offset, size);
    fail(current_, "the tar is truncated: " + name + " needs " + std::to_string(size) +
                       " bytes at byte " + std::to_string(offset) + ", the file ends at byte " +
                       std::to_string(end));
  }

  // A point past which nothing can be read (a damaged header, a cut header): one unusable
  // sample, keyed "@OFFSET", stands for whatever the rest of the tar held.
  void stop(int64_t offset, const std::string& why) {
    samples_.push_back({"@" + std::to_string(offset), 0, -1, why});
    ranks_.push_back(extensions_.size());
    members_.emplace_back();
  }

  std::vector<TarSample> finish() {
    for (size_t i = 0; i < samples_.size(); ++i) {
      if (samples_[i].error.empty() && samples_[i].size < 0) {
        samples_[i].error = "no image member (members: " +
                            (members_[i].empty() ? std::string("none") : members_[i]) +
                            "); --image-ext names the image extensions";
      }
    }
    return std::move(samples_);
  }

 private:
  void fail(int64_t index, const std::string& why) {
    TarSample& sample = samples_[index];
    if (sample.error.empty()) sample.error = why;
    sample.size = -1;
  }

  const std::vector<std::string>& extensions_;
  std::vector<TarSample> samples_;
  std::vector<size_t> ranks_;
  std::vector<std::string> members_;
  std::unordered_map<std::string, size_t> by_key_;
  int64_t current_ = -1;
};

}  // namespace

std::vector<TarSample> index_webdataset(const std::string& path,
                                        const std::vector<std::string>& image_extensions) {
  const ReadOnlyFile file(path);
  Indexer indexer(image_extensions);
  std::string long_name;  // from a GNU 'L' or pax 'x' header, for the next member
  Header header{};
  int64_t offset = 0;
  while (true) {
    if (offset == file.size()) {
      indexer.stop(offset, "the tar ends at byte " + std::to_string(offset) +
                               " without its end-of-archive blocks: it may be truncated");
      break;
    }
    if (offset + kBlock > file.size() || !file.read_at(offset, kBlock, header.data())) {
      indexer.stop(offset, cut_header(offset));
      break;
    }
    if (all_zero(header)) break;
    const int64_t size = number(header, 124, 12);
    if (!checksum_matches(header) || size < 0) {
      indexer.stop(offset, "damaged tar header at byte " + std::to_string(offset) +
                               ": the members after it cannot be found");
      break;
    }
    const char type = header[156];
    const int64_t data = offset + kBlock;
    const int64_t next = data + (size + kBlock - 1) / kBlock * kBlock;
    std::string name = long_name;
    if (name.empty()) {
      const std::string prefix = field(header, 345, 155);
      name = (prefix.empty() ? "" : prefix + "/") + field(header, 0, 100);
    }
    const bool long_name_header = type == 'L' || type == 'x';
    if (data + size > file.size()) {
      if (long_name_header) {
        indexer.stop(offset, cut_header(offset));
      } else {
        indexer.truncated_member(name, data, size, file.size());
      }
      break;
    }
    if (long_name_header) {
      std::string contents(static_cast<size_t>(size), '\0');
      if (!file.read_at(data, contents.size(), contents.data())) {
        throw std::runtime_error(path + ": read error at byte " + std::to_string(data));
      }
      long_name = type == 'L' ? std::string(contents.c_str()) : pax_path(contents);
      offset = next;
      continue;
    }
    long_name.clear();
    if (type == '0' || type == '\0' || type == '7') indexer.add_member(name, data, size);
    offset = next;
  }
  return indexer.finish();
}

}  // namespace featx
