// Block-sparse linear layer on the CPU, torch-free: y = x W^T + bias with W
// stored as its live 32x32 blocks only (block compressed rows).
//
// Layout ("packed blocks"): block row r of W (outputs 32r .. 32r+31) owns the
// live blocks row_ptr[r] .. row_ptr[r+1]-1; live block b sits in block column
// col_index[b] (inputs 32c .. 32c+31) and is stored transposed, k-major:
// blocks[b*1024 + k*32 + n] = W[32r + n, 32c + k]. So the kernel reads 32
// consecutive output weights per input feature, the rows of an outer product.
//
// The kernel is for inference at small token counts (decoding), where a layer
// reads its weight once per call and the cost is the weight bytes: dead blocks
// are never read, and nothing is gathered, scattered or repacked per call.
#pragma once

#include <cstdint>

namespace pyprune {
namespace bsr {

constexpr int64_t kBlock = 32;

// What is applied to each output (bias included) before it is stored.
enum class Activation : int { kNone = 0, kGelu = 1 };

// The dimensions of one call; pointers are not owned. `T` is float, or
// uint16_t holding bfloat16 bit patterns (the same layout, half the bytes).
template <typename T>
struct ProblemOf {
  const T* x;               // (rows, in_features), row stride ldx
  int64_t rows;
  int64_t ldx;
  const T* blocks;          // (live, 32, 32), k-major as above
  const int64_t* row_ptr;   // (block_rows + 1)
  const int64_t* col_index; // (live)
  int64_t block_rows;       // out_features / 32
  const T* bias;            // (out_features) or nullptr
  T* y;                     // (rows, out_features), row stride ldy
  int64_t ldy;
  Activation activation;    // kGelu: y = gelu(x W^T + bias) in float32 (gelu_lanes, common/vec.h)
};

using Problem = ProblemOf<float>;
using ProblemBf16 = ProblemOf<uint16_t>;

// Computes the outputs of block rows [first, last) for every token row; calls
// on disjoint block-row ranges may run concurrently.
void linear_rows(const Problem& p, int64_t first, int64_t last);

// bfloat16: the products of bfloat16 inputs are exact in float32 and are
// summed in float32 (bias included); each output is rounded to the nearest
// bfloat16 (ties to even) once. On CPUs with AVX512_BF16 the kernel runs on
// the pairwise dot product vdpbf16ps (two multiply-adds per lane, which
// treats subnormal inputs as zero); elsewhere it widens to float32.
void linear_rows_bf16(const ProblemBf16& p, int64_t first, int64_t last);

}  // namespace bsr
}  // namespace pyprune
