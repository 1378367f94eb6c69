// sizewise CPU kernels: y = x @ W^T for int4 (group-wise), bf16, fp32 and int8-row weights, AVX-512.
// Built at first use by sizewise/kernels/__init__.py (torch.utils.cpp_extension), cached on disk per torch
// version and source hash; the PyTorch paths stay as the fallback and as the reference the tests use.
//
// Why: aten's int4 CPU kernel dequantizes one product at a time and returns bf16, and torch's bf16 GEMV
// does not use the CPU's bf16 dot-product instruction; at batch 1 the bundled model spent 4.5 ms per token
// in 210 int4 calls and 4 ms in its bf16 head. Here int4 weights sit in column panels of 16 rows: their
// codes widen to exact bf16 (q - 8) with one permute, one vdpbf16ps multiplies 16 rows' input pairs by a
// broadcast pair of bf16 activations with fp32 sums, and each group's scale and zero are applied once per
// group (w = (q - 8) * scale + zero: exactly the stored grid, on the bf16 activations aten's kernel takes).
// Weights stream from memory with software prefetch; for many tokens a panel is widened once and reused.
// Every (token, row) pair runs the same instruction sequence whatever the batch size, token block or
// thread split, so a row's output does not depend on which other rows share its batch.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

namespace {

enum Kind : int { Q4 = 0, BF16 = 1, F32 = 2, I8 = 3 };

struct Lin {
  int kind = F32;
  int64_t N = 0, K = 0, gs = 32;
  // Q4, in column panels of 16 rows (outputs), so one vdpbf16ps computes 16 outputs at once and no
  // horizontal sum is ever needed. Per panel and 4 inputs (quad u), 32 bytes: byte j holds, in its low
  // nibble, the code of row 16P + j/2 at input 4u + j%2 and, in its high nibble, the code of the same row at
  // input 4u + 2 + j%2 (one widening and two vpermw give two vectors of 16 rows x 2 inputs, vdpbf16ps's pair
  // layout). Panels are stored in pairs, interleaved quad by quad, so a pair's codes are one sequential
  // stream of 64-byte lines, (P * K/4 + 2u + P%2) * 32 for panel P (a last odd panel alone: (P * K/4 + u) *
  // 32). Scales, bf16, per panel and group 16 scales then 16 zeros (w = (q - 8) * scale + zero), paired the
  // same way: (P * G + 2g + P%2) * 32. One stream per pair instead of four took 1-thread batch-1 decode of
  // the bundled model's layer shapes from 10.9 to 14.6 GB/s. kernels.pack_q4 / rows_scales write these.
  const uint8_t* q = nullptr;
  const uint16_t* sz = nullptr;
  const uint16_t* wb = nullptr;   // BF16: [N, K]
  const float* wf = nullptr;      // F32: [N, K]
  const int8_t* q8 = nullptr;     // I8: [N, K] with one scale per row: w = q * rs[n]
  const float* rs = nullptr;      // I8: [N]
  const float* bias = nullptr;    // [N] or null
  std::vector<at::Tensor> keep;   // keeps the storage alive
};

// M activation rows in the forms the kinds read: bf16 (Q4 and BF16 multiply bf16 activations, as
// aten's int4 kernel and a bf16 matmul do) and fp32 (F32, I8).
struct Act {
  const uint16_t* xb = nullptr;  // [M, K]
  const float* xf = nullptr;     // [M, K]
  int64_t K = 0;
  const float* cs = nullptr;     // [M, K/32]: each 32-wide chunk's sum of the bf16 activations (Q4's zero term)
};

// Weights stream from memory once per token (the bundled model's 122 MB do not fit a 32 MB L3); reading
// 8 rows ahead took the 576x1536 down projection from 1.6-1.9 to 0.9-1.0 ms per token.
constexpr int PREFETCH_ROWS = 8;    // row-major kinds (BF16, F32, I8): the rows 8 ahead, read in order
// BF16 and F32 rows also go to L2 64 rows ahead (74 KB for the bf16 head): one core keeps more lines in
// flight through L2 than through L1 alone. The bf16 head 3.5 -> 3.0 ms on one thread, 2.4 -> 1.9 on two,
// the fp32 head 8.0 -> 6.2 and 5.0 -> 4.3; the int8 head got slower on one thread (1.44 -> 1.72), and int4's
// short per-matrix streams gained nothing (docs/kernels.md).
constexpr int PREFETCH_FAR_ROWS = 64;
constexpr int PREFETCH_LINES = 8;   // int4, per panel: a pair's stream 16 lines (16 quads) ahead; 32 and more were slower

inline __m512bh as_bh(__m512i v) {
  __m512bh r;
  std::memcpy(&r, &v, sizeof(r));
  return r;
}

// bf16 of -8..7 at indices 0..15: one vpermw turns 32 4-bit codes into 32 exact bf16 (q - 8).
inline __m512i q4_lut() {
  alignas(64) uint16_t t[32] = {0};
  for (int j = 0; j < 16; ++j) {
    float f = static_cast<float>(j - 8);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    t[j] = static_cast<uint16_t>(u >> 16);
  }
  return _mm512_load_si512(t);
}

// Q4, for TM tokens and NB panels of 16 rows: y[t, n] = sum over groups g of [scale(n, g) * d(t, n, g) +
// zero(n, g) * X(t, g)], where d is the group's sum of (q - 8) * x (pairs of exact products, one vdpbf16ps
// per 2 inputs, fp32 sums) and X the group's sum of the bf16 activations (its chunk sums, in order). d is
// summed in two chains, inputs 4u, 4u+1 and inputs 4u+2, 4u+3, added at the group's end: one chain of
// dependent vdpbf16ps per group was the bound of a single thread's decode (one token: 15.3 -> 16.2 GB/s
// from memory on one thread, 17.8 -> 19.7 in cache; two threads +1 %). The
// weights come either decoded on the fly (few tokens: the weights are read once anyway) or from `dec`, the
// panels already widened to bf16 (q - 8) (many tokens: widened once, reused by every token tile). Both give
// the same values in the same order, so every (token, row) pair gets the same instruction sequence whatever
// M, the tiles, the path and the thread split are: a row's output never depends on its batch.
inline void q4_widen(const uint8_t* p, const __m512i& lut, __m512bh& lo, __m512bh& hi) {
  const __m512i wd = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  lo = as_bh(_mm512_permutexvar_epi16(_mm512_and_si512(wd, _mm512_set1_epi16(15)), lut));
  hi = as_bh(_mm512_permutexvar_epi16(_mm512_srli_epi16(wd, 4), lut));
}

inline __m512bh bcast_pair(const uint16_t* x) {  // x[0], x[1] (bf16) in every lane's pair
  int32_t v;
  std::memcpy(&v, x, 4);
  return as_bh(_mm512_set1_epi32(v));
}

inline __m512 bf16x16(const uint16_t* p) {  // 16 bf16 -> fp32
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

template <int TM, int NB, bool DEC>
inline void tile_q4(const Lin& w, const Act& a, const float* X, int64_t m0, int64_t P0, const uint16_t* dec, float* y,
                    int64_t ldy, const __m512i& lut) {
  __m512 acc[TM][NB], d[TM][NB], e[TM][NB];
  for (int t = 0; t < TM; ++t)
    for (int b = 0; b < NB; ++b) acc[t][b] = _mm512_setzero_ps();
  const int64_t K = w.K, G = K / w.gs, quads = w.gs / 4;
  if constexpr (!DEC) {  // the next tile's pair: its code and scale streams start warm
    for (int l = 0; l < PREFETCH_LINES * NB; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(w.q + (P0 + NB) * (K / 4) * 32 + l * 64), _MM_HINT_T0);
    for (int l = 0; l < 4 * NB; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(w.sz + (P0 + NB) * G * 32 + l * 32), _MM_HINT_T0);
  }
  for (int64_t g = 0; g < G; ++g) {
    for (int t = 0; t < TM; ++t)
      for (int b = 0; b < NB; ++b) d[t][b] = e[t][b] = _mm512_setzero_ps();
    for (int64_t u = g * quads; u < (g + 1) * quads; ++u) {  // 4 inputs: 2 pairs
      __m512bh lo[NB], hi[NB];
      for (int b = 0; b < NB; ++b) {
        if constexpr (DEC) {
          lo[b] = as_bh(_mm512_loadu_si512(dec + (b * (K / 4) + u) * 64));
          hi[b] = as_bh(_mm512_loadu_si512(dec + (b * (K / 4) + u) * 64 + 32));
        } else {
          const uint8_t* qp = w.q + (P0 * (K / 4) + u * NB + b) * 32;  // P0 even, or NB 1 (the last panel)
          if (b == 0) _mm_prefetch(reinterpret_cast<const char*>(qp + PREFETCH_LINES * NB * 64), _MM_HINT_T0);
          q4_widen(qp, lut, lo[b], hi[b]);
        }
      }
      for (int t = 0; t < TM; ++t) {
        const __m512bh x0 = bcast_pair(a.xb + (m0 + t) * K + 4 * u), x1 = bcast_pair(a.xb + (m0 + t) * K + 4 * u + 2);
        for (int b = 0; b < NB; ++b) {
          d[t][b] = _mm512_dpbf16_ps(d[t][b], lo[b], x0);
          e[t][b] = _mm512_dpbf16_ps(e[t][b], hi[b], x1);
        }
      }
    }
    for (int b = 0; b < NB; ++b) {
      const uint16_t* sp = w.sz + (P0 * G + g * NB + b) * 32;
      if constexpr (!DEC) _mm_prefetch(reinterpret_cast<const char*>(sp + 4 * NB * 32), _MM_HINT_T0);
      const __m512 sc = bf16x16(sp), zr = bf16x16(sp + 16);
      for (int t = 0; t < TM; ++t) {
        acc[t][b] = _mm512_fmadd_ps(_mm512_add_ps(d[t][b], e[t][b]), sc, acc[t][b]);
        acc[t][b] = _mm512_fmadd_ps(zr, _mm512_set1_ps(X[(m0 + t) * G + g]), acc[t][b]);
      }
    }
  }
  for (int t = 0; t < TM; ++t)
    for (int b = 0; b < NB; ++b) {
      __m512 v = acc[t][b];
      if (w.bias) v = _mm512_add_ps(v, _mm512_loadu_ps(w.bias + (P0 + b) * 16));
      _mm512_storeu_ps(y + (m0 + t) * ldy + (P0 + b) * 16, v);
    }
}

// Widen NB panels (all K) to bf16 (q - 8), in the order tile_q4<.., true> reads them.
template <int NB>
inline void widen_panels(const Lin& w, int64_t P0, uint16_t* dec, const __m512i& lut) {
  const int64_t U = w.K / 4;
  for (int64_t u = 0; u < U; ++u)
    for (int b = 0; b < NB; ++b) {
      __m512bh lo, hi;
      q4_widen(w.q + (P0 * U + u * NB + b) * 32, lut, lo, hi);
      std::memcpy(dec + (b * U + u) * 64, &lo, 64);
      std::memcpy(dec + (b * U + u) * 64 + 32, &hi, 64);
    }
}

constexpr int Q4_TM = 4;        // tokens per tile
constexpr int Q4_WIDEN_MIN = 8;  // from this many tokens, panels are widened once and reused across token tiles
constexpr int64_t Q4_MBLOCK = 128;  // token block per widening: its activations stay in L2

template <int NB, bool DEC>
inline void tokens_q4(const Lin& w, const Act& a, const float* X, int64_t m0, int64_t m1, int64_t P0,
                      const uint16_t* dec, float* y, int64_t ldy, const __m512i& lut) {
  int64_t m = m0;
  for (; m + Q4_TM <= m1; m += Q4_TM) tile_q4<Q4_TM, NB, DEC>(w, a, X, m, P0, dec, y, ldy, lut);
  switch (m1 - m) {
    case 3: tile_q4<3, NB, DEC>(w, a, X, m, P0, dec, y, ldy, lut); break;
    case 2: tile_q4<2, NB, DEC>(w, a, X, m, P0, dec, y, ldy, lut); break;
    case 1: tile_q4<1, NB, DEC>(w, a, X, m, P0, dec, y, ldy, lut); break;
    default: break;
  }
}

// Rows [r0, r1) (whole panels) of a Q4 weight for all M tokens.
inline void rows_q4(const Lin& w, const Act& a, float* y, int64_t ldy, int64_t M, int64_t r0, int64_t r1) {
  const __m512i lut = q4_lut();
  const int64_t P1 = r1 / 16, G = w.K / w.gs, cpg = w.gs / 32, C = w.K / 32;
  thread_local std::vector<float> Xv;  // each token's group sums of its bf16 activations, chunk sums in order
  Xv.resize(M * G);
  float* X = Xv.data();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      const float* cs = a.cs + m * C + g * cpg;
      float s = cs[0];
      for (int64_t c = 1; c < cpg; ++c) s += cs[c];
      X[m * G + g] = s;
    }
  if (M < Q4_WIDEN_MIN) {
    int64_t P = r0 / 16;
    for (; P + 2 <= P1; P += 2) tokens_q4<2, false>(w, a, X, 0, M, P, nullptr, y, ldy, lut);
    if (P < P1) tokens_q4<1, false>(w, a, X, 0, M, P, nullptr, y, ldy, lut);
    return;
  }
  thread_local std::vector<uint16_t> dec;
  dec.resize(2 * w.K * 16);
  for (int64_t m0 = 0; m0 < M; m0 += Q4_MBLOCK) {
    const int64_t m1 = std::min(m0 + Q4_MBLOCK, M);
    int64_t P = r0 / 16;
    for (; P + 2 <= P1; P += 2) {
      widen_panels<2>(w, P, dec.data(), lut);
      tokens_q4<2, true>(w, a, X, m0, m1, P, dec.data(), y, ldy, lut);
    }
    if (P < P1) {
      widen_panels<1>(w, P, dec.data(), lut);
      tokens_q4<1, true>(w, a, X, m0, m1, P, dec.data(), y, ldy, lut);
    }
  }
}

// BF16: bf16 weights times bf16 activations, fp32 sums (vdpbf16ps), as torch's bf16 matmul computes them.
// F32 / I8: fp32 activations, fp32 FMAs (I8 rows are scaled once at the end: w = q * rs[n]).
template <int KIND, int TM, int RN>
inline void block_dense(const Lin& w, const Act& a, int64_t m0, float* y, int64_t ldy, int64_t n0) {
  __m512 acc[TM][RN];
  for (int t = 0; t < TM; ++t)
    for (int r = 0; r < RN; ++r) acc[t][r] = _mm512_setzero_ps();
  const int64_t chunks = w.K / 32;
  constexpr int64_t ES = KIND == I8 ? 1 : KIND == BF16 ? 2 : 4;  // bytes per weight
  // The RN rows PREFETCH_ROWS ahead are one contiguous run of RN * K weights: walk it in step with the
  // chunks, RN * 32 weights per step, so the prefetches form one sequential stream (a strided prefetch of
  // each row's chunk took the int8 head 3.3 ms per token on one thread; this, 1.5 ms).
  const char* ahead = reinterpret_cast<const char*>(KIND == I8 ? static_cast<const void*>(w.q8)
                                                    : KIND == BF16 ? static_cast<const void*>(w.wb)
                                                                   : static_cast<const void*>(w.wf)) +
                      (n0 + PREFETCH_ROWS) * w.K * ES;
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t l = 0; l < RN * 32 * ES; l += 64) {
      _mm_prefetch(ahead + c * RN * 32 * ES + l, _MM_HINT_T0);
      if constexpr (KIND != I8)
        _mm_prefetch(ahead + (PREFETCH_FAR_ROWS - PREFETCH_ROWS) * w.K * ES + c * RN * 32 * ES + l, _MM_HINT_T1);
    }
    if constexpr (KIND == BF16) {
      __m512i xv[TM];
      for (int t = 0; t < TM; ++t) xv[t] = _mm512_loadu_si512(a.xb + (m0 + t) * a.K + c * 32);
      for (int r = 0; r < RN; ++r) {
        const uint16_t* wp = w.wb + (n0 + r) * w.K + c * 32;
        __m512bh wv = as_bh(_mm512_loadu_si512(wp));
        for (int t = 0; t < TM; ++t) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], wv, as_bh(xv[t]));
      }
    } else {
      __m512 x0[TM], x1[TM];
      for (int t = 0; t < TM; ++t) {
        x0[t] = _mm512_loadu_ps(a.xf + (m0 + t) * a.K + c * 32);
        x1[t] = _mm512_loadu_ps(a.xf + (m0 + t) * a.K + c * 32 + 16);
      }
      for (int r = 0; r < RN; ++r) {
        __m512 w0, w1;
        if constexpr (KIND == I8) {
          const int8_t* qp = w.q8 + (n0 + r) * w.K + c * 32;
          __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp));
          w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
          w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
        } else {
          w0 = _mm512_loadu_ps(w.wf + (n0 + r) * w.K + c * 32);
          w1 = _mm512_loadu_ps(w.wf + (n0 + r) * w.K + c * 32 + 16);
        }
        for (int t = 0; t < TM; ++t) {
          acc[t][r] = _mm512_fmadd_ps(w0, x0[t], acc[t][r]);
          acc[t][r] = _mm512_fmadd_ps(w1, x1[t], acc[t][r]);
        }
      }
    }
  }
  for (int t = 0; t < TM; ++t)
    for (int r = 0; r < RN; ++r) {
      float v = _mm512_reduce_add_ps(acc[t][r]);
      if constexpr (KIND == I8) v *= w.rs[n0 + r];
      if (w.bias) v += w.bias[n0 + r];
      y[t * ldy + n0 + r] = v;
    }
}

template <int KIND, int RN>
inline void tokens(const Lin& w, const Act& a, float* y, int64_t ldy, int64_t m0, int64_t M, int64_t n0) {
  int64_t m = m0;
  for (; m + 4 <= M; m += 4) block_dense<KIND, 4, RN>(w, a, m, y + m * ldy, ldy, n0);
  switch (M - m) {
    case 3: block_dense<KIND, 3, RN>(w, a, m, y + m * ldy, ldy, n0); break;
    case 2: block_dense<KIND, 2, RN>(w, a, m, y + m * ldy, ldy, n0); break;
    case 1: block_dense<KIND, 1, RN>(w, a, m, y + m * ldy, ldy, n0); break;
    default: break;
  }
}

// Rows [r0, r1) of w for all M tokens; tokens tiled so a tile of x stays in L2 while rows stream.
template <int KIND>
inline void rows_k(const Lin& w, const Act& a, float* y, int64_t ldy, int64_t M, int64_t r0, int64_t r1) {
  const int64_t tile = 64;
  for (int64_t m0 = 0; m0 < M; m0 += tile) {
    int64_t m1 = std::min(m0 + tile, M);
    int64_t n = r0;
    for (; n + 4 <= r1; n += 4) tokens<KIND, 4>(w, a, y, ldy, m0, m1, n);
    for (; n < r1; ++n) tokens<KIND, 1>(w, a, y, ldy, m0, m1, n);
  }
}

inline void rows(const Lin& w, const Act& a, float* y, int64_t ldy, int64_t M, int64_t r0, int64_t r1) {
  switch (w.kind) {
    case Q4: rows_q4(w, a, y, ldy, M, r0, r1); break;
    case BF16: rows_k<BF16>(w, a, y, ldy, M, r0, r1); break;
    case I8: rows_k<I8>(w, a, y, ldy, M, r0, r1); break;
    default: rows_k<F32>(w, a, y, ldy, M, r0, r1); break;
  }
}

// Activation buffers: the bf16 copy (round to nearest even, as .to(bfloat16)), the fp32 values, and each
// 32-wide chunk's sum of the bf16 values (Q4's zero term; one fixed order per row).
struct ActBuf {
  std::vector<uint16_t> xb;
  std::vector<float> xf, cs;
  Act act;
  void sums(int64_t M, int64_t K) {
    cs.resize(M * (K / 32));
    for (int64_t i = 0; i < M * K; i += 32)
      cs[i / 32] = _mm512_reduce_add_ps(_mm512_add_ps(bf16x16(xb.data() + i), bf16x16(xb.data() + i + 16)));
  }
  void from_f32(const float* x, int64_t M, int64_t K) {
    xb.resize(M * K);
    for (int64_t i = 0; i < M * K; i += 16) {
      __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
      std::memcpy(xb.data() + i, &b, 32);
    }
    sums(M, K);
    act = Act{xb.data(), x, K, cs.data()};
  }
  void from_bf16(const uint16_t* x, int64_t M, int64_t K, bool need_f32) {
    xb.assign(x, x + M * K);
    if (need_f32) {
      xf.resize(M * K);
      for (int64_t i = 0; i < M * K; i += 16)
        _mm512_storeu_ps(xf.data() + i, bf16x16(x + i));
    }
    sums(M, K);
    act = Act{xb.data(), need_f32 ? xf.data() : nullptr, K, cs.data()};
  }
};

struct Seg {
  const Lin* w;
  float* y;
  int64_t ldy;
};

// Several GEMMs over the same M activation rows in one parallel region (q/k/v, gate/up): rows are split
// across threads in blocks of 32 (an int4 panel pair; the last block of a matrix may be shorter); a block
// never straddles two matrices.
void gemm_multi(const std::vector<Seg>& segs, const Act& a, int64_t M) {
  std::vector<int64_t> start(segs.size() + 1, 0);
  for (size_t i = 0; i < segs.size(); ++i) start[i + 1] = start[i] + (segs[i].w->N + 31) / 32;
  const int64_t grain = M >= 16 ? 1 : 2;
  at::parallel_for(0, start.back(), grain, [&](int64_t b0, int64_t b1) {
    for (size_t i = 0; i < segs.size(); ++i) {
      int64_t lo = std::max(b0, start[i]), hi = std::min(b1, start[i + 1]);
      if (lo >= hi) continue;
      const Seg& s = segs[i];
      int64_t r0 = (lo - start[i]) * 32, r1 = std::min((hi - start[i]) * 32, s.w->N);
      rows(*s.w, a, s.y, s.ldy, M, r0, r1);
    }
  });
}

at::Tensor as_f32(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat ? x.contiguous() : x.to(at::kFloat).contiguous();
}

Lin make_lin(int64_t kind, const at::Tensor& w, const at::Tensor& sz, int64_t gs, const c10::optional<at::Tensor>& bias) {
  Lin L;
  L.kind = static_cast<int>(kind);
  TORCH_CHECK(w.is_contiguous(), "weight must be contiguous");
  L.keep.push_back(w);
  if (kind == Q4) {
    TORCH_CHECK(w.scalar_type() == at::kByte && w.dim() == 2, "int4 codes: uint8 [N, K/2]");
    TORCH_CHECK(w.size(0) % 16 == 0, "int4 rows must come in panels of 16");
    TORCH_CHECK(sz.scalar_type() == at::kBFloat16 && sz.is_contiguous(), "int4 scales: contiguous bf16 [N, G, 2]");
    L.N = w.size(0);
    L.K = w.size(1) * 2;
    L.gs = gs;
    TORCH_CHECK(gs % 32 == 0 && L.K % gs == 0, "group size must be a multiple of 32 dividing K");
    TORCH_CHECK(sz.numel() == L.N * (L.K / gs) * 2, "int4 scales have the wrong size");
    L.q = w.data_ptr<uint8_t>();
    L.sz = reinterpret_cast<const uint16_t*>(sz.data_ptr<at::BFloat16>());
    L.keep.push_back(sz);
  } else if (kind == BF16) {
    TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2, "bf16 weight [N, K]");
    L.N = w.size(0);
    L.K = w.size(1);
    L.wb = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  } else if (kind == I8) {
    TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2, "int8 weight [N, K]");
    L.N = w.size(0);
    L.K = w.size(1);
    L.q8 = w.data_ptr<int8_t>();
    at::Tensor rs = as_f32(sz).view({-1});
    TORCH_CHECK(rs.numel() == L.N, "int8 row scales: one per row");
    L.rs = rs.data_ptr<float>();
    L.keep.push_back(rs);
  } else {
    TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 2, "fp32 weight [N, K]");
    L.N = w.size(0);
    L.K = w.size(1);
    L.wf = w.data_ptr<float>();
  }
  TORCH_CHECK(L.K % 32 == 0, "input dim must be a multiple of 32");
  if (bias && bias->defined()) {
    at::Tensor b = as_f32(*bias);
    TORCH_CHECK(b.numel() == L.N, "bias has the wrong size");
    L.bias = b.data_ptr<float>();
    L.keep.push_back(b);
  }
  return L;
}

// Several weights applied to the same activations in one parallel region (q/k/v, gate/up): the activations
// are converted once, and each output is what `linear` would return for that weight alone.
std::vector<at::Tensor> linear_multi(const at::Tensor& x, const std::vector<int64_t>& kinds, const std::vector<at::Tensor>& ws,
                                     const std::vector<at::Tensor>& szs, const std::vector<int64_t>& gss,
                                     const std::vector<c10::optional<at::Tensor>>& biases) {
  const size_t n = kinds.size();
  TORCH_CHECK(ws.size() == n && szs.size() == n && gss.size() == n && biases.size() == n, "one entry per weight");
  std::vector<Lin> lins;
  lins.reserve(n);
  for (size_t i = 0; i < n; ++i) lins.push_back(make_lin(kinds[i], ws[i], szs[i], gss[i], biases[i]));
  TORCH_CHECK(x.dim() == 2, "x must be [M, K]");
  const int64_t M = x.size(0), K = x.size(1);
  std::vector<at::Tensor> ys;
  std::vector<Seg> segs;
  for (const Lin& L : lins) {
    TORCH_CHECK(L.K == K, "x must be [M, ", L.K, "]");
    ys.push_back(at::empty({M, L.N}, x.options().dtype(at::kFloat)));
    segs.push_back(Seg{&L, ys.back().data_ptr<float>(), L.N});
  }
  if (M == 0) return ys;
  ActBuf buf;
  at::Tensor xc;
  if (x.scalar_type() == at::kBFloat16) {
    xc = x.contiguous();
    bool need = false;
    for (const Lin& L : lins) need = need || L.kind == F32 || L.kind == I8;
    buf.from_bf16(reinterpret_cast<const uint16_t*>(xc.data_ptr<at::BFloat16>()), M, K, need);
  } else {
    xc = as_f32(x);
    buf.from_f32(xc.data_ptr<float>(), M, K);
  }
  gemm_multi(segs, buf.act, M);
  return ys;
}

// y [M, N] fp32 = x [M, K] @ W^T (+ bias), W given as (kind, tensor, scales, group size).
at::Tensor linear(const at::Tensor& x, int64_t kind, const at::Tensor& w, const at::Tensor& sz, int64_t gs,
                  const c10::optional<at::Tensor>& bias) {
  return linear_multi(x, {kind}, {w}, {sz}, {gs}, {bias})[0];
}

// --- paged attention for decode rows ----------------------------------------------------------------
// One new token per row: rotate q and k (HF's rotate_half convention, fp32, no fused multiply-adds, as the
// elementwise torch ops compute it), write k and v into the row's slot of the paged pool, then attend over
// the row's ctx positions, read block by block through its table: softmax(q.k * scale) . v in fp32. It
// replaces a gather of every row's blocks into a padded buffer, a mask and two batched matmuls per layer.
// One (row, head) of decode attention over the row's ctx positions, read block by block through its table
// (no division per position). q·k: one vector of FMAs over the head dim, then a horizontal sum; softmax in
// fp32; the output accumulates p·v position by position. The fixed-size version keeps q and the output in
// registers; both compute every value with the same operations in the same order.
struct Ctx {
  const int64_t* table;  // the row's block ids
  int64_t block_size, n, base;  // positions; the KV head's first slot (kvh * S)
};

template <typename F>
inline void each_slot(const Ctx& c, F&& f) {  // f(j, slot) for j = 0..n-1 in order
  for (int64_t j = 0, b = 0; j < c.n; ++b) {
    const int64_t first = c.base + c.table[b] * c.block_size, stop = std::min(c.n, j + c.block_size);
    for (int64_t s = first; j < stop; ++j, ++s) f(j, s);
  }
}

inline float softmax_in_place(float* sc, int64_t n, float mx) {  // exp(sc - mx) in place; returns 1 / sum
  float den = 0.f;
  for (int64_t j = 0; j < n; ++j) den += (sc[j] = std::exp(sc[j] - mx));
  return 1.0f / den;
}

template <int C>  // head dim 16 * C, the same for q, k and v
inline void attend_row(const Ctx& c, const float* qh, const float* kc, const float* vc, float scale, float* sc, float* o) {
  constexpr int64_t D = 16 * C;
  __m512 q[C], acc[C];
  for (int i = 0; i < C; ++i) q[i] = _mm512_loadu_ps(qh + 16 * i), acc[i] = _mm512_setzero_ps();
  float mx = -INFINITY;
  each_slot(c, [&](int64_t j, int64_t slot) {
    const float* kr = kc + slot * D;
    __m512 a = _mm512_setzero_ps();
    for (int i = 0; i < C; ++i) a = _mm512_fmadd_ps(q[i], _mm512_loadu_ps(kr + 16 * i), a);
    sc[j] = _mm512_reduce_add_ps(a) * scale;
    mx = std::max(mx, sc[j]);
  });
  const float inv = softmax_in_place(sc, c.n, mx);
  each_slot(c, [&](int64_t j, int64_t slot) {
    const float* vr = vc + slot * D;
    const __m512 p = _mm512_set1_ps(sc[j] * inv);
    for (int i = 0; i < C; ++i) acc[i] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vr + 16 * i), acc[i]);
  });
  for (int i = 0; i < C; ++i) _mm512_storeu_ps(o + 16 * i, acc[i]);
}

inline void attend_row_any(const Ctx& c, const float* qh, const float* kc, const float* vc, int64_t D, int64_t Dv,
                           float scale, float* sc, float* o) {
  float mx = -INFINITY;
  each_slot(c, [&](int64_t j, int64_t slot) {
    const float* kr = kc + slot * D;
    float acc = 0.f;
    if (D % 16 == 0) {
      __m512 a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + d), _mm512_loadu_ps(kr + d), a);
      acc = _mm512_reduce_add_ps(a);
    } else {
      for (int64_t d = 0; d < D; ++d) acc += qh[d] * kr[d];
    }
    sc[j] = acc * scale;
    mx = std::max(mx, sc[j]);
  });
  const float inv = softmax_in_place(sc, c.n, mx);
  for (int64_t d = 0; d < Dv; ++d) o[d] = 0.f;
  each_slot(c, [&](int64_t j, int64_t slot) {
    const float* vr = vc + slot * Dv;
    const float p = sc[j] * inv;
    if (Dv % 16 == 0) {
      for (int64_t d = 0; d < Dv; d += 16)
        _mm512_storeu_ps(o + d, _mm512_fmadd_ps(_mm512_set1_ps(p), _mm512_loadu_ps(vr + d), _mm512_loadu_ps(o + d)));
    } else {
      for (int64_t d = 0; d < Dv; ++d) o[d] += p * vr[d];
    }
  });
}

// The rows' slots, block tables, context lengths and rotary tables, converted and checked once per step
// (a stack of layers shares them).
struct Paged {
  at::Tensor slots, tables, ctx, cos, sin;  // holders
  const int64_t *sl = nullptr, *tb = nullptr, *cx = nullptr;
  const float *cp = nullptr, *sp = nullptr;
  int64_t T = 0, nb = 0, block_size = 0, D = 0;
};

Paged prep_paged(const at::Tensor& slots_in, const at::Tensor& tables_in, const at::Tensor& ctx_in, const at::Tensor& cos_in,
                 const at::Tensor& sin_in, int64_t block_size, int64_t T, int64_t D) {
  Paged m;
  m.cos = as_f32(cos_in), m.sin = as_f32(sin_in);
  m.slots = slots_in.to(at::kLong).contiguous(), m.tables = tables_in.to(at::kLong).contiguous();
  m.ctx = ctx_in.to(at::kLong).contiguous();
  TORCH_CHECK(m.cos.dim() == 2 && m.cos.size(0) == T && m.cos.size(1) == D && m.sin.sizes() == m.cos.sizes(), "cos/sin: [T, D]");
  TORCH_CHECK(m.slots.numel() == T && m.ctx.numel() == T && m.tables.dim() == 2 && m.tables.size(0) == T,
              "one slot, table and length per row");
  TORCH_CHECK(block_size >= 1, "block size must be positive");
  m.sl = m.slots.data_ptr<int64_t>(), m.tb = m.tables.data_ptr<int64_t>(), m.cx = m.ctx.data_ptr<int64_t>();
  m.cp = m.cos.data_ptr<float>(), m.sp = m.sin.data_ptr<float>();
  m.T = T, m.nb = m.tables.size(1), m.block_size = block_size, m.D = D;
  return m;
}

// Every slot and every block a row reads lies in a pool of S slots; checked before anything is written.
void check_paged(const Paged& m, int64_t S) {
  for (int64_t t = 0; t < m.T; ++t) {
    TORCH_CHECK(m.sl[t] >= 0 && m.sl[t] < S, "slot out of range");
    TORCH_CHECK(m.cx[t] >= 1 && m.cx[t] <= m.nb * m.block_size, "context longer than the row's block table");
    for (int64_t i = 0; i < m.cx[t]; i += m.block_size) {
      const int64_t blk = m.tb[t * m.nb + i / m.block_size];
      TORCH_CHECK(blk >= 0 && (blk + 1) * m.block_size <= S, "block id out of range");
    }
  }
}

void check_pools(const at::Tensor& kpool, const at::Tensor& vpool, int64_t Hk, int64_t D, int64_t Dv) {
  TORCH_CHECK(kpool.scalar_type() == at::kFloat && vpool.scalar_type() == at::kFloat && kpool.is_contiguous() &&
              vpool.is_contiguous() && kpool.dim() == 3 && vpool.dim() == 3, "KV pool: contiguous fp32 [Hk, slots, D]");
  TORCH_CHECK(kpool.size(0) == Hk && kpool.size(2) == D && vpool.size(0) == Hk && vpool.size(1) == kpool.size(1) &&
              vpool.size(2) == Dv, "KV pool shape does not match k/v");
}

// q [T, H, D] and k [T, Hk, D] (rotated here, in place), v [T, Hk, Dv] -> out [T, H * Dv]; writes k and v into
// each row's slot of the pools (already checked).
void attend(float* qp, float* kp, const float* vp, int64_t H, int64_t Hk, int64_t Dv, float* kc, float* vc, int64_t S,
            const Paged& m, float scale, float* op) {
  const int64_t T = m.T, D = m.D, half = D / 2, rep = H / Hk, nb = m.nb;
  for (int64_t t = 0; t < T; ++t) {
    const float *c = m.cp + t * D, *s = m.sp + t * D;
    for (int64_t h = 0; h < H + Hk; ++h) {
      float* x = h < H ? qp + (t * H + h) * D : kp + (t * Hk + (h - H)) * D;
      for (int64_t i = 0; i < half; ++i) {
        const float a = x[i], b = x[i + half];
        const float a1 = a * c[i], b1 = b * s[i], b2 = b * c[i + half], a2 = a * s[i + half];
        x[i] = a1 - b1;
        x[i + half] = b2 + a2;
      }
    }
    for (int64_t h = 0; h < Hk; ++h) {
      std::memcpy(kc + (h * S + m.sl[t]) * D, kp + (t * Hk + h) * D, D * sizeof(float));
      std::memcpy(vc + (h * S + m.sl[t]) * Dv, vp + (t * Hk + h) * Dv, Dv * sizeof(float));
    }
  }
  at::parallel_for(0, T * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> sc;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / H, h = i % H, n = m.cx[t];
      sc.resize(n);
      const float* qh = qp + (t * H + h) * D;
      float* o = op + t * H * Dv + h * Dv;
      const Ctx c{m.tb + t * nb, m.block_size, n, (h / rep) * S};
      switch (D == Dv ? D : 0) {  // head dims of 32, 64, 128: q and the output stay in registers
        case 32: attend_row<2>(c, qh, kc, vc, scale, sc.data(), o); break;
        case 64: attend_row<4>(c, qh, kc, vc, scale, sc.data(), o); break;
        case 128: attend_row<8>(c, qh, kc, vc, scale, sc.data(), o); break;
        default: attend_row_any(c, qh, kc, vc, D, Dv, scale, sc.data(), o); break;
      }
    }
  });
}

at::Tensor paged_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, at::Tensor kpool,
                           at::Tensor vpool, const at::Tensor& slots_in, const at::Tensor& tables_in,
                           const at::Tensor& ctx_in, const at::Tensor& cos_in, const at::Tensor& sin_in,
                           int64_t block_size, double scale_d) {
  // copies: q and k are rotated in these buffers, never in the caller's tensors
  at::Tensor q = q_in.to(at::kFloat, false, true).contiguous(), k = k_in.to(at::kFloat, false, true).contiguous();
  at::Tensor v = v_in.to(at::kFloat).contiguous();
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "q, k, v: [T, heads, D]");
  const int64_t T = q.size(0), H = q.size(1), D = q.size(2), Hk = k.size(1), Dv = v.size(2);
  TORCH_CHECK(D % 2 == 0 && Hk >= 1 && H % Hk == 0 && k.size(2) == D && k.size(0) == T && v.size(0) == T && v.size(1) == Hk,
              "head shapes do not match");
  check_pools(kpool, vpool, Hk, D, Dv);
  const Paged m = prep_paged(slots_in, tables_in, ctx_in, cos_in, sin_in, block_size, T, D);
  check_paged(m, kpool.size(1));
  at::Tensor out = at::empty({T, H * Dv}, q.options());
  attend(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), H, Hk, Dv, kpool.data_ptr<float>(),
         vpool.data_ptr<float>(), kpool.size(1), m, static_cast<float>(scale_d), out.data_ptr<float>());
  return out;
}

// --- one decoder layer for decode rows ---------------------------------------------------------------
inline void rms_norm_rows(const float* x, const float* w, float eps, float* y, int64_t B, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    double ss = 0;  // in double: the mean of H squares does not depend on the summation order at fp32 precision
    for (int64_t i = 0; i < H; ++i) ss += static_cast<double>(x[b * H + i]) * x[b * H + i];
    const float r = 1.0f / std::sqrt(static_cast<float>(ss / H) + eps);
    for (int64_t i = 0; i < H; ++i) y[b * H + i] = (x[b * H + i] * r) * w[i];
  }
}

// One Llama-family layer's weights for decode, checked and converted once (a model's stack keeps one per layer):
// RMSNorm weights in fp32, 7 projections (kind, tensor, scales, group size, bias) in the order q k v o gate up down.
struct DecLayer {
  std::vector<Lin> L;
  at::Tensor n1, n2;
  float eps1 = 0, eps2 = 0, scale = 0;
  int64_t head_dim = 0, H = 0;
};

std::shared_ptr<DecLayer> make_dec_layer(const at::Tensor& n1w, double eps1, const at::Tensor& n2w, double eps2,
                                         const std::vector<int64_t>& kinds, const std::vector<at::Tensor>& ws,
                                         const std::vector<at::Tensor>& szs, const std::vector<int64_t>& gss,
                                         const std::vector<c10::optional<at::Tensor>>& biases, double scale,
                                         int64_t head_dim) {
  TORCH_CHECK(kinds.size() == 7 && ws.size() == 7 && szs.size() == 7 && gss.size() == 7 && biases.size() == 7,
              "7 weights: q k v o gate up down");
  auto d = std::make_shared<DecLayer>();
  d->L.reserve(7);
  for (int i = 0; i < 7; ++i) d->L.push_back(make_lin(kinds[i], ws[i], szs[i], gss[i], biases[i]));
  const std::vector<Lin>& L = d->L;
  const int64_t H = L[3].N, I = L[4].N;
  TORCH_CHECK(L[0].K == H && L[1].K == H && L[2].K == H && L[4].K == H && L[5].K == H && L[5].N == I &&
              L[6].N == H && L[6].K == I, "projection shapes do not fit a Llama layer");
  TORCH_CHECK(head_dim >= 2 && head_dim % 2 == 0 && L[0].N % head_dim == 0 && L[1].N % head_dim == 0 &&
              L[2].N == L[1].N && L[3].K == L[0].N, "head_dim does not divide q/k/v, or v and o do not fit");
  const int64_t Hq = L[0].N / head_dim, Hk = L[1].N / head_dim;
  TORCH_CHECK(Hk >= 1 && Hq % Hk == 0, "query heads must be a multiple of KV heads");
  d->n1 = as_f32(n1w), d->n2 = as_f32(n2w);
  TORCH_CHECK(d->n1.numel() == H && d->n2.numel() == H, "norm weights must have hidden size entries");
  d->eps1 = static_cast<float>(eps1), d->eps2 = static_cast<float>(eps2), d->scale = static_cast<float>(scale);
  d->head_dim = head_dim, d->H = H;
  return d;
}

// Work buffers for B rows, allocated once per step and reused by every layer.
struct Step {
  std::vector<float> x, q, k, v, o, g, u, t;
  ActBuf buf;
  Step(const DecLayer& d, int64_t B)
      : x(B * d.H), q(B * d.L[0].N), k(B * d.L[1].N), v(B * d.L[2].N), o(B * d.L[0].N), g(B * d.L[4].N),
        u(B * d.L[4].N), t(B * d.H) {}
};

// h [B, H] fp32, updated in place: RMSNorm, q/k/v in one parallel region, attention, o, residual, RMSNorm,
// gate/up in one region, SiLU(gate) * up, down, residual.
void layer_step(const DecLayer& d, float* hp, int64_t B, Step& w, float* kc, float* vc, int64_t S, const Paged& m) {
  const std::vector<Lin>& L = d.L;
  const int64_t H = d.H, nq = L[0].N, nk = L[1].N, nv = L[2].N, I = L[4].N, hd = d.head_dim;
  float *xp = w.x.data(), *tp = w.t.data(), *gp = w.g.data(), *up = w.u.data();
  rms_norm_rows(hp, d.n1.data_ptr<float>(), d.eps1, xp, B, H);
  w.buf.from_f32(xp, B, H);
  gemm_multi({Seg{&L[0], w.q.data(), nq}, Seg{&L[1], w.k.data(), nk}, Seg{&L[2], w.v.data(), nv}}, w.buf.act, B);
  attend(w.q.data(), w.k.data(), w.v.data(), nq / hd, nk / hd, nv / (nk / hd), kc, vc, S, m, d.scale, w.o.data());
  w.buf.from_f32(w.o.data(), B, nq);
  gemm_multi({Seg{&L[3], tp, H}}, w.buf.act, B);
  for (int64_t i = 0; i < B * H; ++i) hp[i] += tp[i];
  rms_norm_rows(hp, d.n2.data_ptr<float>(), d.eps2, xp, B, H);
  w.buf.from_f32(xp, B, H);
  gemm_multi({Seg{&L[4], gp, I}, Seg{&L[5], up, I}}, w.buf.act, B);
  for (int64_t i = 0; i < B * I; ++i) gp[i] = (gp[i] / (1.0f + std::exp(-gp[i]))) * up[i];
  w.buf.from_f32(gp, B, I);
  gemm_multi({Seg{&L[6], tp, H}}, w.buf.act, B);
  for (int64_t i = 0; i < B * H; ++i) hp[i] += tp[i];
}

// h [B, H] -> h after every layer of `layers` (one new token per row), layer i reading and writing pools i:
// one call per decode step, so Python and argument conversion are paid once, not once per layer.
at::Tensor decode_stack(const at::Tensor& h_in, const std::vector<std::shared_ptr<DecLayer>>& layers,
                        const std::vector<at::Tensor>& kpools, const std::vector<at::Tensor>& vpools,
                        const at::Tensor& slots, const at::Tensor& tables, const at::Tensor& ctx, const at::Tensor& cos,
                        const at::Tensor& sin, int64_t block_size) {
  TORCH_CHECK(!layers.empty() && kpools.size() == layers.size() && vpools.size() == layers.size(),
              "one K pool and one V pool per layer");
  at::Tensor h = h_in.to(at::kFloat, false, true).contiguous();
  TORCH_CHECK(h.dim() == 2, "h must be [B, hidden]");
  const int64_t B = h.size(0);
  for (size_t i = 0; i < layers.size(); ++i) TORCH_CHECK(layers[i], "layer ", i, " is None");
  const DecLayer& d0 = *layers[0];
  for (size_t i = 0; i < layers.size(); ++i) {
    const DecLayer& d = *layers[i];
    TORCH_CHECK(d.H == h.size(1), "h must be [B, ", d.H, "]");
    TORCH_CHECK(d.head_dim == d0.head_dim && d.L[0].N == d0.L[0].N && d.L[1].N == d0.L[1].N && d.L[2].N == d0.L[2].N &&
                d.L[4].N == d0.L[4].N, "every layer of a stack must have the same shapes");
    const int64_t Hk = d.L[1].N / d.head_dim;
    check_pools(kpools[i], vpools[i], Hk, d.head_dim, d.L[2].N / Hk);
    TORCH_CHECK(kpools[i].size(1) == kpools[0].size(1), "every layer's pool must have the same slots");
  }
  const Paged m = prep_paged(slots, tables, ctx, cos, sin, block_size, B, d0.head_dim);
  const int64_t S = kpools[0].size(1);
  check_paged(m, S);
  Step w(d0, B);
  float* hp = h.data_ptr<float>();
  for (size_t i = 0; i < layers.size(); ++i)
    layer_step(*layers[i], hp, B, w, kpools[i].data_ptr<float>(), vpools[i].data_ptr<float>(), S, m);
  return h;
}

// One layer, weights passed per call (the stack's step for a single layer).
at::Tensor decode_layer(const at::Tensor& h_in, const at::Tensor& n1w, double eps1, const at::Tensor& n2w, double eps2,
                        const std::vector<int64_t>& kinds, const std::vector<at::Tensor>& ws,
                        const std::vector<at::Tensor>& szs, const std::vector<int64_t>& gss,
                        const std::vector<c10::optional<at::Tensor>>& biases, at::Tensor kpool, at::Tensor vpool,
                        const at::Tensor& slots, const at::Tensor& tables, const at::Tensor& ctx,
                        const at::Tensor& cos, const at::Tensor& sin, int64_t block_size, double scale,
                        int64_t head_dim) {
  return decode_stack(h_in, {make_dec_layer(n1w, eps1, n2w, eps2, kinds, ws, szs, gss, biases, scale, head_dim)}, {kpool},
                      {vpool}, slots, tables, ctx, cos, sin, block_size);
}

// A plain streaming read of t's bytes over torch's thread team, returning their sum as 64-bit words
// (wrapping) so the reads cannot be optimised away. It is the machine's memory ceiling that batch-1 decode
// (a stream of weights) is measured against in benchmarks/bench_under_load.py: what one core reads against
// what all read bounds what decode can keep when a competitor takes a core.
int64_t stream_read(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "stream_read: t must be a contiguous CPU tensor");
  const int64_t bytes = t.numel() * t.element_size();
  TORCH_CHECK(bytes % 8 == 0, "stream_read: t must hold a whole number of 8-byte words, got ", bytes, " bytes");
  const char* p = static_cast<const char*>(t.data_ptr());
  const int64_t lines = bytes / 256;  // 4 x 64 bytes per step; the tail is read word by word below
  std::atomic<uint64_t> total{0};
  at::parallel_for(0, lines, 1024, [&](int64_t b0, int64_t b1) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = b0; i < b1; ++i) {
      const char* q = p + i * 256;
      a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(q));
      a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(q + 64));
      a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(q + 128));
      a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(q + 192));
    }
    const __m512i s = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
    total.fetch_add(static_cast<uint64_t>(_mm512_reduce_add_epi64(s)), std::memory_order_relaxed);
  });
  uint64_t sum = total.load();
  for (int64_t o = lines * 256; o < bytes; o += 8) {
    uint64_t w;
    std::memcpy(&w, p + o, 8);
    sum += w;
  }
  return static_cast<int64_t>(sum);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "y = x @ W^T (+ bias) in fp32 for int4 (kind 0), bf16 (1), fp32 (2) or int8-row (3) weights",
        py::arg("x"), py::arg("kind"), py::arg("w"), py::arg("sz"), py::arg("group_size"), py::arg("bias") = py::none(), py::call_guard<py::gil_scoped_release>());
  m.def("linear_multi", &linear_multi, "several `linear`s on the same x in one parallel region",
        py::call_guard<py::gil_scoped_release>());
  m.def("decode_layer", &decode_layer, "one Llama-family layer for one new token per row (see the source)",
        py::call_guard<py::gil_scoped_release>());
  py::class_<DecLayer, std::shared_ptr<DecLayer>>(m, "DecLayer", "one layer's decode weights, checked once");
  m.def("make_dec_layer", &make_dec_layer, "a DecLayer from the same weight arguments decode_layer takes, plus scale and head_dim");
  m.def("decode_stack", &decode_stack, "every layer of a stack for one new token per row, in one call",
        py::call_guard<py::gil_scoped_release>());
  m.def("paged_attention", &paged_attention, "rope, KV write and attention over a paged pool for one new token per row",
        py::call_guard<py::gil_scoped_release>());
  m.def("stream_read", &stream_read, "read every byte of t once (the memory-bandwidth probe); returns their 64-bit word sum",
        py::call_guard<py::gil_scoped_release>());
}
