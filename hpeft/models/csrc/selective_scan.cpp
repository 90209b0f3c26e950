// Mamba's selective scan on the CPU, forward and backward, fused over time. Written by hand because no library
// ships a CPU selective scan (mamba-ssm's kernels are CUDA only). hpeft/models/scan_compiled.py builds it with
// torch.utils.cpp_extension and checks it against the reference (tests/models/test_scan.py, float64 gradcheck).
//
// Layouts (contiguous, compute dtype float or double; the Python side converts):
//   u, delta, z, grad: [B, D, L]    Bt, Ct: [B, L, N] (time-major, so one step's N values are adjacent)
//   A: [D, N]    Dv, bias: [D] (zero-size when absent)    z: zero-size when absent
// The recurrence (h_{-1} = 0):  dt = softplus?(delta + bias),  h_t = exp(dt A) h_{t-1} + dt B_t u_t,
//   y_t = C_t . h_t + D u_t,  out_t = y_t * silu(z_t).
//
// Why the vectors run across channels: one task scans G adjacent channels d of one batch element (G = a SIMD
// register's width in elements), lane g holding channel d0 + g. B_t and C_t are shared by every channel, so each
// state n is one broadcast scalar times a vector, and the sums over states (y, and the backward's sums for du and
// ddelta) add whole vectors: no horizontal sum at any step. (Vectors across states, the other choice, need three
// horizontal sums per step, whose serial adds cost more than the state updates.) The one sum across lanes left,
// dB and dC over channels, is taken once per block of steps (lane_sum). A task's inputs are copied once into
// [L][G] buffers (a transpose of its G rows); time then runs in blocks of K steps whose decays exp(dt A) are
// computed in one long vector loop before the recurrence over them. A tail group with fewer than G channels pads its lanes with
// zeros (u = 0 and grad = 0 there, so those lanes add nothing to dB, dC).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// glibc's libmvec has vector exp and log1p (about 4 ulp in float, as accurate as torch's own vectorised exp); its
// math.h declares them as SIMD only under -ffast-math, which would also drop NaN/inf semantics. Declaring
// just these so (with -fno-math-errno) lets GCC vectorise the loops that call them without that.
extern "C" {
float expf(float) __attribute__((__simd__("notinbranch")));
double exp(double) __attribute__((__simd__("notinbranch")));
float log1pf(float) __attribute__((__simd__("notinbranch")));
double log1p(double) __attribute__((__simd__("notinbranch")));
}

namespace {

inline float vexp(float x) { return expf(x); }
inline double vexp(double x) { return exp(x); }
inline float vlog1p(float x) { return log1pf(x); }
inline double vlog1p(double x) { return log1p(x); }

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif
template <typename T>
constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(T));  // G: channels per task

// A register of G lanes (GCC/Clang vector extensions: portable, lowered to this CPU's SIMD by -march=native), so
// that per-step sums stay in registers instead of arrays the compiler may keep in memory.
template <typename T>
struct VecOf { typedef T type __attribute__((vector_size(kVectorBytes))); };
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
inline Vec<T> load(const T* p) { Vec<T> v; std::memcpy(&v, p, sizeof v); return v; }
template <typename T>
inline void store(T* p, const Vec<T>& v) { std::memcpy(p, &v, sizeof v); }

constexpr int64_t kBlockBytes = 16384;  // a block's decays [K][N][G] stay within L1
constexpr int64_t kMaxBlock = 64;
// The backward keeps every decay of a task ([L][N][G]) when that fits this budget per thread; beyond it (large
// d_state times long sequences) it computes each block's decays again in the reverse pass: twice the exps.
constexpr int64_t kKeepDecayBytes = int64_t(32) << 20;

struct Dims { int64_t B, D, L, N; };

Dims dims_of(const at::Tensor& u, const at::Tensor& A) {
  TORCH_CHECK(u.dim() == 3 && A.dim() == 2, "selective scan: u must be [B, D, L] and A [D, N]");
  return {u.size(0), u.size(1), u.size(2), A.size(1)};
}

template <typename T>
int64_t block_steps(int64_t N) {
  return std::clamp<int64_t>(kBlockBytes / (std::max<int64_t>(N, 1) * kLanes<T> * int64_t(sizeof(T))), 1,
                            kMaxBlock);  // d_state 0: y = D u
}

// One task: G channels [d0, d0 + valid) of batch element b, with its per-lane constants.
template <typename T>
struct Task {
  static constexpr int G = kLanes<T>;
  int64_t b, d0;
  int valid;
  const T *Bb, *Cb;  // this batch element's [L, N] B and C
  T bias[G], Dd[G];
  std::vector<T> At;  // [N][G]: A of each lane's channel, state-major

  Task(const Dims& s, int64_t task, const T* A, const T* Dv, const T* bias_in, const T* Bt, const T* Ct)
      : At(s.N * G) {
    const int64_t groups = (s.D + G - 1) / G;
    b = task / groups;
    Bb = Bt + b * s.L * s.N;
    Cb = Ct + b * s.L * s.N;
    d0 = (task % groups) * G;
    valid = static_cast<int>(std::min<int64_t>(G, s.D - d0));
    for (int g = 0; g < G; ++g) {
      const bool on = g < valid;
      bias[g] = on && bias_in ? bias_in[d0 + g] : T(0);
      Dd[g] = on && Dv ? Dv[d0 + g] : T(0);
      for (int64_t n = 0; n < s.N; ++n) At[n * G + g] = on ? A[(d0 + g) * s.N + n] : T(0);
    }
  }

  // This task's rows of a [B, D, L] tensor into dst[t][g] (lanes past `valid`: zero): whole rows, read front to
  // back, which the hardware prefetcher follows (short pieces of G rows at a time miss the cache at every block).
  void gather(const Dims& s, const T* src, T* dst) const {
    for (int g = 0; g < G; ++g) {
      if (g >= valid) {
        for (int64_t t = 0; t < s.L; ++t) dst[t * G + g] = T(0);
        continue;
      }
      const T* row = src + ((b * s.D) + d0 + g) * s.L;
      for (int64_t t = 0; t < s.L; ++t) dst[t * G + g] = row[t];
    }
  }

  void scatter(const Dims& s, const T* src, T* dst) const {
    for (int g = 0; g < valid; ++g) {
      T* row = dst + ((b * s.D) + d0 + g) * s.L;
      for (int64_t t = 0; t < s.L; ++t) row[t] = src[t * G + g];
    }
  }
};

// A block's per-step scalars, [K][G] each, vector loops (exp, log1p): dt = softplus?(delta + bias) (torch's
// threshold 20: linear above it); sig_pre = sigmoid(delta + bias), softplus's derivative; gate = silu(z) and
// sig_z = sigmoid(z) when z is given. Null outputs are skipped.
template <typename T>
void block_scalars(int64_t steps, const T* bias, bool softplus_on, const T* delta, const T* z, T* dt, T* sig_pre,
                   T* gate, T* sig_z) {
  constexpr int G = kLanes<T>;
  for (int64_t i = 0; i < steps; ++i) {
#pragma omp simd
    for (int g = 0; g < G; ++g) {
      const int64_t k = i * G + g;
      const T pre = delta[k] + bias[g];
      const T e = vexp(pre > T(20) ? T(0) : pre);
      dt[k] = softplus_on ? (pre > T(20) ? pre : vlog1p(e)) : pre;
      if (sig_pre) sig_pre[k] = pre > T(20) ? T(1) : e / (T(1) + e);
    }
  }
  if (!z) return;
#pragma omp simd
  for (int64_t k = 0; k < steps * G; ++k) {
    const T sg = T(1) / (T(1) + vexp(-z[k]));
    gate[k] = z[k] * sg;
    if (sig_z) sig_z[k] = sg;
  }
}

// decay[i][n][g] = exp(dt[i][g] A[n][g]) for `steps` steps: one vector exp per (i, n).
template <typename T>
void block_decays(int64_t steps, int64_t N, const T* dt, const T* At, T* decay) {
  constexpr int G = kLanes<T>;
  for (int64_t i = 0; i < steps; ++i) {
    for (int64_t n = 0; n < N; ++n) {
      T* a = decay + (i * N + n) * G;
      const T* An = At + n * G;
#pragma omp simd
      for (int g = 0; g < G; ++g) a[g] = vexp(dt[i * G + g] * An[g]);
    }
  }
}

// The states over a block: h <- a_i h + dt_i u_i B_{t0+i} for each step i. `states`, when given, receives the state
// after every step ([steps][N][G]); with_y: y receives C_t . h_t + D u_t ([steps][G]) (Ct, Dd, y unused otherwise).
// y sums over states in two registers, even and odd n: one chain of N dependent adds would wait on each add.
template <typename T, bool with_y>
void block_states(int64_t steps, int64_t N, const T* decay, const T* dt, const T* u, const T* Bt, const T* Ct,
                  const T* Dd, T* h, T* states, T* y) {
  constexpr int G = kLanes<T>;
  for (int64_t i = 0; i < steps; ++i) {
    const T* Bs = Bt + i * N;
    const T* a = decay + i * N * G;
    const Vec<T> ui = load(u + i * G), dtu = load(dt + i * G) * ui;
    Vec<T> even = {}, odd = {};
    auto state = [&](int64_t n, Vec<T>& acc) {
      const Vec<T> hn = load(a + n * G) * load(h + n * G) + dtu * Bs[n];
      store(h + n * G, hn);
      if constexpr (with_y) acc += Ct[i * N + n] * hn;
    };
    int64_t n = 0;
    for (; n + 1 < N; n += 2) {
      state(n, even);
      state(n + 1, odd);
    }
    if (n < N) state(n, even);
    if (states) std::copy(h, h + N * G, states + i * N * G);
    if constexpr (with_y) store(y + i * G, even + odd + load(Dd) * ui);
  }
}

// dst[r] += the sum over lanes of P[r][g], for `rows` rows: the per-lane parts of dB, dC summed over channels.
// Eight lanes (float on AVX2) take eight rows at a time through a tree of shuffles and vector adds (a transpose
// that adds as it goes: 24 vector operations for 64 numbers); other widths sum each row in turn.
template <typename T>
void lane_sum(int64_t rows, const T* P, T* dst) {
  constexpr int G = kLanes<T>;
  int64_t r = 0;
#if defined(__clang__) || __GNUC__ >= 12  // __builtin_shufflevector: GCC 12 on; older ones take the loop below
  if constexpr (G == 8) {
    using V = Vec<T>;
    auto pairs = [](V a, V b) {  // [a0+a1, b0+b1, a2+a3, b2+b3, ...]
      return __builtin_shufflevector(a, b, 0, 8, 2, 10, 4, 12, 6, 14) +
             __builtin_shufflevector(a, b, 1, 9, 3, 11, 5, 13, 7, 15);
    };
    auto quads = [](V a, V b) {  // two pairs' sums of four rows -> [row0, row1, row2, row3] over each half
      return __builtin_shufflevector(a, b, 0, 1, 8, 9, 4, 5, 12, 13) +
             __builtin_shufflevector(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
    };
    for (; r + 8 <= rows; r += 8) {
      const T* p = P + r * G;
      const V q0 = quads(pairs(load(p), load(p + 8)), pairs(load(p + 16), load(p + 24)));
      const V q1 = quads(pairs(load(p + 32), load(p + 40)), pairs(load(p + 48), load(p + 56)));
      const V sums = __builtin_shufflevector(q0, q1, 0, 1, 2, 3, 8, 9, 10, 11) +
                     __builtin_shufflevector(q0, q1, 4, 5, 6, 7, 12, 13, 14, 15);
      store(dst + r, load(dst + r) + sums);
    }
  }
#endif
  for (; r < rows; ++r) {
    T sum = P[r * G];
    for (int g = 1; g < G; ++g) sum += P[r * G + g];
    dst[r] += sum;
  }
}

template <typename T>
void forward_kernel(const Dims& s, const T* u, const T* delta, const T* A, const T* Bt, const T* Ct, const T* Dv,
                    const T* z, const T* bias, bool softplus_on, T* out) {
  constexpr int G = kLanes<T>;
  const int64_t K = block_steps<T>(s.N), tasks = s.B * ((s.D + G - 1) / G), LG = s.L * G;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> h(s.N * G), decay(K * s.N * G), ub(LG), db(LG), zb(z ? LG : 0), dt(LG), gate(z ? LG : 0), y(LG);
    for (int64_t task = begin; task < end; ++task) {
      const Task<T> tk(s, task, A, Dv, bias, Bt, Ct);
      const T *Bb = tk.Bb, *Cb = tk.Cb;
      tk.gather(s, u, ub.data());
      tk.gather(s, delta, db.data());
      if (z) tk.gather(s, z, zb.data());
      block_scalars<T>(s.L, tk.bias, softplus_on, db.data(), z ? zb.data() : nullptr, dt.data(), nullptr,
                       gate.data(), nullptr);
      std::fill(h.begin(), h.end(), T(0));
      for (int64_t t0 = 0; t0 < s.L; t0 += K) {
        const int64_t steps = std::min(K, s.L - t0);
        block_decays<T>(steps, s.N, dt.data() + t0 * G, tk.At.data(), decay.data());
        block_states<T, true>(steps, s.N, decay.data(), dt.data() + t0 * G, ub.data() + t0 * G, Bb + t0 * s.N,
                              Cb + t0 * s.N, tk.Dd, h.data(), nullptr, y.data() + t0 * G);
      }
      if (z) {
#pragma omp simd
        for (int64_t k = 0; k < LG; ++k) y[k] *= gate[k];
      }
      tk.scatter(s, y.data(), out);
    }
  });
}

// The backward runs the states forward again (keeping the decays, and the state before each block), then the
// reverse scan lam_t = a_{t+1} lam_{t+1} + C_t g_t block by block from the end, each block's states recomputed
// from its saved start (the derivation is in scan.py's _scan_backward_op). dB and dC sum over channels: each
// thread adds into its own [B, L, N] slab (summed afterwards), so no two threads write the same memory. dA, dD and
// dbias are kept per (b, d) and summed over b by the caller.
template <typename T>
void backward_kernel(const Dims& s, const T* grad, const T* u, const T* delta, const T* A, const T* Bt, const T* Ct,
                     const T* Dv, const T* z, const T* bias, bool softplus_on, T* du, T* ddelta, T* dA,
                     T* dB_slabs, T* dC_slabs, T* dD_out, T* dz, T* dbias) {
  constexpr int G = kLanes<T>;
  const int64_t K = block_steps<T>(s.N), tasks = s.B * ((s.D + G - 1) / G), NG = s.N * G, LG = s.L * G;
  const int64_t blocks = (s.L + K - 1) / K, slab = s.B * s.L * s.N;
  const bool keep = s.L * NG * int64_t(sizeof(T)) <= kKeepDecayBytes;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    T* dB = dB_slabs + at::get_thread_num() * slab;
    T* dC = dC_slabs + at::get_thread_num() * slab;
    // kept decays: all L steps; otherwise one block's and the step after it
    std::vector<T> decays(keep ? s.L * NG : (K + 1) * NG), starts(blocks * NG), states((K + 1) * NG), h(NG),
        lam(NG), dAl(NG), zeros(NG), pB(K * NG), pC(K * NG), y(K * G);
    const int64_t zl = z ? LG : 0;
    std::vector<T> ub(LG), db(LG), gb(LG), dt(LG), sig_pre(LG), zb(zl), gate(zl), sig_z(zl), dub(LG), ddb(LG),
        dzb(zl);
    for (int64_t task = begin; task < end; ++task) {
      const Task<T> tk(s, task, A, Dv, bias, Bt, Ct);
      const T *Bb = tk.Bb, *Cb = tk.Cb;
      tk.gather(s, u, ub.data());
      tk.gather(s, delta, db.data());
      tk.gather(s, grad, gb.data());
      if (z) tk.gather(s, z, zb.data());
      block_scalars<T>(s.L, tk.bias, softplus_on, db.data(), z ? zb.data() : nullptr, dt.data(), sig_pre.data(),
                       gate.data(), sig_z.data());
      // Forward again: the state before each block, and the decays when kept.
      std::fill(h.begin(), h.end(), T(0));
      for (int64_t k = 0; k < blocks; ++k) {
        const int64_t t0 = k * K, steps = std::min(K, s.L - t0);
        std::copy(h.begin(), h.end(), starts.begin() + k * NG);
        T* dec = keep ? decays.data() + t0 * NG : decays.data();
        block_decays<T>(steps, s.N, dt.data() + t0 * G, tk.At.data(), dec);
        block_states<T, false>(steps, s.N, dec, dt.data() + t0 * G, ub.data() + t0 * G, Bb + t0 * s.N, nullptr,
                               nullptr, h.data(), nullptr, nullptr);
      }
      std::fill(lam.begin(), lam.end(), T(0));
      std::fill(dAl.begin(), dAl.end(), T(0));
      Vec<T> dD = {}, dbias_v = {};
      for (int64_t k = blocks - 1; k >= 0; --k) {
        const int64_t t0 = k * K, steps = std::min(K, s.L - t0);
        const T *ubk = ub.data() + t0 * G, *dtk = dt.data() + t0 * G;
        // This block's decays, then the step after it (a_{t+1} of the block's last step; none after the last).
        const T* dec = decays.data() + (keep ? t0 * NG : 0);
        const T* next = zeros.data();
        if (!keep) block_decays<T>(std::min(steps + 1, s.L - t0), s.N, dtk, tk.At.data(), decays.data());
        if (t0 + steps < s.L) next = dec + steps * NG;
        // states[0] = h before the block, states[i + 1] = h_{t0 + i}
        std::copy(starts.begin() + k * NG, starts.begin() + (k + 1) * NG, states.begin());
        std::copy(states.begin(), states.begin() + NG, h.begin());
        if (z)
          block_states<T, true>(steps, s.N, dec, dtk, ubk, Bb + t0 * s.N, Cb + t0 * s.N, tk.Dd, h.data(),
                                states.data() + NG, y.data());
        else
          block_states<T, false>(steps, s.N, dec, dtk, ubk, Bb + t0 * s.N, nullptr, nullptr, h.data(),
                                 states.data() + NG, nullptr);
        for (int64_t i = steps - 1; i >= 0; --i) {
          const int64_t t = t0 + i, q0 = t * G;
          const T* Bs = Bb + t * s.N;
          const T* Cs = Cb + t * s.N;
          const T* at = dec + i * NG;
          const T* an = i + 1 < steps ? at + NG : next;
          const T* ht = states.data() + (i + 1) * NG;
          const T* hp = states.data() + i * NG;
          Vec<T> gv = load(gb.data() + q0);
          const Vec<T> ui = load(ub.data() + q0), dti = load(dt.data() + q0), dtu = dti * ui;
          if (z) {  // out = y silu(z): dz = g y sigma(z) (1 + z (1 - sigma(z))), and y sees g silu(z)
            const Vec<T> sg = load(sig_z.data() + q0);
            store(dzb.data() + q0, gv * load(y.data() + i * G) * sg * (T(1) + load(zb.data() + q0) * (T(1) - sg)));
            gv *= load(gate.data() + q0);
          }
          // sums over states in two registers each (even, odd n), as in block_states
          Vec<T> ddtu0 = {}, ddtu1 = {}, ddt0 = {}, ddt1 = {};
          auto state = [&](int64_t n, Vec<T>& ddtu_n, Vec<T>& ddt_n) {
            const int64_t o = n * G;
            const Vec<T> l = load(an + o) * load(lam.data() + o) + Cs[n] * gv;
            store(lam.data() + o, l);
            store(pC.data() + i * NG + o, gv * load(ht + o));
            store(pB.data() + i * NG + o, l * dtu);
            ddtu_n += l * Bs[n];
            const Vec<T> q = l * load(hp + o) * load(at + o);
            ddt_n += q * load(tk.At.data() + o);
            store(dAl.data() + o, load(dAl.data() + o) + q * dti);
          };
          int64_t n = 0;
          for (; n + 1 < s.N; n += 2) {
            state(n, ddtu0, ddt0);
            state(n + 1, ddtu1, ddt1);
          }
          if (n < s.N) state(n, ddtu0, ddt0);
          const Vec<T> sum_ddtu = ddtu0 + ddtu1;
          Vec<T> d = ddt0 + ddt1 + sum_ddtu * ui;
          store(dub.data() + q0, gv * load(tk.Dd) + sum_ddtu * dti);
          dD += gv * ui;
          if (softplus_on) d *= load(sig_pre.data() + q0);
          store(ddb.data() + q0, d);
          dbias_v += d;
        }
        lane_sum<T>(steps * s.N, pC.data(), dC + (tk.b * s.L + t0) * s.N);
        lane_sum<T>(steps * s.N, pB.data(), dB + (tk.b * s.L + t0) * s.N);
      }
      tk.scatter(s, dub.data(), du);
      tk.scatter(s, ddb.data(), ddelta);
      if (z) tk.scatter(s, dzb.data(), dz);
      for (int g = 0; g < tk.valid; ++g) {
        const int64_t bd = tk.b * s.D + tk.d0 + g;
        for (int64_t n = 0; n < s.N; ++n) dA[bd * s.N + n] = dAl[n * G + g];
        if (dD_out) dD_out[bd] = dD[g];
        if (dbias) dbias[bd] = dbias_v[g];
      }
    }
  });
}

at::Tensor scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bt,
                        const at::Tensor& Ct, const at::Tensor& Dv, const at::Tensor& z, const at::Tensor& bias,
                        bool softplus_on) {
  const Dims s = dims_of(u, A);
  auto out = at::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "hpeft_selective_scan_forward", [&] {
    auto p = [](const at::Tensor& x) { return x.numel() ? x.data_ptr<scalar_t>() : nullptr; };
    forward_kernel<scalar_t>(s, p(u), p(delta), p(A), p(Bt), p(Ct), p(Dv), p(z), p(bias), softplus_on,
                             out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<at::Tensor> scan_backward(const at::Tensor& grad, const at::Tensor& u, const at::Tensor& delta,
                                      const at::Tensor& A, const at::Tensor& Bt, const at::Tensor& Ct,
                                      const at::Tensor& Dv, const at::Tensor& z, const at::Tensor& bias,
                                      bool softplus_on) {
  const Dims s = dims_of(u, A);
  const int64_t threads = at::get_num_threads();
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dz = z.numel() ? at::empty_like(u) : at::empty({0}, u.options());
  auto dA = at::zeros({s.B, s.D, s.N}, u.options());
  auto dB = at::zeros({threads, s.B, s.L, s.N}, u.options()), dC = at::zeros({threads, s.B, s.L, s.N}, u.options());
  auto dD = Dv.numel() ? at::empty({s.B, s.D}, u.options()) : at::empty({0}, u.options());
  auto dbias = bias.numel() ? at::empty({s.B, s.D}, u.options()) : at::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "hpeft_selective_scan_backward", [&] {
    auto p = [](const at::Tensor& x) { return x.numel() ? x.data_ptr<scalar_t>() : nullptr; };
    backward_kernel<scalar_t>(s, p(grad), p(u), p(delta), p(A), p(Bt), p(Ct), p(Dv), p(z), p(bias), softplus_on,
                              p(du), p(ddelta), dA.data_ptr<scalar_t>(), dB.data_ptr<scalar_t>(),
                              dC.data_ptr<scalar_t>(), p(dD), p(dz), p(dbias));
  });
  return {du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), dD.numel() ? dD.sum(0) : dD, dz,
          dbias.numel() ? dbias.sum(0) : dbias};
}

}  // namespace

TORCH_LIBRARY(hpeft_cpu, m) {
  m.def("selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor Bt, Tensor Ct, Tensor D, Tensor z, "
        "Tensor bias, bool softplus) -> Tensor");
  m.def("selective_scan_bwd(Tensor grad, Tensor u, Tensor delta, Tensor A, Tensor Bt, Tensor Ct, Tensor D, "
        "Tensor z, Tensor bias, bool softplus) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hpeft_cpu, CPU, m) {
  m.impl("selective_scan_fwd", &scan_forward);
  m.impl("selective_scan_bwd", &scan_backward);
}
