// Mamba's selective scan on the CPU, forward and backward, fused over time: one pass per (batch, channel)
// with the d_state states in registers/L1, instead of the [L, B, D, N] tensors a PyTorch-level scan
// materialises. Written by hand because no library ships a CPU selective scan (mamba-ssm's kernels are
// CUDA only). hpeft/models/scan_compiled.py builds it with torch.utils.cpp_extension and checks it
// against the reference (tests/models/test_scan.py, float64 gradcheck).
//
// Layouts (contiguous, compute dtype float or double; the Python side converts):
//   u, delta, z, grad: [B, D, L]    Bt, Ct: [B, L, N] (time-major, so one step's N values are adjacent)
//   A: [D, N]    Dv, bias: [D] (zero-size when absent)    z: zero-size when absent
// The recurrence (h_{-1} = 0):  dt = softplus?(delta + bias),  h_t = exp(dt A) h_{t-1} + dt B_t u_t,
//   y_t = C_t . h_t + D u_t,  out_t = y_t * silu(z_t).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

// glibc's libmvec has vector exp and log1p (about 4 ulp in float, as accurate as torch's own vectorised exp); its
// math.h declares them as SIMD only under -ffast-math, which would also drop NaN/inf semantics. Declaring
// just these so (with -fno-math-errno) lets GCC vectorise the state loops without that.
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

struct Dims { int64_t B, D, L, N; };

constexpr int64_t kBlock = 64;  // time steps whose decays are computed together


Dims dims_of(const at::Tensor& u, const at::Tensor& A) {
  TORCH_CHECK(u.dim() == 3 && A.dim() == 2, "selective scan: u must be [B, D, L] and A [D, N]");
  return {u.size(0), u.size(1), u.size(2), A.size(1)};
}

// One row's per-step scalars, each a loop over time that vectorises (exp, log1p): done per step inside the
// scan they cost more than the d_state loop itself at d_state 16.
//   dt = softplus?(delta + bias) (torch's threshold 20: linear above it); sig_pre = sigmoid(delta + bias),
//   softplus's derivative; gate = silu(z) and sig_z = sigmoid(z) when z is given.
template <typename T>
void row_scalars(int64_t L, const T* delta, T bias_d, bool softplus_on, const T* z, T* dt, T* sig_pre, T* gate,
                 T* sig_z) {
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) {
    const T pre = delta[t] + bias_d;
    const T e = vexp(pre > T(20) ? T(0) : pre);
    dt[t] = softplus_on ? (pre > T(20) ? pre : vlog1p(e)) : pre;
    if (sig_pre) sig_pre[t] = pre > T(20) ? T(1) : e / (T(1) + e);
  }
  if (z) {
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) {
      const T sg = T(1) / (T(1) + vexp(-z[t]));
      gate[t] = z[t] * sg;
      if (sig_z) sig_z[t] = sg;
    }
  }
}

template <typename T>
void forward_kernel(const Dims& s, const T* u, const T* delta, const T* A, const T* Bt, const T* Ct, const T* Dv,
                    const T* z, const T* bias, bool softplus_on, T* out) {
  at::parallel_for(0, s.B * s.D, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> h(s.N), dts(s.L), gates(z ? s.L : 0), decay(kBlock * s.N);
    for (int64_t bd = begin; bd < end; ++bd) {
      const int64_t b = bd / s.D, d = bd % s.D, row = bd * s.L;
      const T* Ad = A + d * s.N;
      const T* Bb = Bt + b * s.L * s.N;
      const T* Cb = Ct + b * s.L * s.N;
      const T bias_d = bias ? bias[d] : T(0), D_d = Dv ? Dv[d] : T(0);
      row_scalars<T>(s.L, delta + row, bias_d, softplus_on, z ? z + row : nullptr, dts.data(), nullptr,
                     gates.data(), nullptr);
      std::fill(h.begin(), h.end(), T(0));
      for (int64_t t0 = 0; t0 < s.L; t0 += kBlock) {
        const int64_t steps = std::min(kBlock, s.L - t0);
        // The decays of a block of steps in one long vector loop (exp pipelines well there), then the
        // recurrence over them.
        for (int64_t i = 0; i < steps; ++i) {
          const T dt = dts[t0 + i];
          T* ai = decay.data() + i * s.N;
#pragma omp simd
          for (int64_t n = 0; n < s.N; ++n) ai[n] = vexp(dt * Ad[n]);
        }
        for (int64_t i = 0; i < steps; ++i) {
          const int64_t t = t0 + i;
          const T ut = u[row + t], dtu = dts[t] * ut;
          const T* Bs = Bb + t * s.N;
          const T* Cs = Cb + t * s.N;
          const T* ai = decay.data() + i * s.N;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t n = 0; n < s.N; ++n) {
            h[n] = ai[n] * h[n] + dtu * Bs[n];
            acc += Cs[n] * h[n];
          }
          const T y = acc + D_d * ut;
          out[row + t] = z ? y * gates[t] : y;
        }
      }
    }
  });
}

// The backward recomputes the states and decays of one (b, d) row forward into [L, N] buffers, then runs the reverse
// scan lam_t = a_{t+1} lam_{t+1} + C_t g_t over it (the derivation is in scan.py's _scan_backward_op).
// dB and dC sum over channels d: each thread adds into its own [B, L, N] slab (summed afterwards), so no
// two threads write the same memory. Rows of one channel for different batches may run on different
// threads: dA, dD and dbias are kept per (b, d) and summed over b by the caller.
template <typename T>
void backward_kernel(const Dims& s, const T* grad, const T* u, const T* delta, const T* A, const T* Bt, const T* Ct,
                     const T* Dv, const T* z, const T* bias, bool softplus_on, T* du, T* ddelta, T* dA,
                     T* dB_slabs, T* dC_slabs, T* dD, T* dz, T* dbias) {
  const int64_t slab = s.B * s.L * s.N;
  at::parallel_for(0, s.B * s.D, 1, [&](int64_t begin, int64_t end) {
    T* dB = dB_slabs + at::get_thread_num() * slab;
    T* dC = dC_slabs + at::get_thread_num() * slab;
    const int64_t zl = z ? s.L : 0;
    std::vector<T> hs(s.L * s.N), as(s.L * s.N), dts(s.L), sig_pre(s.L), gates(zl), sig_z(zl), lam(s.N), a_next(s.N), zeros(s.N);
    for (int64_t bd = begin; bd < end; ++bd) {
      const int64_t b = bd / s.D, d = bd % s.D, row = bd * s.L;
      const T* Ad = A + d * s.N;
      const T* Bb = Bt + b * s.L * s.N;
      const T* Cb = Ct + b * s.L * s.N;
      T* dBb = dB + b * s.L * s.N;
      T* dCb = dC + b * s.L * s.N;
      T* dAd = dA + bd * s.N;
      const T bias_d = bias ? bias[d] : T(0), D_d = Dv ? Dv[d] : T(0);
      row_scalars<T>(s.L, delta + row, bias_d, softplus_on, z ? z + row : nullptr, dts.data(), sig_pre.data(),
                     gates.data(), sig_z.data());
      // Forward again: the states h_t of this row.
      for (int64_t t = 0; t < s.L; ++t) {
        const T dt = dts[t], dtu = dt * u[row + t];
        const T* Bs = Bb + t * s.N;
        T* ht = hs.data() + t * s.N;
        const T* hp = t ? ht - s.N : zeros.data();
        T* at = as.data() + t * s.N;  // kept: the reverse scan needs every a_t again
#pragma omp simd
        for (int64_t n = 0; n < s.N; ++n) {
          at[n] = vexp(dt * Ad[n]);
          ht[n] = at[n] * hp[n] + dtu * Bs[n];
        }
      }
      std::fill(lam.begin(), lam.end(), T(0));
      std::fill(a_next.begin(), a_next.end(), T(0));
      T dD_d = 0, dbias_d = 0;
      for (int64_t t = s.L - 1; t >= 0; --t) {
        const T dt = dts[t], ut = u[row + t], dtu = dt * ut;
        const T* Bs = Bb + t * s.N;
        const T* Cs = Cb + t * s.N;
        const T* ht = hs.data() + t * s.N;
        const T* hp = t ? ht - s.N : zeros.data();  // h_{-1} = 0
        const T* as_t = as.data() + t * s.N;
        T g = grad[row + t];
        if (z) {  // out = y silu(z): dz = g y sigma(z) (1 + z (1 - sigma(z))), and y sees g silu(z)
          T y = 0;
#pragma omp simd reduction(+ : y)
          for (int64_t n = 0; n < s.N; ++n) y += Cs[n] * ht[n];
          y += D_d * ut;
          const T zt = z[row + t], sg = sig_z[t];
          dz[row + t] = g * y * sg * (T(1) + zt * (T(1) - sg));
          g *= gates[t];
        }
        T ddtu = 0, ddt = 0;
#pragma omp simd reduction(+ : ddtu, ddt)
        for (int64_t n = 0; n < s.N; ++n) {
          const T a = as_t[n];
          const T l = a_next[n] * lam[n] + Cs[n] * g;
          lam[n] = l;
          a_next[n] = a;
          dCb[t * s.N + n] += g * ht[n];
          dBb[t * s.N + n] += l * dtu;
          ddtu += l * Bs[n];
          const T q = l * hp[n] * a;
          ddt += q * Ad[n];
          dAd[n] += q * dt;
        }
        du[row + t] = g * D_d + ddtu * dt;
        dD_d += g * ut;
        ddt += ddtu * ut;
        if (softplus_on) ddt *= sig_pre[t];
        ddelta[row + t] = ddt;
        dbias_d += ddt;
      }
      if (dD) dD[bd] = dD_d;
      if (dbias) dbias[bd] = dbias_d;
    }
  });
}

at::Tensor opt(const at::Tensor& x) { return x.numel() ? x : at::Tensor(); }

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
