#include "pipeline.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "scratch.h"

namespace featx {
namespace {

// The reading worker's buffer for file contents, reused from one item to the next.
std::vector<uint8_t>& thread_scratch() {
  thread_local std::vector<uint8_t> scratch;
  return scratch;
}

}  // namespace

BatchPipeline::BatchPipeline(std::unique_ptr<ItemSource> source, std::vector<int64_t> batch_ends,
                             PreprocessSpec spec, int workers, int prefetch,
                             FallbackDecoder fallback)
    : source_(std::move(source)),
      batch_ends_(std::move(batch_ends)),
      items_(batch_ends_.empty() ? 0 : batch_ends_.back()),
      spec_(std::move(spec)),
      fallback_(std::move(fallback)),
      row_bytes_(spec_.tensor_elements() *
                 (spec_.output_type == TensorType::kFloat32 ? sizeof(float) : sizeof(uint16_t))) {
  spec_.validate();
  if (!source_) throw std::invalid_argument("a pipeline needs an item source");
  if (items_ != source_->size()) {
    throw std::invalid_argument("batch_ends must end at the number of items (" +
                                std::to_string(source_->size()) + ")");
  }
  if (workers < 1) {
    throw std::invalid_argument("workers must be >= 1, got " + std::to_string(workers));
  }
  if (prefetch < 2) {
    // The consumer holds one buffer while the workers fill another; fewer cannot overlap.
    throw std::invalid_argument("prefetch must be >= 2 batches, got " + std::to_string(prefetch));
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
  source_->cancel();
  slot_released_.notify_all();
  batch_completed_.notify_all();
}

int64_t BatchPipeline::batch_of(int64_t item) const {
  return std::upper_bound(batch_ends_.begin(), batch_ends_.end(), item) - batch_ends_.begin();
}

void BatchPipeline::work() {
  const int64_t ring = static_cast<int64_t>(slots_.size());
  for (;;) {
    int64_t item = 0;
    int64_t row = 0;
    Slot* slot = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (cancelled_ || next_item_ == items_) return;
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
      std::vector<uint8_t>& scratch = thread_scratch();
      const EncodedItem encoded = source_->read(item, scratch);
      if (!encoded.error.empty()) {
        result = {DecodeStatus::kError, encoded.error};
      } else {
        result = preprocess_encoded(encoded.data, encoded.size, spec_, out);
        if (result.status == DecodeStatus::kNeedsFallback && fallback_) {
          result = fallback_(item, encoded.data, encoded.size, out);
        }
      }
      release_if_outsized(scratch);
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
