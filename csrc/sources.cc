#include "sources.h"

#include <stdexcept>

#include "file_io.h"

namespace featx {
namespace {

EncodedItem read_failure(int code) { return {nullptr, 0, "cannot read: " + error_text(code), {}}; }

// A reader's block is checked once, where it arrives, so that read() can trust its ranges.
void check_block(const EncodedBlock& block, int64_t first_item, int64_t items) {
  const std::string where = "block at item " + std::to_string(first_item);
  if (block.count < 1 || block.count > items - first_item) {
    throw std::invalid_argument(where + " has " + std::to_string(block.count) +
                                " items; the pipeline expects 1 to " +
                                std::to_string(items - first_item) + " more");
  }
  if (!block.error.empty()) return;
  for (int64_t row = 0; row < block.count; ++row) {
    const int64_t start = block.starts[row];
    const int64_t size = block.sizes[row];
    if (size >= 0 && (start < 0 || static_cast<uint64_t>(start) + static_cast<uint64_t>(size) >
                                       block.data_size)) {
      throw std::invalid_argument(where + ": row " + std::to_string(row) +
                                  " lies outside the block's " + std::to_string(block.data_size) +
                                  " bytes");
    }
  }
}

}  // namespace

EncodedItem FileSource::read(int64_t item, std::vector<uint8_t>& scratch) {
  const int code = read_file(paths_[item], scratch);
  if (code != 0) return read_failure(code);
  return {scratch.data(), scratch.size(), {}, {}};
}

RangeSource::RangeSource(std::vector<std::string> paths, std::vector<int64_t> offsets,
                         std::vector<int64_t> sizes)
    : paths_(std::move(paths)), offsets_(std::move(offsets)), sizes_(std::move(sizes)) {
  if (offsets_.size() != paths_.size() || sizes_.size() != paths_.size()) {
    throw std::invalid_argument("offsets and sizes must give one byte range per path (" +
                                std::to_string(paths_.size()) + ")");
  }
}

EncodedItem RangeSource::read(int64_t item, std::vector<uint8_t>& scratch) {
  if (sizes_[item] < 0) return {nullptr, 0, "unusable sample", {}};
  const int code = read_range(paths_[item], offsets_[item], sizes_[item], scratch);
  if (code != 0) return read_failure(code);
  return {scratch.data(), scratch.size(), {}, {}};
}

BlockSource::BlockSource(int64_t items, BlockReader reader, int blocks_ahead)
    : items_(items), reader_(std::move(reader)), blocks_ahead_(static_cast<size_t>(blocks_ahead)) {
  if (blocks_ahead < 1) {
    throw std::invalid_argument("blocks_ahead must be >= 1, got " + std::to_string(blocks_ahead));
  }
  if (!reader_) throw std::invalid_argument("a block source needs a reader");
  loader_ = std::thread(&BlockSource::load, this);
}

BlockSource::~BlockSource() {
  cancel();
  loader_.join();
}

void BlockSource::cancel() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cancelled_ = true;
  }
  block_loaded_.notify_all();
  block_released_.notify_all();
}

void BlockSource::load() {
  try {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        block_released_.wait(lock, [&] { return cancelled_ || held_.size() < blocks_ahead_; });
        if (cancelled_) return;
        if (loaded_items_ == items_) return;
      }
      // The reader runs without the lock: decode workers go on with the blocks already held.
      std::optional<EncodedBlock> block = reader_();
      std::lock_guard<std::mutex> lock(mutex_);
      if (!block) {
        throw std::runtime_error("the block reader ended after " + std::to_string(loaded_items_) +
                                 " of " + std::to_string(items_) + " items");
      }
      check_block(*block, loaded_items_, items_);
      const int64_t count = block->count;
      held_.push_back({loaded_items_, std::move(*block), count});
      loaded_items_ += count;
      block_loaded_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    failure_ = std::current_exception();
    block_loaded_.notify_all();
  }
}

EncodedItem BlockSource::read(int64_t item, std::vector<uint8_t>& /*scratch*/) {
  std::unique_lock<std::mutex> lock(mutex_);
  block_loaded_.wait(lock, [&] { return cancelled_ || failure_ || item < loaded_items_; });
  if (failure_) std::rethrow_exception(failure_);
  if (cancelled_) return {nullptr, 0, "cancelled", {}};
  auto held = held_.begin();
  while (item >= held->first_item + held->block.count) ++held;
  const EncodedBlock& block = held->block;
  const int64_t row = item - held->first_item;
  EncodedItem encoded;
  if (!block.error.empty()) {
    encoded.error = block.error;
  } else if (block.sizes[row] < 0) {
    encoded.error = "no image in this row (the value is null)";
  } else {
    encoded = {
        block.data + block.starts[row], static_cast<size_t>(block.sizes[row]), {}, block.memory};
  }
  if (--held->unread == 0) {
    // The memory lives on in `encoded` until this item is decoded.
    held_.erase(held);
    block_released_.notify_all();
  }
  return encoded;
}

}  // namespace featx
