// tokenred's compiled CPU selective scan (backend "cpp"): the sequential recurrence, one channel
// at a time, its N states in registers. The chunked torch scan is bound by memory traffic (every
// vectorised step reads and writes [L, b, d, N] tensors); here the working set of one channel is
// L*N values, which stays in L1/L2, so the scan runs at arithmetic speed.
//
// Core only: y_t = <C_t, h_t>,  h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t  (dt already softplus-ed
// and biased; the D skip and the z gate are elementwise and stay in PyTorch).
//   u, dt : [b, d, L]      A : [d, N]      Bt, Ct : [b, G, L, N]  (time-major per group)
// The backward recomputes each channel's states into a per-thread buffer (no [b, d, L, N] tensor
// is ever stored) and runs the adjoint recurrence backwards in time. forward_time_major is the
// inference path for time-major inputs (VMamba's layout), vectorised over channels.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

// exp and softplus for the time-major kernels' steps (block_step). float32: written out so that
// the compiler vectorises them inline (the math library's vector expf and log1pf were most of a
// step's time: 1.6 of 1.8 ns per element in a microbenchmark). exp: 2^k e^r, k = round(x / ln 2),
// |r| <= ln2 / 2, a degree-7 Taylor polynomial for e^r (relative error <= 8e-8, as expf); the
// argument is clamped to [-87, 88], so a decay smaller than e^-87 (1.6e-38) reads e^-87, not a
// denormal or 0. softplus: max(x, 0) + log1p(e^-|x|), log1p(z) = 2 atanh(z / (2 + z)) by its
// series to s^15 (relative error <= 3e-7 above x = -80, below which it is under 2e-35; torch's
// threshold 20 is within its rounding). float64 (the tests' reference precision) keeps the math
// library.
__attribute__((always_inline)) inline float exp_fast(float x) {
  x = std::fmin(std::fmax(x, -87.0f), 88.0f);
  const float k = std::nearbyint(x * 1.44269504088896341f);
  float r = std::fma(k, -0.693145751953125f, x);     // ln 2 in two parts: r exact to ~1 ulp
  r = std::fma(k, -1.428606765330187e-06f, r);
  float p = 1.0f / 5040;
  p = std::fma(p, r, 1.0f / 720);
  p = std::fma(p, r, 1.0f / 120);
  p = std::fma(p, r, 1.0f / 24);
  p = std::fma(p, r, 1.0f / 6);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;   // 2^k
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline double exp_fast(double x) { return std::exp(x); }

__attribute__((always_inline)) inline float softplus(float x) {
  const float z = exp_fast(-std::fabs(x));            // (0, 1]
  const float s = z / (2.0f + z);                     // (0, 1/3]
  const float s2 = s * s;
  float p = 1.0f / 15;
  p = std::fma(p, s2, 1.0f / 13);
  p = std::fma(p, s2, 1.0f / 11);
  p = std::fma(p, s2, 1.0f / 9);
  p = std::fma(p, s2, 1.0f / 7);
  p = std::fma(p, s2, 1.0f / 5);
  p = std::fma(p, s2, 1.0f / 3);
  p = std::fma(p, s2, 1.0f);
  return std::fmax(x, 0.0f) + 2.0f * s * p;
}

inline double softplus(double x) {
  return x > 20.0 ? x : std::log1p(std::exp(x));     // torch's softplus (beta 1, threshold 20)
}

// silu(x) = x sigmoid(x), for the z gate of the time-major kernel (exp_fast's clamp keeps the
// float32 form finite: x below -87 gives x / (1 + e^87), within float32 rounding of x e^x)
template <typename T>
__attribute__((always_inline)) inline T silu(T x) {
  return x / (T(1) + exp_fast(-x));
}

// decay[t * N + n] = exp(dt_t A_n) for one channel: one contiguous loop the compiler vectorises
// with the math library's vector exp. Used by the backward and by the forward at other N or in
// float64; the float32 forward at N = 16 computes its decays inline in the step instead (at
// N = 1 that would be one scalar exp per step: slower than this loop, vectorised over time).
template <typename T>
inline void channel_decay(const T* dt, const T* A, T* decay, int64_t L, int64_t N) {
  for (int64_t t = 0; t < L; ++t)
    for (int64_t n = 0; n < N; ++n) decay[t * N + n] = dt[t] * A[n];
  const int64_t total = L * N;
  for (int64_t k = 0; k < total; ++k) decay[k] = std::exp(decay[k]);
}

template <typename T, int NS>
void scan_forward(const T* u, const T* dt, const T* A, const T* Bt, const T* Ct, T* y,
                  int64_t b, int64_t d, int64_t L, int64_t N, int64_t G) {
  const int64_t per_group = d / G;
  const int64_t n_states = NS > 0 ? NS : N;
  constexpr bool inline_exp = NS >= 8 && std::is_same<T, float>::value;   // one vector of states
  at::parallel_for(0, b * d, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> h_dyn(NS > 0 ? 0 : n_states), decay(inline_exp ? 0 : L * n_states);
    T h_fixed[NS > 0 ? NS : 1];   // known N: the states live in registers
    T* __restrict h = NS > 0 ? h_fixed : h_dyn.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bi = i / d, ch = i % d, g = ch / per_group;
      const T* ui = u + i * L;
      const T* di = dt + i * L;
      const T* Bi = Bt + (bi * G + g) * L * n_states;
      const T* Ci = Ct + (bi * G + g) * L * n_states;
      T* __restrict yi = y + i * L;
      const T* Ai = A + ch * n_states;
      for (int64_t n = 0; n < n_states; ++n) h[n] = T(0);
      if (inline_exp) {
        // float32, N = 16 known: each step's N decays inline, one vector op across the states
        // (2x faster than the decay buffer in a one-thread microbenchmark at N = 16, L = 197)
        for (int64_t t = 0; t < L; ++t) {
          const T x = di[t] * ui[t], step = di[t];
          const T* bt = Bi + t * n_states;
          const T* ct = Ci + t * n_states;
          T acc = T(0);
          for (int64_t n = 0; n < n_states; ++n) {
            h[n] = exp_fast(step * Ai[n]) * h[n] + x * bt[n];
            acc += h[n] * ct[n];
          }
          yi[t] = acc;
        }
        continue;
      }
      channel_decay(di, Ai, decay.data(), L, n_states);
      for (int64_t t = 0; t < L; ++t) {
        const T x = di[t] * ui[t];
        const T* at = decay.data() + t * n_states;
        const T* bt = Bi + t * n_states;
        const T* ct = Ci + t * n_states;
        T acc = T(0);
        for (int64_t n = 0; n < n_states; ++n) {
          h[n] = at[n] * h[n] + x * bt[n];
          acc += h[n] * ct[n];
        }
        yi[t] = acc;
      }
    }
  });
}

// Work items: (batch, group, channel split). Each item accumulates its own partial dB/dC
// ([b, G, S, L, N]) and dA ([b, d, N]); the caller sums the partials, so no two threads ever
// write the same value.
template <typename T, int NS>
void scan_backward(const T* u, const T* dt, const T* A, const T* Bt, const T* Ct, const T* gy,
                   T* du, T* ddt, T* dA_part, T* dB_part, T* dC_part,
                   int64_t b, int64_t d, int64_t L, int64_t N, int64_t G, int64_t S) {
  const int64_t per_group = d / G;
  const int64_t per_split = (per_group + S - 1) / S;
  const int64_t n_states = NS > 0 ? NS : N;
  at::parallel_for(0, b * G * S, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> H(L * n_states), zeros(n_states, T(0)), decay(L * n_states);
    std::vector<T> lam_dyn(NS > 0 ? 0 : n_states), dA_dyn(NS > 0 ? 0 : n_states);
    T lam_fixed[NS > 0 ? NS : 1], dA_fixed[NS > 0 ? NS : 1];  // known N: in registers
    T* __restrict lam = NS > 0 ? lam_fixed : lam_dyn.data();
    T* __restrict dA_acc = NS > 0 ? dA_fixed : dA_dyn.data();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bi = item / (G * S), g = (item / S) % G, s = item % S;
      const T* Bi = Bt + (bi * G + g) * L * n_states;
      const T* Ci = Ct + (bi * G + g) * L * n_states;
      T* dBi = dB_part + item * L * n_states;
      T* dCi = dC_part + item * L * n_states;
      const int64_t c_end = std::min(per_group, (s + 1) * per_split);
      for (int64_t c = s * per_split; c < c_end; ++c) {
        const int64_t ch = g * per_group + c, i = bi * d + ch;
        const T* ui = u + i * L;
        const T* di = dt + i * L;
        const T* gi = gy + i * L;
        const T* Ai = A + ch * n_states;
        T* dAi = dA_part + i * n_states;
        // states h_t, recomputed
        channel_decay(di, Ai, decay.data(), L, n_states);
        for (int64_t n = 0; n < n_states; ++n) H[n] = di[0] * ui[0] * Bi[n];
        for (int64_t t = 1; t < L; ++t) {
          const T x = di[t] * ui[t];
          const T* bt = Bi + t * n_states;
          const T* at = decay.data() + t * n_states;
          T* ht = H.data() + t * n_states;
          const T* hp = ht - n_states;
          for (int64_t n = 0; n < n_states; ++n) ht[n] = at[n] * hp[n] + x * bt[n];
        }
        // adjoint: lam_t = gy_t C_t + a_{t+1} lam_{t+1}
        for (int64_t n = 0; n < n_states; ++n) lam[n] = dA_acc[n] = T(0);
        for (int64_t t = L - 1; t >= 0; --t) {
          const T dtt = di[t], ut = ui[t], g_t = gi[t];
          const T* bt = Bi + t * n_states;
          const T* ct = Ci + t * n_states;
          const T* ht = H.data() + t * n_states;
          const T* __restrict hp = t > 0 ? H.data() + (t - 1) * n_states : zeros.data();
          const T* at = decay.data() + t * n_states;
          T lam_b = T(0), g_decay = T(0);
          T* __restrict dbt = dBi + t * n_states;
          T* __restrict dct = dCi + t * n_states;
          const T drive = dtt * ut;
          for (int64_t n = 0; n < n_states; ++n) {
            const T l = lam[n] + g_t * ct[n];
            dct[n] += g_t * ht[n];
            dbt[n] += l * drive;
            lam_b += l * bt[n];
            // d/d(dt_t A_n) of a_t h_{t-1}: lam_t h_{t-1} a_t
            const T gx = l * at[n] * hp[n];
            g_decay += gx * Ai[n];
            dA_acc[n] += gx * dtt;
            lam[n] = l * at[n];
          }
          du[i * L + t] = lam_b * dtt;
          ddt[i * L + t] = g_decay + lam_b * ut;
        }
        for (int64_t n = 0; n < n_states; ++n) dAi[n] = dA_acc[n];
      }
    }
  });
}

// Inference on time-major inputs, as VMamba lays them out (u, raw dt: [L, b, d]; Bt, Ct:
// [L, b, G, N]; y: [L, b, d]): each work item is a block of channels of one group, its states
// h[n][j] in a small buffer, and every step is a loop over the block's channels, which the
// compiler vectorises (at d_state 1 the channel-major loop above has one state per channel and
// nothing to vectorise). The bias, softplus and D skip are fused: nothing is copied or written
// besides y.
constexpr int64_t kBlock = 64;

// A block of w channels from channel ch0 starts: its decay rates A[ch][n] laid out as At[n][j],
// its states zero.
template <typename T>
inline void start_block(const T* A, int64_t ch0, int64_t w, int64_t n_states, T* At, T* h) {
  for (int64_t n = 0; n < n_states; ++n)
    for (int64_t j = 0; j < w; ++j) {
      At[n * kBlock + j] = A[(ch0 + j) * n_states + n];
      h[n * kBlock + j] = T(0);
    }
}

// One time step of a block of w channels, vectorised across them: dt = softplus(raw + bias)
// (or raw + bias), every state h[n][j] advanced, and acc[j] = <C, h> + D u.
template <typename T, int NS>
inline void block_step(const T* __restrict ut, const T* __restrict rt, const T* __restrict bias,
                       const T* __restrict Dskip, const T* bt, const T* ct, T* __restrict h,
                       const T* __restrict At, T* __restrict dtv, T* __restrict accv, int64_t w,
                       int64_t N, bool use_softplus) {
  const int64_t n_states = NS > 0 ? NS : N;
  // (the softplus choice outside the loop: inside, the compiler stopped vectorising it — 3x slower)
  if (use_softplus) {
    for (int64_t j = 0; j < w; ++j) dtv[j] = softplus(rt[j] + bias[j]);
  } else {
    for (int64_t j = 0; j < w; ++j) dtv[j] = rt[j] + bias[j];
  }
  for (int64_t j = 0; j < w; ++j) accv[j] = Dskip[j] * ut[j];
  for (int64_t n = 0; n < n_states; ++n) {
    const T bn = bt[n], cn = ct[n];
    T* __restrict hn = h + n * kBlock;
    const T* __restrict an = At + n * kBlock;
    for (int64_t j = 0; j < w; ++j) {
      hn[j] = exp_fast(dtv[j] * an[j]) * hn[j] + dtv[j] * ut[j] * bn;
      accv[j] += hn[j] * cn;
    }
  }
}

// u, dt_raw, y: [L, b, d] with channels contiguous, read and written through their time and
// batch strides (st: {u's, dt_raw's, y's} x {time, batch}): time-major [L, b, d] storage (VMamba)
// or batch-outer [b, L, d] storage (Vim at batch > 1). z: the gate (y * silu(z)), read through
// its strides (zs: time, batch, channel), or null.
template <typename T, int NS>
void scan_forward_time_major(const T* u, const T* dt_raw, const T* bias, const T* A,
                             const T* Bt, const T* Ct, const T* Dskip, const T* z,
                             const int64_t* zs, T* y, const int64_t* st, int64_t L, int64_t b,
                             int64_t d, int64_t N, int64_t G, bool use_softplus) {
  const int64_t per_group = d / G;
  const int64_t blocks = (per_group + kBlock - 1) / kBlock;
  const int64_t n_states = NS > 0 ? NS : N;
  at::parallel_for(0, b * G * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> h(n_states * kBlock), At(n_states * kBlock), dt(kBlock), acc(kBlock);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bi = item / (G * blocks), g = (item / blocks) % G, blk = item % blocks;
      const int64_t c0 = g * per_group + blk * kBlock;
      const int64_t w = std::min(kBlock, (g + 1) * per_group - c0);
      start_block(A, c0, w, n_states, At.data(), h.data());
      const T* bias_c = bias + c0;
      const T* D_c = Dskip + c0;
      for (int64_t t = 0; t < L; ++t) {
        const T* __restrict ut = u + t * st[0] + bi * st[1] + c0;
        const T* __restrict rt = dt_raw + t * st[2] + bi * st[3] + c0;
        const T* bt = Bt + ((t * b + bi) * G + g) * n_states;
        const T* ct = Ct + ((t * b + bi) * G + g) * n_states;
        T* __restrict yt = y + t * st[4] + bi * st[5] + c0;
        block_step<T, NS>(ut, rt, bias_c, D_c, bt, ct, h.data(), At.data(), dt.data(),
                          acc.data(), w, N, use_softplus);
        const T* __restrict accv = acc.data();
        if (z == nullptr) {
          for (int64_t j = 0; j < w; ++j) yt[j] = accv[j];
        } else {
          const T* __restrict zt = z + t * zs[0] + bi * zs[1] + c0 * zs[2];
          if (zs[2] == 1) {
            for (int64_t j = 0; j < w; ++j) yt[j] = accv[j] * silu(zt[j]);
          } else {   // (a channel-major gate: each of its cache lines serves the next steps)
            for (int64_t j = 0; j < w; ++j) yt[j] = accv[j] * silu(zt[j * zs[2]]);
          }
        }
      }
    }
  });
}

template <typename T>
void dispatch_forward_time_major(const T* u, const T* dt_raw, const T* bias, const T* A,
                                 const T* Bt, const T* Ct, const T* Dskip, const T* z,
                                 const int64_t* zs, T* y, const int64_t* st, int64_t L,
                                 int64_t b, int64_t d, int64_t N, int64_t G, bool use_softplus) {
  if (N == 1)
    return scan_forward_time_major<T, 1>(u, dt_raw, bias, A, Bt, Ct, Dskip, z, zs, y, st, L, b,
                                         d, N, G, use_softplus);
  if (N == 16)
    return scan_forward_time_major<T, 16>(u, dt_raw, bias, A, Bt, Ct, Dskip, z, zs, y, st, L, b,
                                          d, N, G, use_softplus);
  scan_forward_time_major<T, 0>(u, dt_raw, bias, A, Bt, Ct, Dskip, z, zs, y, st, L, b, d, N, G,
                                use_softplus);
}

// VMamba's SS2D for inference in one pass: the four-direction cross-scan, the selective scan and
// the cross-merge over L channel-last tokens (a whole map, or the tokens a grid reducer kept),
// without building the four direction sequences. Direction k visits the tokens in its own order
// (order[k]: for a map row-major, column-major, and both reversed; for a token subset the same
// orders of their positions), one table for the batch or one per sample; the per-token
// projections do not depend on that order, so x_proj runs once on the tokens and is read here at
// each direction's token.
//   x: [b, L, d] (u of every direction)   order: [K, Bo, L], each row a permutation of 0..L-1,
//   Bo = 1 (shared) or b   dt_raw: [K, b, L, d] or null (see below)
//   proj: [b, L, K, P] rows holding B at offset b_off and C at c_off (N values each)
//   A: [K*d, N]   bias, Dskip: [K*d]   out: [b, L, d] = the sum of the four directions' y
// Work items are (batch, block of channels); each runs its block through all four directions,
// so no two threads write the same output.
constexpr int64_t kAhead = 8;

template <typename T>
inline void prefetch_row(const T* row, int64_t w) {
  for (int64_t j = 0; j < w; j += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(row + j);
}

// channel blocks of kBlock; when there are too few work items to keep every thread busy (a
// small batch), narrower equal blocks (multiples of 16 channels) whose count the threads divide,
// so that the threads finish together
inline int64_t block_width(int64_t b, int64_t d) {
  const int64_t threads = std::max(1, at::get_num_threads());
  int64_t blocks = (d + kBlock - 1) / kBlock;
  if (b * blocks >= 4 * threads) return kBlock;
  while ((b * blocks) % threads != 0 && 16 * (blocks + 1) <= d) ++blocks;
  const int64_t w = (d + blocks - 1) / blocks;
  return std::min(kBlock, (w + 15) / 16 * 16);
}

// Δ's raw value for one block, from the low-rank inputs low[0..R) and dt_proj weights stored
// rank-major (wr[r * d + j]): R axpys over the block's channels, each one vectorised.
template <typename T>
inline void low_rank_dt(const T* __restrict low, const T* __restrict wr, T* __restrict raw,
                        int64_t R, int64_t d, int64_t w) {
  for (int64_t j = 0; j < w; ++j) raw[j] = low[0] * wr[j];
  for (int64_t r = 1; r < R; ++r) {
    const T lr = low[r];
    const T* __restrict wrow = wr + r * d;
    for (int64_t j = 0; j < w; ++j) raw[j] += lr * wrow[j];
  }
}

// dt_raw is either Δ's raw values [K, b, L, d], or null: then Δ is computed here from the
// low-rank values at offset 0 of each proj row and dt_w [K, R, d] (rank-major), which saves
// writing and re-reading a [K, b, L, d] tensor where the rank is small.
template <typename T, int NS>
void cross_scan_2d(const T* x, const int64_t* order, int64_t Bo, const T* dt_raw, const T* dt_w,
                   int64_t R, const T* proj, const T* A, const T* bias, const T* Dskip, T* out,
                   int64_t b, int64_t L, int64_t d, int64_t N, int64_t K, int64_t P,
                   int64_t b_off, int64_t c_off) {
  const int64_t bw = block_width(b, d);
  const int64_t blocks = (d + bw - 1) / bw;
  const int64_t n_states = NS > 0 ? NS : N;
  at::parallel_for(0, b * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> h(n_states * kBlock), At(n_states * kBlock), dt(kBlock), acc(kBlock),
        raw(kBlock);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bi = item / blocks, c0 = (item % blocks) * bw;
      const int64_t w = std::min(bw, d - c0);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t ch0 = k * d + c0;   // this block's channels in direction k
        start_block(A, ch0, w, n_states, At.data(), h.data());
        const T* bias_c = bias + ch0;
        const T* D_c = Dskip + ch0;
        const int64_t* positions = order + (k * Bo + (Bo == 1 ? 0 : bi)) * L;
        for (int64_t t = 0; t < L; ++t) {
          const int64_t p = positions[t];
          if (t + kAhead < L) {   // the rows a few steps on: column-major steps jump W*d apart
            const int64_t q = positions[t + kAhead];
            prefetch_row(x + (bi * L + q) * d + c0, w);
            if (dt_raw) prefetch_row(dt_raw + ((k * b + bi) * L + q) * d + c0, w);
            prefetch_row(out + (bi * L + q) * d + c0, w);
          }
          const T* __restrict ut = x + (bi * L + p) * d + c0;
          const T* row = proj + ((bi * L + p) * K + k) * P;
          const T* rt;
          if (dt_raw) {
            rt = dt_raw + ((k * b + bi) * L + p) * d + c0;
          } else {
            low_rank_dt(row, dt_w + k * R * d + c0, raw.data(), R, d, w);
            rt = raw.data();
          }
          const T* bt = row + b_off;
          const T* ct = row + c_off;
          T* __restrict yt = out + (bi * L + p) * d + c0;
          block_step<T, NS>(ut, rt, bias_c, D_c, bt, ct, h.data(), At.data(), dt.data(),
                            acc.data(), w, N, true);
          const T* __restrict accv = acc.data();
          if (k == 0) {
            for (int64_t j = 0; j < w; ++j) yt[j] = accv[j];
          } else {
            for (int64_t j = 0; j < w; ++j) yt[j] += accv[j];
          }
        }
      }
    }
  });
}

template <typename T>
void dispatch_forward(const T* u, const T* dt, const T* A, const T* Bt, const T* Ct, T* y,
                      int64_t b, int64_t d, int64_t L, int64_t N, int64_t G) {
  if (N == 1) return scan_forward<T, 1>(u, dt, A, Bt, Ct, y, b, d, L, N, G);
  if (N == 16) return scan_forward<T, 16>(u, dt, A, Bt, Ct, y, b, d, L, N, G);
  scan_forward<T, 0>(u, dt, A, Bt, Ct, y, b, d, L, N, G);
}

template <typename T>
void dispatch_backward(const T* u, const T* dt, const T* A, const T* Bt, const T* Ct,
                       const T* gy, T* du, T* ddt, T* dA, T* dB, T* dC,
                       int64_t b, int64_t d, int64_t L, int64_t N, int64_t G, int64_t S) {
  if (N == 1) return scan_backward<T, 1>(u, dt, A, Bt, Ct, gy, du, ddt, dA, dB, dC, b, d, L, N, G, S);
  if (N == 16) return scan_backward<T, 16>(u, dt, A, Bt, Ct, gy, du, ddt, dA, dB, dC, b, d, L, N, G, S);
  scan_backward<T, 0>(u, dt, A, Bt, Ct, gy, du, ddt, dA, dB, dC, b, d, L, N, G, S);
}

// Every input on the CPU, contiguous and of `like`'s dtype (with `empty_any_dtype`, an empty
// tensor, standing for an input not given, may have any dtype).
void check_cpu_contiguous(std::initializer_list<const torch::Tensor*> tensors,
                          const torch::Tensor& like, bool empty_any_dtype = false) {
  for (const auto* t : tensors) {
    TORCH_CHECK(t->device().is_cpu(), "scan_cpu: CPU tensors only");
    TORCH_CHECK(t->is_contiguous(), "scan_cpu: contiguous tensors only");
    TORCH_CHECK((empty_any_dtype && t->numel() == 0) || t->scalar_type() == like.scalar_type(),
                "scan_cpu: one dtype for all inputs");
  }
}

void check_inputs(const torch::Tensor& u, const torch::Tensor& dt, const torch::Tensor& A,
                  const torch::Tensor& Bt, const torch::Tensor& Ct) {
  check_cpu_contiguous({&u, &dt, &A, &Bt, &Ct}, u);
  TORCH_CHECK(u.dim() == 3 && dt.sizes() == u.sizes(), "scan_cpu: u, dt must be [b, d, L]");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1), "scan_cpu: A must be [d, N]");
  TORCH_CHECK(Bt.dim() == 4 && Bt.sizes() == Ct.sizes() && Bt.size(0) == u.size(0) &&
                  Bt.size(2) == u.size(2) && Bt.size(3) == A.size(1) &&
                  u.size(1) % Bt.size(1) == 0,
              "scan_cpu: B, C must be [b, G, L, N]");
}

}  // namespace

torch::Tensor forward(torch::Tensor u, torch::Tensor dt, torch::Tensor A, torch::Tensor Bt,
                      torch::Tensor Ct) {
  check_inputs(u, dt, A, Bt, Ct);
  auto y = torch::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_cpu_forward", [&] {
    dispatch_forward<scalar_t>(u.data_ptr<scalar_t>(), dt.data_ptr<scalar_t>(),
                               A.data_ptr<scalar_t>(), Bt.data_ptr<scalar_t>(),
                               Ct.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), u.size(0),
                               u.size(1), u.size(2), A.size(1), Bt.size(1));
  });
  return y;
}

std::vector<torch::Tensor> backward(torch::Tensor u, torch::Tensor dt, torch::Tensor A,
                                    torch::Tensor Bt, torch::Tensor Ct, torch::Tensor gy,
                                    int64_t splits) {
  check_inputs(u, dt, A, Bt, Ct);
  gy = gy.contiguous();
  const int64_t b = u.size(0), d = u.size(1), L = u.size(2), N = A.size(1), G = Bt.size(1);
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(splits, d / G));
  auto du = torch::empty_like(u);
  auto ddt = torch::empty_like(u);
  auto dA = torch::zeros({b, d, N}, u.options());
  auto dB = torch::zeros({b, G, S, L, N}, u.options());
  auto dC = torch::zeros({b, G, S, L, N}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_cpu_backward", [&] {
    dispatch_backward<scalar_t>(u.data_ptr<scalar_t>(), dt.data_ptr<scalar_t>(),
                                A.data_ptr<scalar_t>(), Bt.data_ptr<scalar_t>(),
                                Ct.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(),
                                du.data_ptr<scalar_t>(), ddt.data_ptr<scalar_t>(),
                                dA.data_ptr<scalar_t>(), dB.data_ptr<scalar_t>(),
                                dC.data_ptr<scalar_t>(), b, d, L, N, G, S);
  });
  return {du, ddt, dA.sum(0), dB.sum(2), dC.sum(2)};
}

// u, dt_raw, y: [L, b, d] views whose channels are contiguous (any time and batch strides; y is
// written in place); z: empty (no gate) or [L, b, d], any strides
void forward_time_major(torch::Tensor u, torch::Tensor dt_raw, torch::Tensor bias,
                        torch::Tensor A, torch::Tensor Bt, torch::Tensor Ct, torch::Tensor Dskip,
                        bool use_softplus, torch::Tensor z, torch::Tensor y) {
  check_cpu_contiguous({&bias, &A, &Bt, &Ct, &Dskip}, u);
  TORCH_CHECK(u.dim() == 3 && dt_raw.sizes() == u.sizes() && y.sizes() == u.sizes(),
              "scan_cpu: u, dt and y must be [L, b, d]");
  for (const auto* t : {&u, &dt_raw, &y})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == u.scalar_type() &&
                    (t->size(2) == 1 || t->stride(2) == 1),
                "scan_cpu: u, dt and y must be CPU tensors of one dtype, channels contiguous");
  const int64_t L = u.size(0), b = u.size(1), d = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == d, "scan_cpu: A must be [d, N]");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == d && Dskip.dim() == 1 && Dskip.size(0) == d,
              "scan_cpu: bias and D must be [d]");
  TORCH_CHECK(Bt.dim() == 4 && Bt.sizes() == Ct.sizes() && Bt.size(0) == L && Bt.size(1) == b &&
                  Bt.size(3) == A.size(1) && d % Bt.size(2) == 0,
              "scan_cpu: B, C must be [L, b, G, N]");
  const bool gated = z.numel() > 0;   // (an empty z: no gate)
  TORCH_CHECK(!gated || (z.device().is_cpu() && z.scalar_type() == u.scalar_type() &&
                         z.sizes() == u.sizes()),
              "scan_cpu: z must be empty or [L, b, d] of u's dtype, any strides");
  const int64_t z_strides[3] = {gated ? z.stride(0) : 0, gated ? z.stride(1) : 0,
                                gated ? z.stride(2) : 0};
  const int64_t strides[6] = {u.stride(0), u.stride(1), dt_raw.stride(0), dt_raw.stride(1),
                              y.stride(0), y.stride(1)};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_cpu_forward_time_major", [&] {
    dispatch_forward_time_major<scalar_t>(
        u.data_ptr<scalar_t>(), dt_raw.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
        A.data_ptr<scalar_t>(), Bt.data_ptr<scalar_t>(), Ct.data_ptr<scalar_t>(),
        Dskip.data_ptr<scalar_t>(), gated ? z.data_ptr<scalar_t>() : nullptr, z_strides,
        y.data_ptr<scalar_t>(), strides, L, b, d, A.size(1), Bt.size(2), use_softplus);
  });
}

// dt_raw: Δ's raw values [K, b, L, d], or an empty tensor: then Δ = dt_w applied to the R
// low-rank values at the start of each proj row (dt_w: [K, R, d])
torch::Tensor cross_scan_2d_forward(torch::Tensor x, torch::Tensor order, torch::Tensor dt_raw,
                                    torch::Tensor dt_w, torch::Tensor proj, torch::Tensor A,
                                    torch::Tensor bias, torch::Tensor Dskip, int64_t b_off,
                                    int64_t c_off) {
  const bool raw_given = dt_raw.numel() > 0;
  check_cpu_contiguous({&x, &dt_raw, &dt_w, &proj, &A, &bias, &Dskip}, x, true);
  TORCH_CHECK(x.dim() == 3, "cross_scan_2d: x must be [b, L, d]");
  const int64_t b = x.size(0), L = x.size(1), d = x.size(2);
  TORCH_CHECK(proj.dim() == 4 && proj.size(0) == b && proj.size(1) == L,
              "cross_scan_2d: proj must be [b, L, K, P]");
  const int64_t K = proj.size(2), N = A.size(1);
  TORCH_CHECK(order.device().is_cpu() && order.scalar_type() == torch::kLong &&
                  order.is_contiguous() && order.dim() == 3 && order.size(0) == K &&
                  (order.size(1) == 1 || order.size(1) == b) && order.size(2) == L,
              "cross_scan_2d: order must be contiguous int64 [K, 1 or b, L]");
  const int64_t Bo = order.size(1);
  {   // every direction visits every token once: the first writes each output row, the rest add
    const int64_t* o = order.data_ptr<int64_t>();
    std::vector<char> seen(L);
    for (int64_t row = 0; row < K * Bo; ++row) {
      std::fill(seen.begin(), seen.end(), 0);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t p = o[row * L + t];
        TORCH_CHECK(p >= 0 && p < L && !seen[p], "cross_scan_2d: order rows must be "
                    "permutations of 0..L-1");
        seen[p] = 1;
      }
    }
  }
  int64_t R = 0;
  if (raw_given) {
    TORCH_CHECK(dt_raw.dim() == 4 && dt_raw.size(0) == K && dt_raw.size(1) == b &&
                    dt_raw.size(2) == L && dt_raw.size(3) == d,
                "cross_scan_2d: dt must be [K, b, L, d]");
  } else {
    TORCH_CHECK(dt_w.dim() == 3 && dt_w.size(0) == K && dt_w.size(2) == d && dt_w.size(1) >= 1 &&
                    dt_w.size(1) <= proj.size(3),
                "cross_scan_2d: without dt, dt_w must be [K, R, d] with R <= P");
    R = dt_w.size(1);
  }
  TORCH_CHECK(A.dim() == 2 && A.size(0) == K * d, "cross_scan_2d: A must be [K*d, N]");
  TORCH_CHECK(bias.numel() == K * d && Dskip.numel() == K * d,
              "cross_scan_2d: bias and D must be [K*d]");
  TORCH_CHECK(b_off >= 0 && c_off >= 0 && b_off + N <= proj.size(3) && c_off + N <= proj.size(3),
              "cross_scan_2d: proj must hold B and C");
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scan_cpu_cross_scan_2d", [&] {
    auto run = [&](auto tag) {
      constexpr int NS = decltype(tag)::value;
      cross_scan_2d<scalar_t, NS>(x.data_ptr<scalar_t>(), order.data_ptr<int64_t>(), Bo,
                                  raw_given ? dt_raw.data_ptr<scalar_t>() : nullptr,
                                  raw_given ? nullptr : dt_w.data_ptr<scalar_t>(), R,
                                  proj.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                                  bias.data_ptr<scalar_t>(), Dskip.data_ptr<scalar_t>(),
                                  out.data_ptr<scalar_t>(), b, L, d, N, K, proj.size(3),
                                  b_off, c_off);
    };
    if (N == 1) run(std::integral_constant<int, 1>{});
    else if (N == 16) run(std::integral_constant<int, 16>{});
    else run(std::integral_constant<int, 0>{});
  });
  return out;
}

// How many threads at::parallel_for hands `items` work items to in this build (the tests check
// that the kernels' loops run on torch's intra-op threads, not on the caller's alone).
int64_t parallel_threads(int64_t items) {
  std::vector<int64_t> owner(items, -1);
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) owner[i] = at::get_thread_num();
  });
  std::vector<int64_t> seen;
  for (int64_t t : owner)
    if (std::find(seen.begin(), seen.end(), t) == seen.end()) seen.push_back(t);
  return static_cast<int64_t>(seen.size());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("parallel_threads", &parallel_threads,
        "the number of threads at::parallel_for splits `items` work items over");
  m.def("cross_scan_2d", &cross_scan_2d_forward,
        "VMamba SS2D inference on a map or a token subset: cross-scan, selective scan (softplus, "
        "D skip) and cross-merge in the given direction orders");
  m.def("forward_time_major", &forward_time_major,
        "selective scan, inference on time-major inputs (bias, softplus, D skip and z gate fused)");
  m.def("forward", &forward, "selective scan core, forward");
  m.def("backward", &backward, "selective scan core, backward (du, ddt, dA, dB, dC)");
}
