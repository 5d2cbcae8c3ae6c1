// ProxGen's Adam + ℓ1 step and ProxSGD's SGD + ℓ1 step as one memory pass per tensor
// (lightning_prox.optim._l1_kernels drives them; prototypes generated from its signature table KERNELS and
// force-included by lightning_prox.optim._native, so a definition that disagrees does not compile).
//
// Each element goes through the operations of the eager path in the same order and precision: torch's
// fused CPU Adam/SGD step (aten/src/ATen/native/cpu/FusedAdamKernel.cpp, FusedSGDKernel.cpp: scalars
// rounded to T; fused multiply-adds exactly where torch 2.14's x86 build of those kernels has them,
// written out as std::fma under LP_FMA) followed by the chunked soft thresholding of lightning_prox.optim._l1_kernels
// (Adam's metric) or softshrink (Euclidean). Contraction is off (ISO C++), so every other operation rounds
// as written and the result is the eager path's to the bit; the data is read and written once instead of
// twice. Elements are independent: the OpenMP split changes no bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per OpenMP work item

template <typename T> inline T fmadd(T a, T b, T c) {
#if LP_FMA
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// torch.nn.functional.softshrink as its vectorized CPU kernel rounds: |a| ≤ λ → +0, NaN stays NaN
template <typename T> inline T softshrink(T a, T lam) {
  return a > lam ? a - lam : (a < -lam ? a + lam : (a == a ? T(0) : a));
}

template <typename F> void for_chunks(int64_t n, int nthreads, F f) {
  const int nt = n < 4 * kChunk ? 1 : std::max(nthreads, 1);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t a = 0; a < n; a += kChunk) f(a, std::min(a + kChunk, n));
}

template <typename T> struct AdamScalars {
  T dec, coeff, b2, c2, eps, neg_step, bc2, cb, eb, fb, b;
};

// elements [lo, hi) of one tensor; a plain loop over restrict pointers, so that it vectorizes. Tail: the
// last numel % vec elements, which torch's kernel runs in scalar code, where its compiler fused the second
// moment the other way round (v·β₂ + (1 − β₂)g·g as fma(v, β₂, (1 − β₂)g·g)).
template <typename T, bool Floor, bool Tail, bool Small>
void adam_l1_range(int64_t lo, int64_t hi, T* __restrict p, const T* __restrict g, T* __restrict m,
                   T* __restrict v, const AdamScalars<T> k) {
  const T emax = T(1e19);
  for (int64_t j = lo; j < hi; ++j) {
    const T gj = g[j];
    const T mj = fmadd(k.coeff, gj - m[j], Small ? m[j] : gj);  // torch.lerp's two forms
    const T vj = Tail ? fmadd(v[j], k.b2, k.c2 * gj * gj) : fmadd(k.c2 * gj, gj, v[j] * k.b2);
    m[j] = mj;
    v[j] = vj;
    const T root = std::sqrt(vj);
    const T pj = p[j] * k.dec + k.neg_step * mj / (root / k.bc2 + k.eps);
    T e = std::min(std::max(root + k.eb, k.fb), emax);
    if (Floor) e = vj == T(0) ? k.b : e;
    p[j] = softshrink(pj * e, k.cb) / e;
  }
}

// scal per tensor: lr/bc1, √bc2 (torch's Adam), then the prox's c·b, eps·b, floor·b and b (b = the
// prox's √bc2); floor: D̄ = max(D, floor) and 1 where v = 0 (b·1 in the scaled form)
template <typename T>
void adam_l1(int64_t numel, T* p, const T* g, T* m, T* v, const double* scal, double decay, double w1,
             double beta2, double c2, double eps, int64_t floor, int64_t vec, int nthreads) {
  const T W = T(w1);
  const bool small = std::abs(W) < T(0.5);
  const AdamScalars<T> k{T(decay), small ? W : W - T(1), T(beta2), T(c2), T(eps), T(-scal[0]), T(scal[1]),
                         T(scal[2]), T(scal[3]), T(scal[4]), T(scal[5])};
  const int64_t bulk = numel - numel % std::max<int64_t>(vec, 1);
  auto run = [&](int64_t lo, int64_t hi, auto tail) {
    constexpr bool Tail = decltype(tail)::value;
    if (floor)
      small ? adam_l1_range<T, true, Tail, true>(lo, hi, p, g, m, v, k)
            : adam_l1_range<T, true, Tail, false>(lo, hi, p, g, m, v, k);
    else
      small ? adam_l1_range<T, false, Tail, true>(lo, hi, p, g, m, v, k)
            : adam_l1_range<T, false, Tail, false>(lo, hi, p, g, m, v, k);
  };
  for_chunks(bulk, nthreads, [&](int64_t lo, int64_t hi) { run(lo, hi, std::false_type{}); });
  run(bulk, numel, std::true_type{});
}

// Tail as in adam_l1_range: there torch's compiler fused the momentum update the other way round
// (buf·μ + d·(1 − τ) as fma(buf, μ, d·(1 − τ))).
template <typename T, bool Buf, bool Tail>
void sgd_l1_range(int64_t lo, int64_t hi, T* __restrict p, const T* __restrict g, T* __restrict buf, T w,
                  T mu, T d1, T neg_lr, T c, bool decay, bool nesterov, bool first) {
  for (int64_t j = lo; j < hi; ++j) {
    const T pj = p[j];
    T d = decay ? fmadd(pj, w, g[j]) : g[j];
    if (Buf) {
      const T bj = first ? d : (Tail ? fmadd(buf[j], mu, d * d1) : fmadd(d1, d, buf[j] * mu));
      buf[j] = bj;
      d = nesterov ? fmadd(bj, mu, d) : bj;
    }
    p[j] = softshrink(fmadd(d, neg_lr, pj), c);
  }
}

template <typename T>
void sgd_l1(int64_t numel, T* p, const T* g, T* buf, double wd, double mom, double damp1, double lr, double c,
            int64_t nesterov, int64_t first, int64_t vec, int nthreads) {
  const T w = T(wd), mu = T(mom), d1 = T(damp1), neg_lr = T(-lr), cc = T(c);
  const int64_t bulk = numel - numel % std::max<int64_t>(vec, 1);
  auto run = [&](int64_t lo, int64_t hi, auto tail) {
    if (buf)
      sgd_l1_range<T, true, decltype(tail)::value>(lo, hi, p, g, buf, w, mu, d1, neg_lr, cc, wd != 0.0,
                                                  nesterov, first);
    else
      sgd_l1_range<T, false, decltype(tail)::value>(lo, hi, p, g, buf, w, mu, d1, neg_lr, cc, wd != 0.0,
                                                   nesterov, first);
  };
  for_chunks(bulk, nthreads, [&](int64_t lo, int64_t hi) { run(lo, hi, std::false_type{}); });
  run(bulk, numel, std::true_type{});
}

}  // namespace

#define LP_EXPORT(T, SUF)                                                                                    \
  extern "C" void lp_adam_l1_##SUF(int64_t n, const int64_t* numel, T* const* p, const T* const* g, T* const* m,        \
                        T* const* v, const double* scal, double decay, double w1, double beta2, double c2,   \
                        double eps, int64_t floor, int64_t vec, int nthreads) {                              \
    for (int64_t i = 0; i < n; ++i)                                                                          \
      adam_l1<T>(numel[i], p[i], g[i], m[i], v[i], scal + 6 * i, decay, w1, beta2, c2, eps, floor, vec,      \
                 nthreads);                                                                                  \
  }                                                                                                          \
  extern "C" void lp_sgd_l1_##SUF(int64_t n, const int64_t* numel, T* const* p, const T* const* g, T* const* buf,       \
                       double wd, double mom, double damp1, double lr, double c, int64_t nesterov,           \
                       int64_t first, int64_t vec, int nthreads) {                                           \
    for (int64_t i = 0; i < n; ++i)                                                                          \
      sgd_l1<T>(numel[i], p[i], g[i], buf ? buf[i] : nullptr, wd, mom, damp1, lr, c, nesterov, first, vec,  \
                nthreads);                                                                                   \
  }

LP_EXPORT(float, f32)
LP_EXPORT(double, f64)
