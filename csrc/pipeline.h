// Decode -> preprocess -> batch, in worker threads, ahead of inference.
//
// Workers claim images in input order and write each one straight into its row of a batch
// buffer. `prefetch` buffers form a ring: while the consumer runs inference on batch b, workers
// fill b+1 .. b+prefetch-1 and then wait (back-pressure: memory stays bounded whatever the input
// size). Batches are delivered strictly in order, so output order never depends on timing.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "image.h"
#include "sources.h"

namespace featx {

// A fully preprocessed batch; valid until the next call to BatchPipeline::next().
struct PreparedBatch {
  int64_t first_item = 0;  // index, among the pipeline's items, of row 0
  int64_t rows = 0;
  void* tensor = nullptr;  // rows x 3 x crop x crop of spec.output_type; failed rows are zeros
  const std::vector<DecodeResult>* results = nullptr;  // one per row
};

// Decodes an item the C++ decoder leaves to another decoder (status kNeedsFallback: PNG, WebP,
// CMYK JPEG, ...) from its `size` encoded bytes at `data` and preprocesses it into `out`; returns
// kOk or the reason it is unusable. Called from the worker threads, concurrently.
using FallbackDecoder =
    std::function<DecodeResult(int64_t item, const uint8_t* data, size_t size, void* out)>;

class BatchPipeline {
 public:
  // The items are `source`'s, as many as `batch_ends` says: they are partitioned into batches,
  // batch b holding items [batch_ends[b-1], batch_ends[b]) (strictly increasing). Throws
  // std::invalid_argument naming the argument out of range. With `fallback`, the workers decode
  // kNeedsFallback items with it; without, such rows stay kNeedsFallback (unusable, zeros).
  BatchPipeline(std::unique_ptr<ItemSource> source, std::vector<int64_t> batch_ends,
                PreprocessSpec spec, int workers, int prefetch, FallbackDecoder fallback = nullptr);
  ~BatchPipeline();
  BatchPipeline(const BatchPipeline&) = delete;
  BatchPipeline& operator=(const BatchPipeline&) = delete;

  enum class Next { kBatch, kEnd, kTimedOut };

  // Hands the previous batch's buffer back to the workers, then waits up to `wait` for the next
  // batch to complete: kBatch (filled into `batch`), kEnd after the last batch or a cancel, or
  // kTimedOut (call again; the bounded wait lets a caller react to signals meanwhile).
  // Rethrows a worker's unexpected failure.
  Next next(PreparedBatch& batch, std::chrono::milliseconds wait);

  // Stops the workers; next() then returns false.
  void cancel();

  const PreprocessSpec& spec() const { return spec_; }

 private:
  struct Slot {
    std::vector<uint8_t> tensor;
    std::vector<DecodeResult> results;
    int64_t batch = -1;
    int64_t pending = 0;
  };

  void work();
  int64_t batch_of(int64_t item) const;
  int64_t batch_start(int64_t batch) const { return batch == 0 ? 0 : batch_ends_[batch - 1]; }
  int64_t batch_rows(int64_t batch) const { return batch_ends_[batch] - batch_start(batch); }
  Slot& slot_of(int64_t batch) { return slots_[batch % slots_.size()]; }

  const std::unique_ptr<ItemSource> source_;
  const std::vector<int64_t> batch_ends_;
  const int64_t items_;
  const PreprocessSpec spec_;
  const FallbackDecoder fallback_;
  const size_t row_bytes_;

  std::mutex mutex_;
  std::condition_variable slot_released_;
  std::condition_variable batch_completed_;
  std::vector<Slot> slots_;
  int64_t next_item_ = 0;
  int64_t released_batches_ = 0;
  int64_t next_batch_ = 0;
  int64_t current_batch_ = -1;
  bool cancelled_ = false;
  std::exception_ptr failure_;
  std::vector<std::thread> workers_;
};

}  // namespace featx
