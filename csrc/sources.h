// Where a pipeline's items come from: whole files, byte ranges of files (tar members), or blocks
// of encoded images held in memory by a reader (parquet record batches, read ahead by a thread).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace featx {

// One item's encoded bytes, or why they cannot be had.
struct EncodedItem {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::string error;  // non-empty: the item is unusable, and this says why
  // Keeps `data` alive where it points into a source's memory rather than the caller's scratch.
  std::shared_ptr<const void> memory;
};

class ItemSource {
 public:
  virtual ~ItemSource() = default;
  virtual int64_t size() const = 0;
  // The encoded bytes of `item`, read into `scratch` (the calling thread's reusable buffer) or
  // pointing into the source's own memory. Called once per item, from several threads at once.
  // Throws only for failures that are not the item's fault (they stop the pipeline).
  virtual EncodedItem read(int64_t item, std::vector<uint8_t>& scratch) = 0;
  // Wakes and stops whatever read() waits on; read() then returns an error for every item.
  virtual void cancel() {}
};

// Item i is the whole file paths[i].
class FileSource final : public ItemSource {
 public:
  explicit FileSource(std::vector<std::string> paths) : paths_(std::move(paths)) {}
  int64_t size() const override { return static_cast<int64_t>(paths_.size()); }
  EncodedItem read(int64_t item, std::vector<uint8_t>& scratch) override;

 private:
  const std::vector<std::string> paths_;
};

// Item i is the sizes[i] bytes at offsets[i] of paths[i]; a negative size marks an item known to
// be unusable, reported without a read. Throws std::invalid_argument unless the three match.
class RangeSource final : public ItemSource {
 public:
  RangeSource(std::vector<std::string> paths, std::vector<int64_t> offsets,
              std::vector<int64_t> sizes);
  int64_t size() const override { return static_cast<int64_t>(paths_.size()); }
  EncodedItem read(int64_t item, std::vector<uint8_t>& scratch) override;

 private:
  const std::vector<std::string> paths_;
  const std::vector<int64_t> offsets_;
  const std::vector<int64_t> sizes_;
};

// The next `count` items in pipeline order: `count` = starts.size() images at data[starts[i]]
// of sizes[i] bytes (a negative size: no image in that row), kept alive by `memory`; or, with
// `error` set, `count` items that could not be read at all.
struct EncodedBlock {
  int64_t count = 0;
  const uint8_t* data = nullptr;
  size_t data_size = 0;
  const int64_t* starts = nullptr;
  const int64_t* sizes = nullptr;
  std::shared_ptr<const void> memory;
  std::string error;
};

// Returns the block after the previous one, or nullopt when there are no more.
using BlockReader = std::function<std::optional<EncodedBlock>()>;

// Items come in blocks from a reader that a thread of this source calls ahead of the decode
// workers: at most `blocks_ahead` blocks with items still unread are held, so memory stays
// bounded whatever the input size, and a block is freed once its last item has been decoded.
class BlockSource final : public ItemSource {
 public:
  BlockSource(int64_t items, BlockReader reader, int blocks_ahead);
  ~BlockSource() override;
  BlockSource(const BlockSource&) = delete;
  BlockSource& operator=(const BlockSource&) = delete;
  int64_t size() const override { return items_; }
  EncodedItem read(int64_t item, std::vector<uint8_t>& scratch) override;
  void cancel() override;

 private:
  struct Held {
    int64_t first_item = 0;
    EncodedBlock block;
    int64_t unread = 0;
  };

  void load();

  const int64_t items_;
  const BlockReader reader_;
  const size_t blocks_ahead_;
  std::mutex mutex_;
  std::condition_variable block_loaded_;
  std::condition_variable block_released_;
  std::deque<Held> held_;
  int64_t loaded_items_ = 0;
  bool cancelled_ = false;
  std::exception_ptr failure_;
  std::thread loader_;
};

}  // namespace featx
