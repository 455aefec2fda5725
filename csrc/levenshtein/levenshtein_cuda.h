// CUDA launchers for the Levenshtein labels: plain CUDA C++, no torch headers.
// Contracts as in levenshtein_core.h; all pointers are device memory; no host
// synchronisation; outputs are written by exactly one thread each.
#pragma once

#include <cuda_runtime.h>

#include "levenshtein_core.h"

namespace pyprune {
namespace lev {
namespace cuda {

// Scratch for edit_targets, in bytes: per pair the compacted rows and the
// bit-parallel LCS columns, (S + T + (T + 1) * ceil(S / 64)) words.
int64_t edit_targets_scratch_bytes(const Tokens& in, const Tokens& out);

// One warp per pair: warp-wide compaction and match masks (ballots), the
// column recurrence with a warp-wide carry across words, then one lane walks
// the path back and writes the labels.
cudaError_t edit_targets(const Tokens& in, const Tokens& out, int64_t padding_idx,
                         int64_t unk_idx, const Targets& targets, void* scratch,
                         cudaStream_t stream);

// Benchmark anchor: one thread per pair, full (|x|+1) x (|y|+1) int32 distance
// matrix in global memory (scratch: B * (S + 1) * (T + 1) * 4 bytes), the way
// per-pair GPU labellers are commonly written.
int64_t edit_targets_per_thread_scratch_bytes(const Tokens& in, const Tokens& out);
cudaError_t edit_targets_per_thread(const Tokens& in, const Tokens& out, int64_t padding_idx,
                                    int64_t unk_idx, const Targets& targets, void* scratch,
                                    cudaStream_t stream);

}  // namespace cuda
}  // namespace lev
}  // namespace pyprune
