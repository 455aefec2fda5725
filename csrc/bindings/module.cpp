// The pyprune._C extension module: schemas of the raw kernel ops.
//
// The public ops (pyprune::*) are defined in Python so they exist without this
// extension; these private pyprune_C::* ops are the compiled kernels the
// Python layer routes to. CPU implementations live in *_cpu.cpp, CUDA ones in
// *_cuda.cpp (built only where torch has CUDA).
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "../common/isa_dispatch.h"

namespace {
// Which compiled variant the CPU kernels run here (isa_dispatch.h), for `pyprune info`.
std::string cpu_isa_name() {
  static const char* const names[] = {"base", "avx2", "avx512", "avx512bf16"};
  return names[static_cast<int>(pyprune::cpu_isa())];
}
}  // namespace

extern "C" {
// Importing pyprune._C loads this library and runs the registrations below;
// the module itself carries no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(pyprune_C, m) {
  m.def(
      "ctc_forward(Tensor scores, Tensor? row_shift, Tensor targets, Tensor target_offsets, "
      "Tensor input_lengths, Tensor target_lengths, int max_target_length, int blank, "
      "bool zero_infinity) -> (Tensor, Tensor)");
  m.def(
      "ctc_backward(Tensor grad_nll, Tensor? grad_smooth, Tensor scores, Tensor? row_shift, "
      "Tensor targets, Tensor target_offsets, Tensor input_lengths, Tensor target_lengths, "
      "Tensor nll, Tensor log_alpha, int max_target_length, int blank, bool zero_infinity) "
      "-> Tensor");
  m.def("ctc_logsumexp_rows(Tensor logits) -> (Tensor, Tensor)");
  m.def(
      "ctc_best_alignment(Tensor scores, Tensor targets, Tensor target_offsets, "
      "Tensor input_lengths, Tensor target_lengths, int max_target_length, int blank) "
      "-> (Tensor, Tensor)");
  m.def("ctc_greedy_decode(Tensor scores, Tensor input_lengths, int blank) -> (Tensor, Tensor)");
  // Greedy decoding to [bos] tokens [eos] rows (class_map: each class's token id).
  m.def(
      "ctc_greedy_draft(Tensor scores, Tensor input_lengths, Tensor class_map, int blank, "
      "float blank_penalty, int bos, int eos, int pad, int max_length) -> Tensor");

  m.def(
      "lev_edit_targets(Tensor in_tokens, Tensor out_tokens, int padding_idx, int unk_idx) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // CUDA only: the one-thread-per-pair anchor of the GPU benchmark.
  m.def(
      "lev_edit_targets_per_thread(Tensor in_tokens, Tensor out_tokens, int padding_idx, "
      "int unk_idx) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("lev_edit_distance(Tensor x, Tensor y, int padding_idx, int sub_cost) -> Tensor");
  m.def("lev_edit_path(Tensor in_tokens, Tensor out_tokens, int padding_idx) -> (Tensor, Tensor)");
  // Applying predicted edits to left-packed [bos] ... [eos] rows: (the edited rows, each input token's
  // output column; the width, past the last column, where it was dropped).
  m.def(
      "lev_apply_del_words(Tensor in_tokens, Tensor word_del_pred, int padding_idx, int bos_idx, "
      "int eos_idx) -> (Tensor, Tensor)");
  m.def(
      "lev_apply_ins_masks(Tensor in_tokens, Tensor mask_ins_pred, int padding_idx, int unk_idx, "
      "int eos_idx, int? max_length) -> (Tensor, Tensor)");

  // Inference only (no autograd): y = x W^T + bias, W as its packed live 32x32 blocks.
  // activation: "none" or "gelu" (exact erf GELU applied to each output in float32).
  m.def(
      "bsr_linear(Tensor x, Tensor blocks, Tensor row_ptr, Tensor col_index, Tensor? bias, "
      "str activation=\"none\") -> Tensor");

  // Inference only: decoding's attention with a key-padding mask and a prefix rule (query rows < prefix see
  // keys < prefix only); the output has the heads merged, (batch, queries, heads * head_dim).
  m.def(
      "masked_attention(Tensor q, Tensor k, Tensor v, Tensor? key_valid, int prefix, float scale) -> Tensor");

  // Inference only: one BERT-family encoder layer for decoding on packed linears (weights: blocks, row_ptr,
  // col_index, bias of query, key, value, attention output, FFN in (GELU in its epilogue), FFN out, then the
  // two LayerNorms' weight and bias). Query rows q_in attend to [prefix_k; the keys of kv_in] (key_valid,
  // source_rows as in masked_attention); returns (the rows' new states, kv_in's keys, kv_in's values), keys
  // and values (batch, heads, rows, head_dim).
  m.def(
      "bert_layer(Tensor kv_in, Tensor q_in, Tensor? prefix_k, Tensor? prefix_v, Tensor? key_valid, "
      "int source_rows, Tensor[] weights, int heads, float eps) -> (Tensor, Tensor, Tensor)");
  // Inference only: a pass over several such layers in one call (weights: bert_layer's, layer after layer;
  // heads, eps: one a layer; prefix_k, prefix_v: one tensor a layer, or none). The last layer computes only
  // the rows from last_queries on; returns (those rows' states, each layer's keys and values cut to their
  // first keep_keys rows, none where keep_keys is 0).
  m.def(
      "bert_layers(Tensor h, Tensor[] prefix_k, Tensor[] prefix_v, Tensor? key_valid, int source_rows, "
      "int last_queries, int keep_keys, Tensor[] weights, int[] heads, float[] eps) -> (Tensor, Tensor[], Tensor[])");

  // Inference only: one greedy decoding step of the AR baseline's pre-LayerNorm decoder (DEER's
  // pyprune.deer.baseline) over all its layers, on packed linears (weights: per layer, blocks, row_ptr,
  // col_index, bias of self-attention query, key, value, output, cross-attention query, output, FFN in
  // (GELU in its epilogue), FFN out, then the three LayerNorms' weight and bias). x: the new token's
  // states, (batch, 1, hidden); self_k, self_v: each layer's cached keys and values (none before the first
  // step); cross_k, cross_v: each layer's keys and values of the source under cross_valid. Returns (the
  // token's states after the layers, each layer's keys and values with the token's appended).
  m.def(
      "decoder_step(Tensor x, Tensor[] self_k, Tensor[] self_v, Tensor[] cross_k, Tensor[] cross_v, "
      "Tensor? cross_valid, Tensor[] weights, int[] heads, float[] eps) -> (Tensor, Tensor[], Tensor[])");

  // The ISA variant of the CPU kernels: base, avx2, avx512 or avx512bf16 (PYPRUNE_CPU_ISA caps it).
  m.def("cpu_isa() -> str", &cpu_isa_name);
}
