// CUDA kernels for batched CTC. See ctc_cuda.h for the contracts.
//
// Recursions: one block per sample, threads over the 2S+1 states, one
// __syncthreads per frame; the previous frame is read back from the global
// alpha/beta buffers (cached), so there is no limit on the target length.
// Dense gradient and log-sum-exp: one block per (frame, sample) row, threads
// over the vocabulary, fixed-shape tree reductions.
// Occupancy: the block of a sample subtracts, per frame, the posterior of each
// distinct label from the dense gradient; the first state carrying a label
// sums all states with that label in state order, so each gradient element has
// a single writer and a fixed summation order (deterministic, no atomics).
#include "ctc_cuda.h"

#include <cmath>
#include <cstdint>

namespace pyprune {
namespace ctc {
namespace cuda {
namespace {

constexpr int kThreads = 256;

enum Status : int32_t { kInvalid = 0, kPossible = 1, kImpossible = 2 };

template <typename T> __device__ __forceinline__ T neg_inf() { return T(-INFINITY); }
template <typename T> __device__ __forceinline__ T quiet_nan() { return T(NAN); }

__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }
__device__ __forceinline__ float log_t(float x) { return logf(x); }
__device__ __forceinline__ double log_t(double x) { return log(x); }

template <typename T>
__device__ __forceinline__ T logsumexp3(T a, T b, T c) {
  const T m = fmax(a, fmax(b, c));
  const T shift = m == neg_inf<T>() ? T(0) : m;
  return shift + log_t(exp_t(a - shift) + exp_t(b - shift) + exp_t(c - shift));
}

__device__ __forceinline__ int64_t state_label(const Batch& b, const int64_t* target, int64_t s) {
  return (s & 1) ? target[s >> 1] : b.blank;
}

__device__ __forceinline__ bool can_skip(const Batch& b, const int64_t* target, int64_t s) {
  return (s & 1) && s >= 3 && target[s >> 1] != target[(s >> 1) - 1];
}

template <typename T>
__device__ __forceinline__ const T* frame(const Batch& b, const T* scores, int64_t t, int64_t n) {
  return scores + t * b.stride_time + n * b.stride_batch;
}

template <typename T>
__device__ __forceinline__ T shift_of(const Batch& b, const T* row_shift, int64_t t, int64_t n) {
  return row_shift == nullptr ? T(0) : row_shift[t * b.batch_size + n];
}

// Reduce over the block with `op` (identity `identity`); every thread gets the
// result. A fixed tree, so the result is deterministic.
template <typename T, typename Op>
__device__ T block_reduce(T value, Op op, T identity, T* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kThreads / 32 ? shared[lane] : identity;
    for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_down_sync(0xffffffffu, value, offset));
    if (lane == 0) shared[0] = value;
  }
  __syncthreads();
  const T result = shared[0];
  __syncthreads();
  return result;
}

struct MaxOp {
  template <typename T> __device__ T operator()(T a, T b) const { return fmax(a, b); }
};
struct AddOp {
  template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};

// ------------------------------------------------------------------ forward

template <typename T>
__global__ void forward_kernel(Batch b, const T* scores, const T* row_shift, bool zero_infinity,
                               T* nll, T* log_alpha) {
  const int64_t n = blockIdx.x;
  __shared__ bool valid;
  if (threadIdx.x == 0) valid = sample_is_valid(b, n);
  __syncthreads();
  if (!valid) {
    if (threadIdx.x == 0) nll[n] = quiet_nan<T>();
    return;
  }
  const int64_t input_length = b.input_lengths[n];
  const int64_t width = 2 * b.target_lengths[n] + 1;
  if (input_length == 0) {
    if (threadIdx.x == 0) nll[n] = (width == 1 || zero_infinity) ? T(0) : T(INFINITY);
    return;
  }
  const int64_t* target = b.targets + b.target_offsets[n];
  T* alpha = log_alpha + alpha_offset(b, n);
  for (int64_t t = 0; t < input_length; ++t) {
    const T* row = frame(b, scores, t, n);
    const T shift = shift_of(b, row_shift, t, n);
    T* cur = alpha + t * width;
    const T* prev = cur - width;
    for (int64_t s = threadIdx.x; s < width; s += blockDim.x) {
      const T emission = row[state_label(b, target, s)] - shift;
      T value;
      if (t == 0) {
        value = s < 2 ? emission : neg_inf<T>();
      } else {
        const T stay = prev[s];
        const T advance = s >= 1 ? prev[s - 1] : neg_inf<T>();
        const T jump = can_skip(b, target, s) ? prev[s - 2] : neg_inf<T>();
        value = logsumexp3(stay, advance, jump) + emission;
      }
      cur[s] = value;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const T* last = alpha + (input_length - 1) * width;
    const T tail = width > 1 ? last[width - 2] : neg_inf<T>();
    T loss = -logsumexp3(last[width - 1], tail, neg_inf<T>());
    if (zero_infinity && loss == T(INFINITY)) loss = T(0);
    nll[n] = loss;
  }
}

// ----------------------------------------------------------------- backward

struct BackwardScratch {
  int32_t* status;  // [N]
  void* log_likelihood;  // [N] T
  void* beta;       // [alpha_size] T
  void* gamma;      // [2M + N] T: one frame's posteriors per sample

  static int64_t align(int64_t bytes) { return (bytes + 255) / 256 * 256; }

  static int64_t bytes(const Batch& b, int64_t element_size) {
    return align(b.batch_size * 4) + align(b.batch_size * element_size) +
           align(alpha_size(b) * element_size) +
           align((2 * b.num_labels + b.batch_size) * element_size);
  }

  BackwardScratch(const Batch& b, int64_t element_size, void* base) {
    char* p = static_cast<char*>(base);
    status = reinterpret_cast<int32_t*>(p);
    p += align(b.batch_size * 4);
    log_likelihood = p;
    p += align(b.batch_size * element_size);
    beta = p;
    p += align(alpha_size(b) * element_size);
    gamma = p;
  }
};

template <typename T>
__global__ void likelihood_kernel(Batch b, const T* log_alpha, int32_t* status, T* log_likelihood) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= b.batch_size) return;
  if (!sample_is_valid(b, n)) {
    status[n] = kInvalid;
    log_likelihood[n] = quiet_nan<T>();
    return;
  }
  const int64_t input_length = b.input_lengths[n];
  const int64_t width = 2 * b.target_lengths[n] + 1;
  T ll;
  if (input_length == 0) {
    ll = width == 1 ? T(0) : neg_inf<T>();
  } else {
    const T* last = log_alpha + alpha_offset(b, n) + (input_length - 1) * width;
    ll = logsumexp3(last[width - 1], width > 1 ? last[width - 2] : neg_inf<T>(), neg_inf<T>());
  }
  log_likelihood[n] = ll;
  status[n] = ll == neg_inf<T>() ? kImpossible : kPossible;
}

template <typename T>
__global__ void dense_gradient_kernel(Batch b, const T* scores, const T* row_shift,
                                      const T* grad_nll, const T* grad_smooth, bool zero_infinity,
                                      const int32_t* status, T* grad, int64_t gst, int64_t gsb) {
  const int64_t row_index = blockIdx.x;
  const int64_t t = row_index / b.batch_size, n = row_index % b.batch_size;
  T* out = grad + t * gst + n * gsb;
  const int64_t C = b.num_classes;
  const int64_t input_length = b.input_lengths[n];
  const int32_t state = status[n];
  if (state == kInvalid || (state == kImpossible && !zero_infinity && t < input_length)) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[c] = quiet_nan<T>();
    return;
  }
  if (t >= input_length) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[c] = T(0);
    return;
  }
  const T g = state == kImpossible ? T(0) : grad_nll[n];
  const T h = grad_smooth == nullptr ? T(0) : grad_smooth[n] / T(input_length);
  const T scale = g + h, uniform = -h / T(C);
  const T* row = frame(b, scores, t, n);
  const T shift = shift_of(b, row_shift, t, n);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[c] = scale * exp_t(row[c] - shift) + uniform;
}

template <typename T>
__global__ void occupancy_kernel(Batch b, const T* scores, const T* row_shift, const T* grad_nll,
                                 const T* log_alpha, const int32_t* status,
                                 const T* log_likelihood, T* beta_buffer, T* gamma_buffer, T* grad,
                                 int64_t gst, int64_t gsb) {
  const int64_t n = blockIdx.x;
  const int64_t input_length = b.input_lengths[n];
  if (status[n] != kPossible || input_length == 0) return;
  const int64_t width = 2 * b.target_lengths[n] + 1;
  const int64_t* target = b.targets + b.target_offsets[n];
  const T* alpha = log_alpha + alpha_offset(b, n);
  T* beta = beta_buffer + alpha_offset(b, n);
  T* gamma = gamma_buffer + 2 * b.target_offsets[n] + n;
  const T ll = log_likelihood[n];
  const T g = grad_nll[n];
  for (int64_t t = input_length - 1; t >= 0; --t) {
    const T* row = frame(b, scores, t, n);
    const T shift = shift_of(b, row_shift, t, n);
    T* cur = beta + t * width;
    const T* next = cur + width;
    for (int64_t s = threadIdx.x; s < width; s += blockDim.x) {
      const T emission = row[state_label(b, target, s)] - shift;
      T value;
      if (t == input_length - 1) {
        value = s >= width - 2 ? emission : neg_inf<T>();
      } else {
        const T stay = next[s];
        const T advance = s + 1 < width ? next[s + 1] : neg_inf<T>();
        const T jump = (s + 2 < width && can_skip(b, target, s + 2)) ? next[s + 2] : neg_inf<T>();
        value = logsumexp3(stay, advance, jump) + emission;
      }
      cur[s] = value;
      gamma[s] = exp_t(alpha[t * width + s] + value - emission - ll);
    }
    __syncthreads();
    T* out = grad + t * gst + n * gsb;
    for (int64_t s = threadIdx.x; s < width; s += blockDim.x) {
      if ((s & 1) == 0) {
        if (s != 0) continue;
        T total = T(0);
        for (int64_t k = 0; k < width; k += 2) total += gamma[k];
        out[b.blank] -= g * total;
      } else {
        const int64_t label = target[s >> 1];
        bool first = true;
        T total = T(0);
        for (int64_t k = 1; k < width; k += 2) {
          if (target[k >> 1] != label) continue;
          if (k < s) { first = false; break; }
          total += gamma[k];
        }
        if (first) out[label] -= g * total;
      }
    }
    __syncthreads();
  }
}

// ------------------------------------------------------------ log-sum-exp rows

template <typename T>
__global__ void logsumexp_rows_kernel(Batch b, const T* logits, T* lse, T* neg_mean) {
  __shared__ T shared[kThreads / 32];
  const int64_t r = blockIdx.x;
  const int64_t t = r / b.batch_size, n = r % b.batch_size;
  const T* row = frame(b, logits, t, n);
  T m = neg_inf<T>(), total = T(0);
  for (int64_t c = threadIdx.x; c < b.num_classes; c += blockDim.x) {
    m = fmax(m, row[c]);
    total += row[c];
  }
  m = block_reduce(m, MaxOp(), neg_inf<T>(), shared);
  total = block_reduce(total, AddOp(), T(0), shared);
  const T shift = m == neg_inf<T>() ? T(0) : m;
  T sum = T(0);
  for (int64_t c = threadIdx.x; c < b.num_classes; c += blockDim.x) sum += exp_t(row[c] - shift);
  sum = block_reduce(sum, AddOp(), T(0), shared);
  if (threadIdx.x == 0) {
    const T value = shift + log_t(sum);
    lse[r] = value;
    neg_mean[r] = value - total / T(b.num_classes);
  }
}

// ------------------------------------------------------------ best alignment

template <typename T>
__global__ void best_alignment_kernel(Batch b, const T* scores, int64_t* alignment, T* score,
                                      T* viterbi, uint8_t* backpointers) {
  const int64_t n = blockIdx.x;
  __shared__ bool valid;
  if (threadIdx.x == 0) valid = sample_is_valid(b, n);
  __syncthreads();
  int64_t* path = alignment + n * b.max_time;
  for (int64_t t = threadIdx.x; t < b.max_time; t += blockDim.x) path[t] = valid ? b.blank : -1;
  if (!valid) {
    if (threadIdx.x == 0) score[n] = quiet_nan<T>();
    return;
  }
  const int64_t input_length = b.input_lengths[n];
  const int64_t width = 2 * b.target_lengths[n] + 1;
  if (input_length == 0) {
    if (threadIdx.x == 0) score[n] = width == 1 ? T(0) : neg_inf<T>();
    return;
  }
  const int64_t* target = b.targets + b.target_offsets[n];
  T* best = viterbi + alpha_offset(b, n);
  uint8_t* back = backpointers + alpha_offset(b, n);
  for (int64_t t = 0; t < input_length; ++t) {
    const T* row = frame(b, scores, t, n);
    T* cur = best + t * width;
    const T* prev = cur - width;
    for (int64_t s = threadIdx.x; s < width; s += blockDim.x) {
      const T emission = row[state_label(b, target, s)];
      if (t == 0) {
        cur[s] = s < 2 ? emission : neg_inf<T>();
        continue;
      }
      T top = prev[s];
      uint8_t step = 0;
      if (s >= 1 && prev[s - 1] > top) { top = prev[s - 1]; step = 1; }
      if (can_skip(b, target, s) && prev[s - 2] > top) { top = prev[s - 2]; step = 2; }
      cur[s] = top + emission;
      back[t * width + s] = step;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const T* last = best + (input_length - 1) * width;
    int64_t state = width - 1;
    if (width > 1 && last[width - 2] > last[width - 1]) state = width - 2;
    score[n] = last[state];
    if (last[state] == neg_inf<T>()) return;
    for (int64_t t = input_length - 1; t >= 0; --t) {
      path[t] = state_label(b, target, state);
      if (t > 0) state -= back[t * width + state];
    }
  }
}

// ------------------------------------------------------------- greedy decode

template <typename T>
__global__ void argmax_rows_kernel(Batch b, const T* scores, int64_t* best) {
  __shared__ T shared_value[kThreads];
  __shared__ int64_t shared_index[kThreads];
  const int64_t r = blockIdx.x;
  const int64_t t = r / b.batch_size, n = r % b.batch_size;
  const T* row = frame(b, scores, t, n);
  T value = neg_inf<T>();
  int64_t index = b.num_classes;  // beaten by any real class
  for (int64_t c = threadIdx.x; c < b.num_classes; c += blockDim.x) {
    if (row[c] > value || index == b.num_classes) { value = row[c]; index = c; }
  }
  shared_value[threadIdx.x] = value;
  shared_index[threadIdx.x] = index;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const T other = shared_value[threadIdx.x + stride];
      const int64_t other_index = shared_index[threadIdx.x + stride];
      // Larger value wins; equal values go to the smaller class index.
      if (other > shared_value[threadIdx.x] ||
          (other == shared_value[threadIdx.x] && other_index < shared_index[threadIdx.x])) {
        shared_value[threadIdx.x] = other;
        shared_index[threadIdx.x] = other_index;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) best[t * b.batch_size + n] = shared_index[0];
}

__global__ void collapse_kernel(Batch b, const int64_t* best, int64_t* tokens, int64_t* lengths) {
  const int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= b.batch_size) return;
  int64_t* out = tokens + n * b.max_time;
  const int64_t input_length = b.input_lengths[n];
  const bool valid = input_length >= 0 && input_length <= b.max_time;
  int64_t count = 0, previous = -1;
  for (int64_t t = 0; valid && t < input_length; ++t) {
    const int64_t label = best[t * b.batch_size + n];
    if (label != b.blank && label != previous) out[count++] = label;
    previous = label;
  }
  for (int64_t t = count; t < b.max_time; ++t) out[t] = b.blank;
  lengths[n] = valid ? count : -1;
}

int64_t blocks_for(int64_t items) { return (items + kThreads - 1) / kThreads; }

}  // namespace

int64_t backward_scratch_bytes(const Batch& b, int64_t element_size) {
  return BackwardScratch::bytes(b, element_size);
}

int64_t best_alignment_scratch_bytes(const Batch& b, int64_t element_size) {
  return alpha_size(b) * (element_size + 1);
}

int64_t greedy_decode_scratch_bytes(const Batch& b) {
  return b.max_time * b.batch_size * int64_t(sizeof(int64_t));
}

template <typename T>
cudaError_t forward(const Batch& b, const T* scores, const T* row_shift, bool zero_infinity,
                    T* nll, T* log_alpha, cudaStream_t stream) {
  if (b.batch_size == 0) return cudaSuccess;
  forward_kernel<T><<<b.batch_size, kThreads, 0, stream>>>(b, scores, row_shift, zero_infinity,
                                                           nll, log_alpha);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(const Batch& b, const T* scores, const T* row_shift, const T* grad_nll,
                     const T* grad_smooth, const T* nll, const T* log_alpha, bool zero_infinity,
                     T* grad, int64_t gst, int64_t gsb, void* scratch, cudaStream_t stream) {
  (void)nll;  // impossibility is read from the forward variables
  if (b.batch_size == 0 || b.max_time == 0) return cudaSuccess;
  BackwardScratch work(b, sizeof(T), scratch);
  T* ll = static_cast<T*>(work.log_likelihood);
  likelihood_kernel<T><<<blocks_for(b.batch_size), kThreads, 0, stream>>>(b, log_alpha,
                                                                          work.status, ll);
  dense_gradient_kernel<T><<<b.max_time * b.batch_size, kThreads, 0, stream>>>(
      b, scores, row_shift, grad_nll, grad_smooth, zero_infinity, work.status, grad, gst, gsb);
  occupancy_kernel<T><<<b.batch_size, kThreads, 0, stream>>>(
      b, scores, row_shift, grad_nll, log_alpha, work.status, ll, static_cast<T*>(work.beta),
      static_cast<T*>(work.gamma), grad, gst, gsb);
  return cudaGetLastError();
}

template <typename T>
cudaError_t logsumexp_rows(const Batch& b, const T* logits, T* lse, T* neg_mean,
                           cudaStream_t stream) {
  if (b.max_time * b.batch_size == 0) return cudaSuccess;
  logsumexp_rows_kernel<T><<<b.max_time * b.batch_size, kThreads, 0, stream>>>(b, logits, lse,
                                                                               neg_mean);
  return cudaGetLastError();
}

template <typename T>
cudaError_t best_alignment(const Batch& b, const T* scores, int64_t* alignment, T* score,
                           void* scratch, cudaStream_t stream) {
  if (b.batch_size == 0) return cudaSuccess;
  T* viterbi = static_cast<T*>(scratch);
  uint8_t* back = reinterpret_cast<uint8_t*>(viterbi + alpha_size(b));
  best_alignment_kernel<T><<<b.batch_size, kThreads, 0, stream>>>(b, scores, alignment, score,
                                                                  viterbi, back);
  return cudaGetLastError();
}

template <typename T>
cudaError_t greedy_decode(const Batch& b, const T* scores, int64_t* tokens, int64_t* lengths,
                          void* scratch, cudaStream_t stream) {
  if (b.batch_size == 0) return cudaSuccess;
  int64_t* best = static_cast<int64_t*>(scratch);
  if (b.max_time > 0) {
    argmax_rows_kernel<T><<<b.max_time * b.batch_size, kThreads, 0, stream>>>(b, scores, best);
  }
  collapse_kernel<<<blocks_for(b.batch_size), kThreads, 0, stream>>>(b, best, tokens, lengths);
  return cudaGetLastError();
}

#define PYPRUNE_INSTANTIATE(T)                                                                  \
  template cudaError_t forward<T>(const Batch&, const T*, const T*, bool, T*, T*, cudaStream_t); \
  template cudaError_t backward<T>(const Batch&, const T*, const T*, const T*, const T*,         \
                                   const T*, const T*, bool, T*, int64_t, int64_t, void*,        \
                                   cudaStream_t);                                                \
  template cudaError_t logsumexp_rows<T>(const Batch&, const T*, T*, T*, cudaStream_t);         \
  template cudaError_t best_alignment<T>(const Batch&, const T*, int64_t*, T*, void*,           \
                                         cudaStream_t);                                         \
  template cudaError_t greedy_decode<T>(const Batch&, const T*, int64_t*, int64_t*, void*,      \
                                        cudaStream_t);

PYPRUNE_INSTANTIATE(float)
PYPRUNE_INSTANTIATE(double)
#undef PYPRUNE_INSTANTIATE

}  // namespace cuda
}  // namespace ctc
}  // namespace pyprune
