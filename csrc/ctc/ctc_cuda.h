// CUDA launchers for batched CTC: plain CUDA C++, no torch headers, so nvcc
// compiles them on machines without a GPU or a CUDA build of torch.
//
// Contracts are those of the CPU kernels in ctc_core.h; every pointer in the
// Batch and every array argument is device memory. Launchers enqueue on
// `stream`, never synchronise with the host, and return the launch status.
// No atomics: each output element is written by exactly one thread, in a
// fixed order, so results are bit-identical from run to run.
#pragma once

#include <cuda_runtime.h>

#include "ctc_core.h"

namespace pyprune {
namespace ctc {
namespace cuda {

// Scratch each launcher needs, in bytes (allocate it, pass it in).
int64_t backward_scratch_bytes(const Batch& b, int64_t element_size);
int64_t best_alignment_scratch_bytes(const Batch& b, int64_t element_size);
int64_t greedy_decode_scratch_bytes(const Batch& b);

template <typename T>
cudaError_t forward(const Batch& b, const T* scores, const T* row_shift, bool zero_infinity,
                    T* nll, T* log_alpha, cudaStream_t stream);

template <typename T>
cudaError_t backward(const Batch& b, const T* scores, const T* row_shift, const T* grad_nll,
                     const T* grad_smooth, const T* nll, const T* log_alpha, bool zero_infinity,
                     T* grad, int64_t grad_stride_time, int64_t grad_stride_batch, void* scratch,
                     cudaStream_t stream);

template <typename T>
cudaError_t logsumexp_rows(const Batch& b, const T* logits, T* lse, T* neg_mean,
                           cudaStream_t stream);

template <typename T>
cudaError_t best_alignment(const Batch& b, const T* scores, int64_t* alignment, T* score,
                           void* scratch, cudaStream_t stream);

template <typename T>
cudaError_t greedy_decode(const Batch& b, const T* scores, int64_t* tokens, int64_t* lengths,
                          void* scratch, cudaStream_t stream);

}  // namespace cuda
}  // namespace ctc
}  // namespace pyprune
