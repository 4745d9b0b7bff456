#include "pipeline.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace featx {

BatchPipeline::BatchPipeline(std::vector<std::string> paths, std::vector<int64_t> offsets,
                             std::vector<int64_t> sizes, std::vector<int64_t> batch_ends,
                             PreprocessSpec spec, int workers, int prefetch,
                             FallbackDecoder fallback)
    : paths_(std::move(paths)),
      offsets_(std::move(offsets)),
      sizes_(std::move(sizes)),
      batch_ends_(std::move(batch_ends)),
      spec_(std::move(spec)),
      fallback_(std::move(fallback)),
      row_bytes_(spec_.tensor_elements() *
                 (spec_.output_type == TensorType::kFloat32 ? sizeof(float) : sizeof(uint16_t))) {
  spec_.validate();
  if (workers < 1) {
    throw std::invalid_argument("workers must be >= 1, got " + std::to_string(workers));
  }
  if (offsets_.size() != sizes_.size() || (!sizes_.empty() && sizes_.size() != paths_.size())) {
    throw std::invalid_argument("offsets and sizes must both be empty or one per path (" +
                                std::to_string(paths_.size()) + ")");
  }
  if (prefetch < 2) {
    // The consumer holds one buffer while the workers fill another; fewer cannot overlap.
    throw std::invalid_argument("prefetch must be >= 2 batches, got " + std::to_string(prefetch));
  }
  if (batch_ends_.empty() != paths_.empty() ||
      (!batch_ends_.empty() && batch_ends_.back() != static_cast<int64_t>(paths_.size()))) {
    throw std::invalid_argument("batch_ends must end at the number of paths (" +
                                std::to_string(paths_.size()) + ")");
  }
  int64_t largest = 0;
  for (size_t b = 0; b < batch_ends_.size(); ++b) {
    const int64_t rows = batch_ends_[b] - (b == 0 ? 0 : batch_ends_[b - 1]);
    if (rows < 1) throw std::invalid_argument("batch_ends must be strictly increasing");
    largest = std::max(largest, rows);
  }
  slots_.resize(prefetch);
  for (Slot& slot : slots_) slot.tensor.resize(largest * row_bytes_);
  for (int w = 0; w < workers; ++w) workers_.emplace_back(&BatchPipeline::work, this);
}

BatchPipeline::~BatchPipeline() {
  cancel();
  for (std::thread& worker : workers_) worker.join();
}

void BatchPipeline::cancel() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cancelled_ = true;
  }
  slot_released_.notify_all();
  batch_completed_.notify_all();
}

int64_t BatchPipeline::batch_of(int64_t item) const {
  return std::upper_bound(batch_ends_.begin(), batch_ends_.end(), item) - batch_ends_.begin();
}

void BatchPipeline::work() {
  const int64_t items = static_cast<int64_t>(paths_.size());
  const int64_t ring = static_cast<int64_t>(slots_.size());
  for (;;) {
    int64_t item = 0;
    int64_t row = 0;
    Slot* slot = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (cancelled_ || next_item_ == items) return;
      item = next_item_++;
      const int64_t batch = batch_of(item);
      slot_released_.wait(lock, [&] { return cancelled_ || batch < released_batches_ + ring; });
      if (cancelled_) return;
      slot = &slot_of(batch);
      if (slot->batch != batch) {
        slot->batch = batch;
        slot->pending = batch_rows(batch);
        slot->results.assign(batch_rows(batch), DecodeResult{});
      }
      row = item - batch_start(batch);
    }
    void* out = slot->tensor.data() + row * row_bytes_;
    DecodeResult result;
    try {
      if (sizes_.empty()) {
        result = preprocess_file(paths_[item], spec_, out);
      } else if (sizes_[item] < 0) {
        result = {DecodeStatus::kError, "unusable sample"};
      } else {
        result = preprocess_range(paths_[item], offsets_[item], sizes_[item], spec_, out);
      }
      if (result.status == DecodeStatus::kNeedsFallback && fallback_) result = fallback_(item, out);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      failure_ = std::current_exception();
      cancelled_ = true;
      batch_completed_.notify_all();
      slot_released_.notify_all();
      return;
    }
    // Rows that are not images hold zeros, so a batch's content never depends on stale data.
    if (result.status != DecodeStatus::kOk) std::memset(out, 0, row_bytes_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      slot->results[row] = std::move(result);
      if (--slot->pending == 0) batch_completed_.notify_all();
    }
  }
}

BatchPipeline::Next BatchPipeline::next(PreparedBatch& batch, std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (current_batch_ >= 0) {
    released_batches_ = current_batch_ + 1;
    current_batch_ = -1;
    slot_released_.notify_all();
  }
  if (next_batch_ == static_cast<int64_t>(batch_ends_.size())) return Next::kEnd;
  Slot& slot = slot_of(next_batch_);
  const bool ready = batch_completed_.wait_for(
      lock, wait, [&] { return cancelled_ || (slot.batch == next_batch_ && slot.pending == 0); });
  if (!ready) return Next::kTimedOut;
  if (failure_) std::rethrow_exception(failure_);
  if (cancelled_) return Next::kEnd;
  current_batch_ = next_batch_++;
  batch.first_item = batch_start(current_batch_);
  batch.rows = batch_rows(current_batch_);
  batch.tensor = slot.tensor.data();
  batch.results = &slot.results;
  return Next::kBatch;
}

}  // namespace featx
