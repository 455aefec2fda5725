// CUDA kernels for the Levenshtein labels. See levenshtein_cuda.h.
#include "levenshtein_cuda.h"

#include <cstdint>

namespace pyprune {
namespace lev {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ int64_t words_for(int64_t n) { return (n + 63) / 64; }

// Per-pair scratch layout (in 8-byte words).
struct PairScratch {
  int64_t* x;
  int64_t* y;
  uint64_t* history;  // (ny + 1) columns of `words` words

  __device__ PairScratch(void* base, const Tokens& in, const Tokens& out, int64_t pair) {
    const int64_t per_pair = in.width + out.width + (out.width + 1) * words_for(in.width);
    int64_t* p = static_cast<int64_t*>(base) + pair * per_pair;
    x = p;
    y = p + in.width;
    history = reinterpret_cast<uint64_t*>(p + in.width + out.width);
  }
};

// Warp-wide stream compaction of one row (drop padding); returns the count.
__device__ int64_t compact(const int64_t* row, int64_t width, int64_t padding_idx, int64_t* into) {
  const int lane = threadIdx.x % kWarp;
  int64_t count = 0;
  for (int64_t base = 0; base < width; base += kWarp) {
    const int64_t k = base + lane;
    const int64_t token = k < width ? row[k] : padding_idx;
    const bool keep = token != padding_idx;
    const unsigned ballot = __ballot_sync(kFull, keep);
    if (keep) into[count + __popc(ballot & ((1u << lane) - 1))] = token;
    count += __popc(ballot);
  }
  return count;
}

// Match word w of token `token` against x: bit b set where x[64w + b] == token.
__device__ uint64_t match_word(const int64_t* x, int64_t nx, int64_t w, int64_t token) {
  const int lane = threadIdx.x % kWarp;
  const int64_t low = 64 * w + lane, high = low + 32;
  const unsigned lo = __ballot_sync(kFull, low < nx && x[low] == token);
  const unsigned hi = __ballot_sync(kFull, high < nx && x[high] == token);
  return (uint64_t(hi) << 32) | lo;
}

__device__ __forceinline__ int64_t lcs_prefix(const uint64_t* column, int64_t i) {
  int64_t ones = 0;
  for (int64_t w = 0; w < (i >> 6); ++w) ones += __popcll(column[w]);
  if (i & 63) ones += __popcll(column[i >> 6] & ((uint64_t(1) << (i & 63)) - 1));
  return i - ones;
}

__global__ void edit_targets_warp_kernel(Tokens in, Tokens out, int64_t padding_idx,
                                         int64_t unk_idx, Targets targets, void* scratch) {
  const int64_t pair = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (pair >= in.rows) return;  // whole warps leave together
  const int lane = threadIdx.x % kWarp;
  PairScratch work(scratch, in, out, pair);
  const int64_t nx = compact(in.data + pair * in.stride, in.width, padding_idx, work.x);
  const int64_t ny = compact(out.data + pair * out.stride, out.width, padding_idx, work.y);
  __syncwarp();
  const int64_t W = words_for(nx);

  // Column recurrence V_{j+1} = (V + (V & M)) | (V & ~M), lane w owns word w
  // of each group of 32 words; carries cross lanes by a prefix over
  // (generate, propagate) ballots.
  for (int64_t w = lane; w < W; w += kWarp) work.history[w] = ~uint64_t(0);
  __syncwarp();
  for (int64_t j = 0; j < ny; ++j) {
    const uint64_t* previous = work.history + j * W;
    uint64_t* next = work.history + (j + 1) * W;
    const int64_t token = work.y[j];
    unsigned carry_in_group = 0;  // carry into the first word of the group
    for (int64_t group = 0; group < W; group += kWarp) {
      uint64_t match_mine = 0;
      for (int64_t w = group; w < group + kWarp && w < W; ++w) {
        const uint64_t m = match_word(work.x, nx, w, token);
        if (lane == w - group) match_mine = m;
      }
      const int64_t w = group + lane;
      const bool active = w < W;
      const uint64_t v = active ? previous[w] : 0;
      const uint64_t u = v & match_mine;
      const uint64_t sum = v + u;
      const bool generate = active && sum < v;                  // carries out by itself
      const bool propagate = active && sum == ~uint64_t(0);     // carries out if one comes in
      const unsigned g = __ballot_sync(kFull, generate);
      const unsigned p = __ballot_sync(kFull, propagate);
      const uint64_t carries = lane_carries(g, p, carry_in_group);
      const uint64_t carry = (carries >> lane) & 1;
      if (active) next[w] = (sum + carry) | (v & ~match_mine);
      carry_in_group = unsigned((carries >> kWarp) & 1);
    }
    __syncwarp();
  }

  const int64_t in_gaps = in.width > 0 ? in.width - 1 : 0;
  int64_t* ins_row = targets.mask_ins_targets + pair * in_gaps;
  int64_t* del_row = targets.word_del_targets + pair * out.width;
  bool* mask_row = targets.masked_tgt_masks + pair * out.width;
  int64_t* token_row = targets.masked_tgt_tokens + pair * out.width;
  const int64_t* reference = out.data + pair * out.stride;
  for (int64_t k = lane; k < in_gaps; k += kWarp) ins_row[k] = 0;
  for (int64_t k = lane; k < out.width; k += kWarp) {
    del_row[k] = 0;
    mask_row[k] = false;
    token_row[k] = reference[k];
  }
  __syncwarp();
  if (lane != 0) return;

  // Walk back (libnat's rule); counts go straight into mask_ins_targets.
  int64_t i = nx, j = ny;
  int64_t lcs = W > 0 ? lcs_prefix(work.history + j * W, i) : 0;
  while (i > 0 || j > 0) {
    if (j > 0 && (W == 0 || lcs_prefix(work.history + (j - 1) * W, i) == lcs)) {
      if (i >= 1 && i <= nx - 1 && i - 1 < in_gaps) ++ins_row[i - 1];
      --j;
    } else if (i > 0 && ((work.history[j * W + ((i - 1) >> 6)] >> ((i - 1) & 63)) & 1)) {
      if (i - 1 < out.width) del_row[i - 1] = 1;
      --i;
    } else {
      --i;
      --j;
      --lcs;
    }
  }
  int64_t position = 0;
  for (int64_t k = 1; k < nx && position < out.width; ++k) {
    ++position;
    for (int64_t c = 0; c < ins_row[k - 1] && position < out.width; ++c, ++position) {
      mask_row[position] = true;
      token_row[position] = unk_idx;
    }
  }
}

__global__ void edit_targets_per_thread_kernel(Tokens in, Tokens out, int64_t padding_idx,
                                               int64_t unk_idx, Targets targets, int32_t* matrix) {
  const int64_t pair = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pair >= in.rows) return;
  const int64_t* xrow = in.data + pair * in.stride;
  const int64_t* yrow = out.data + pair * out.stride;
  const int64_t columns = out.width + 1;
  int32_t* d = matrix + pair * (in.width + 1) * columns;
  // Positions of the non-padding tokens, found by scanning (no compaction).
  int64_t nx = 0, ny = 0;
  for (int64_t k = 0; k < in.width; ++k) nx += xrow[k] != padding_idx;
  for (int64_t k = 0; k < out.width; ++k) ny += yrow[k] != padding_idx;
  for (int64_t i = 0; i <= nx; ++i) d[i * columns] = int32_t(i);
  for (int64_t j = 0; j <= ny; ++j) d[j] = int32_t(j);
  for (int64_t i = 1, xi = 0; i <= nx; ++i, ++xi) {
    while (xrow[xi] == padding_idx) ++xi;
    for (int64_t j = 1, yj = 0; j <= ny; ++j, ++yj) {
      while (yrow[yj] == padding_idx) ++yj;
      const int32_t diagonal = d[(i - 1) * columns + j - 1] + (xrow[xi] == yrow[yj] ? 0 : 2);
      const int32_t side = min(d[(i - 1) * columns + j], d[i * columns + j - 1]) + 1;
      d[i * columns + j] = min(side, diagonal);
    }
  }
  const int64_t in_gaps = in.width > 0 ? in.width - 1 : 0;
  int64_t* ins_row = targets.mask_ins_targets + pair * in_gaps;
  int64_t* del_row = targets.word_del_targets + pair * out.width;
  for (int64_t k = 0; k < in_gaps; ++k) ins_row[k] = 0;
  for (int64_t k = 0; k < out.width; ++k) {
    del_row[k] = 0;
    targets.masked_tgt_masks[pair * out.width + k] = false;
    targets.masked_tgt_tokens[pair * out.width + k] = yrow[k];
  }
  int64_t i = nx, j = ny;
  while (i > 0 || j > 0) {
    const int32_t here = d[i * columns + j];
    if (j > 0 && d[i * columns + j - 1] < here) {
      if (i >= 1 && i <= nx - 1) ++ins_row[i - 1];
      --j;
    } else if (i > 0 && d[(i - 1) * columns + j] < here) {
      if (i - 1 < out.width) del_row[i - 1] = 1;
      --i;
    } else {
      --i;
      --j;
    }
  }
  int64_t position = 0;
  for (int64_t k = 1; k < nx && position < out.width; ++k) {
    ++position;
    for (int64_t c = 0; c < ins_row[k - 1] && position < out.width; ++c, ++position) {
      targets.masked_tgt_masks[pair * out.width + position] = true;
      targets.masked_tgt_tokens[pair * out.width + position] = unk_idx;
    }
  }
}

}  // namespace

int64_t edit_targets_scratch_bytes(const Tokens& in, const Tokens& out) {
  const int64_t words = (in.width + 63) / 64;
  return in.rows * (in.width + out.width + (out.width + 1) * words) * 8;
}

cudaError_t edit_targets(const Tokens& in, const Tokens& out, int64_t padding_idx,
                         int64_t unk_idx, const Targets& targets, void* scratch,
                         cudaStream_t stream) {
  if (in.rows == 0) return cudaSuccess;
  const int64_t blocks = (in.rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  edit_targets_warp_kernel<<<blocks, kWarpsPerBlock * kWarp, 0, stream>>>(
      in, out, padding_idx, unk_idx, targets, scratch);
  return cudaGetLastError();
}

int64_t edit_targets_per_thread_scratch_bytes(const Tokens& in, const Tokens& out) {
  return in.rows * (in.width + 1) * (out.width + 1) * 4;
}

cudaError_t edit_targets_per_thread(const Tokens& in, const Tokens& out, int64_t padding_idx,
                                    int64_t unk_idx, const Targets& targets, void* scratch,
                                    cudaStream_t stream) {
  if (in.rows == 0) return cudaSuccess;
  const int threads = 128;
  edit_targets_per_thread_kernel<<<(in.rows + threads - 1) / threads, threads, 0, stream>>>(
      in, out, padding_idx, unk_idx, targets, static_cast<int32_t*>(scratch));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace lev
}  // namespace pyprune
