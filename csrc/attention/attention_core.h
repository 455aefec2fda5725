// Masked attention for decoding on the CPU, torch-free: softmax(q k^T * scale) v
// per (batch, head) with a key-padding mask and a prefix rule, for the shapes
// of batch-1 decoding (one to a few dozen query rows, tens of keys, head size
// 32-128), where a general attention kernel spends more on its set-up than
// on the arithmetic.
//
// Visibility: query row i sees key j when key_valid[b, j] (every key when
// key_valid is null) and, for i < prefix, j < prefix as well (DEER's source
// rows, which must not see the target). A row that sees no key gets zeros.
// Sums and the softmax are float32; bfloat16 inputs are widened as read and
// each output is rounded once to the nearest bfloat16 (ties to even).
//
// q, k and v are (batch, heads, rows, head_dim) with any strides in elements
// but contiguous features, so a linear layer's (batch, rows, heads*head_dim)
// output is read in place. The output is (batch, queries, heads, head_dim),
// contiguous: the heads already merged for the output projection.
#pragma once

#include <cstdint>

namespace pyprune {
namespace attn {

template <typename T>
struct AttentionOf {
  const T* q;
  int64_t q_batch, q_head, q_row;    // strides
  const T* k;
  int64_t k_batch, k_head, k_row;
  const T* v;
  int64_t v_batch, v_head, v_row;
  const uint8_t* key_valid;          // (batch, keys) of 0/1, row stride valid_batch; or nullptr
  int64_t valid_batch;
  int64_t batch, heads, queries, keys, head_dim;
  int64_t prefix;                    // 0 <= prefix <= keys
  float scale;
  T* out;                            // (batch, queries, heads, head_dim), contiguous
};

using Attention = AttentionOf<float>;
using AttentionBf16 = AttentionOf<uint16_t>;  // bfloat16 bit patterns

// Floats of scratch memory one caller of attention_heads needs.
int64_t scratch_floats(int64_t keys, int64_t head_dim);

// Computes the (batch, head) pairs [first, last) (pair = b * heads + h); calls on disjoint ranges, each
// with its own scratch, may run concurrently.
void attention_heads(const Attention& p, int64_t first, int64_t last, float* scratch);
void attention_heads_bf16(const AttentionBf16& p, int64_t first, int64_t last, float* scratch);

}  // namespace attn
}  // namespace pyprune
