// ProxGen's Adam + ℓ1 and Adam + ℓ0/Lq steps and ProxSGD's SGD + ℓ1 step as one memory pass per tensor
// (lightning_prox.optim._l1_kernels drives them; prototypes generated from its signature table KERNELS and
// force-included by lightning_prox.optim._native, so a definition that disagrees does not compile).
//
// Each element goes through the operations of the eager path in the same order and precision: torch's
// fused CPU Adam/SGD step (aten/src/ATen/native/cpu/FusedAdamKernel.cpp, FusedSGDKernel.cpp: scalars
// rounded to T; fused multiply-adds exactly where torch 2.14's x86 build of those kernels has them,
// written out as std::fma under LP_FMA) followed by the chunked soft thresholding of lightning_prox.optim._l1_kernels
// (Adam's metric) or softshrink (Euclidean). Contraction is off (ISO C++), so every other operation rounds
// as written and the result is the eager path's to the bit; the data is read and written once instead of
// twice. The ℓ0/Lq prox (LqProx) follows the eager chunk kernels' operations the same way, to a few ulp
// (see there). Elements are independent: the OpenMP split changes no bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
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

// torch.nn.functional.softshrink as its vectorized CPU kernel rounds: |a| ≤ λ → +0, NaN stays NaN; its
// scalar code (Signed) gives a·0 there (−0 for a < 0)
template <typename T, bool Signed = false> inline T softshrink(T a, T lam) {
  return a > lam ? a - lam : (a < -lam ? a + lam : (Signed ? a * T(0) : (a == a ? T(0) : a)));
}

template <typename F> void for_chunks(int64_t n, int nthreads, F f) {
  const int nt = n < 4 * kChunk ? 1 : std::max(nthreads, 1);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t a = 0; a < n; a += kChunk) f(a, std::min(a + kChunk, n));
}

template <typename T> struct AdamScalars {
  T dec, coeff, b2, c2, eps, neg_step, bc2;
};

// elements [lo, hi) of one tensor: the smooth step, then prox(θ̂, √v, its denominator √v/√bc2 + eps, v); a plain loop over restrict
// pointers, so that it vectorizes. Tail: the last numel % vec elements, which torch's kernel runs in scalar
// code, where its compiler fused the second moment the other way round (v·β₂ + (1 − β₂)g·g as
// fma(v, β₂, (1 − β₂)g·g)). p is read before m and v are written: tensors allocated alike lie at the same
// address modulo 4096, where a load issued after a store waits for it (4K aliasing; ~10% of the pass
// when the compiler folded the load of p into its late multiply).
template <typename T, bool Tail, bool Small, typename Prox>
void adam_prox_range(int64_t lo, int64_t hi, T* __restrict p, const T* __restrict g, T* __restrict m,
                     T* __restrict v, const AdamScalars<T> k, const Prox prox) {
  for (int64_t j = lo; j < hi; ++j) {
    const T gj = g[j], decayed = p[j] * k.dec;
    const T mj = fmadd(k.coeff, gj - m[j], Small ? m[j] : gj);  // torch.lerp's two forms
    const T vj = Tail ? fmadd(v[j], k.b2, k.c2 * gj * gj) : fmadd(k.c2 * gj, gj, v[j] * k.b2);
    m[j] = mj;
    v[j] = vj;
    const T root = std::sqrt(vj);
    const T den = root / k.bc2 + k.eps;
    p[j] = prox(decayed + k.neg_step * mj / den, root, den, vj);
  }
}

// One tensor: scal[0..1] = lr/bc1 and √bc2 (torch's Adam); make_prox(floor) gives the prox functor of
// the floored (true) or plain metric.
template <typename T, typename MakeProx>
void adam_prox(int64_t numel, T* p, const T* g, T* m, T* v, const double* scal, double decay, double w1,
               double beta2, double c2, double eps, int64_t floor, int64_t vec, int nthreads, MakeProx make_prox) {
  const T W = T(w1);
  const bool small = std::abs(W) < T(0.5);
  const AdamScalars<T> k{T(decay), small ? W : W - T(1), T(beta2), T(c2), T(eps), T(-scal[0]), T(scal[1])};
  const int64_t bulk = numel - numel % std::max<int64_t>(vec, 1);
  auto run = [&](int64_t lo, int64_t hi, auto tail) {
    constexpr bool Tail = decltype(tail)::value;
    auto go = [&](auto fl) {
      const auto prox = make_prox(fl);
      small ? adam_prox_range<T, Tail, true>(lo, hi, p, g, m, v, k, prox)
            : adam_prox_range<T, Tail, false>(lo, hi, p, g, m, v, k, prox);
    };
    floor ? go(std::true_type{}) : go(std::false_type{});
  };
  for_chunks(bulk, nthreads, [&](int64_t lo, int64_t hi) { run(lo, hi, std::false_type{}); });
  run(bulk, numel, std::true_type{});
}

// the chunked soft thresholding of lightning_prox.optim._l1_kernels: softshrink(θ̂·E, c·b)/E with
// E = b·D̄ = min(max(√v + eps·b, floor·b), 1e19), and b where v = 0 under the floor
template <typename T, bool Floor> struct L1Prox {
  T cb, eb, fb, b;
  T operator()(T z, T root, T, T vj) const {
    T e = std::min(std::max(root + eb, fb), T(1e19));
    if (Floor) e = vj == T(0) ? b : e;
    return softshrink(z * e, cb) / e;
  }
};

// scal per tensor: lr/bc1, √bc2 (torch's Adam), then the prox's c·b, eps·b, floor·b and b (b = the
// prox's √bc2); floor: D̄ = max(D, floor) and 1 where v = 0 (b·1 in the scaled form)
template <typename T>
void adam_l1(int64_t numel, T* p, const T* g, T* m, T* v, const double* scal, double decay, double w1,
             double beta2, double c2, double eps, int64_t floor, int64_t vec, int nthreads) {
  adam_prox(numel, p, g, m, v, scal, decay, w1, beta2, c2, eps, floor, vec, nthreads, [&](auto fl) {
    return L1Prox<T, decltype(fl)::value>{T(scal[2]), T(scal[3]), T(scal[4]), T(scal[5])};
  });
}

// x ≥ 0 finite: the cube root as x·r² with r = x^{-1/3} by Newton steps r ← r(4 − x r³)/3 from a
// bit-level guess (Lomont's approach for the inverse square root; 3 steps in float, 4 in double reach
// 2e-7 and 5e-16): multiplications only, so it vectorizes, unlike std::cbrt or exp(log(x)/3). A
// subnormal x gets a poor guess and so a larger error; 0 maps to 0.
template <typename T> inline T cbrt_pos(T x) {
  constexpr bool F = std::is_same_v<T, float>;
  using U = std::conditional_t<F, uint32_t, uint64_t>;
  U i;
  std::memcpy(&i, &x, sizeof(T));
  i = (F ? U(0x54a21d2a) : U(0x553ef0ff289dd796ULL)) - i / 3;
  T r;
  std::memcpy(&r, &i, sizeof(T));
  for (int s = 0; s < (F ? 3 : 4); ++s) r = r * (T(4) - x * r * r * r) * T(1.0 / 3.0);
  return x * r * r;
}

// The Lq prox (lightning_prox.regularizers.lq, Cao et al.'s closed forms) under the metric D = √v/b + eps
// (D̄ = max(D, floor), and fill where v = 0, under the floor), each as the eager chunk kernel of
// lightning_prox.regularizers.functional rounds it (torch.add with alpha fuses, addcmul does not), with the
// non-finite policy of pin_nonfinite: θ̂ where θ̂ is not finite or D = inf. kind 0: hard thresholding
// (L0: |z| > sqrt(min(num/D, max)); 1: Lq with q = 0, the same threshold times √2); 2: q = 1/2
// (lhalf_kernel); 3: q = 2/3 (ltwothirds_kernel, |z|^{1/3} by cbrt_pos instead of exp(log|z|/3)).
template <typename T, bool Floor, int Kind, bool Shared> struct LqProx {
  T b, eps, floor, fill, a;  // a: num (kinds 0, 1), −a/4 (2), −2a/3 (3)
  T operator()(T z, T root, T den, T vj) const {
    T d = Shared ? den : root / b + eps;  // Shared: b is the smooth step's √bc2, D its denominator
    if (Floor) d = vj == T(0) ? fill : std::max(d, floor);
    const T az = std::abs(z);
    T x;
    if (Kind <= 1) {
      const T thr = std::sqrt(std::min(T(1) / d * a, std::numeric_limits<T>::max()));
      x = az > (Kind == 1 ? thr * T(1.4142135623730951) : thr) ? z : T(0);
    } else if (Kind == 2) {
      constexpr T hs = T(0.13608276348795434);  // 0.5·sqrt(2/27)
      const T h = std::max(a / (std::sqrt(az) * d * az), -hs);
      const T on = h + hs > T(0) ? T(1) : T(0);
      T w = c0h + (c1h + (c2h + fmadd(h, c4h, c3h) * h) * h) * h;
      for (int s = 0; s < newton; ++s) {
        const T w2 = w * w;
        w = (h + w2 * w) / fmadd(w2, T(1.5), T(-0.5));
      }
      w *= on;
      x = z * (w * w);
    } else {
      constexpr T es = T(0.3968502629920499);  // 2^{-4/3}
      const T h = std::max(a / (cbrt_pos(az) * az * d), -es);
      const T on = h + es > T(0) ? T(1) : T(0);
      T w = fmadd(h, c[0], c[1]);
      for (int s = 2; s < 7; ++s) w = c[s] + w * h;
      for (int s = 0; s < newton; ++s) {
        const T w3 = w * w * w;
        w = (h + T(3) * w3 * w) / fmadd(w3, T(4), T(-1));
      }
      w *= on;
      x = z * (w * w * w);
    }
    return az <= std::numeric_limits<T>::max() && d != std::numeric_limits<T>::infinity() ? x : z;
  }
  static constexpr int newton = std::is_same_v<T, float> ? 1 : 3;
  // lightning_prox.regularizers.functional._W_POLY (q = 1/2, c4 … c0) and _W23_POLY (q = 2/3, c6 … c0)
  static constexpr T c4h = T(-79.46190006920315), c3h = T(-7.149998672776421), c2h = T(-2.1478113682582736),
                     c1h = T(0.9876593307885589), c0h = T(0.9999636322984188);
  static constexpr T c[7] = {T(-37.886118459841235), T(-33.40825731064251), T(-12.397697544719076),
                             T(-1.7566838361892594), T(-0.37296335686730875), T(0.32920721874639625),
                             T(0.9999819271079357)};
};

// scal per tensor: lr/bc1, √bc2 (torch's Adam), b (the prox's √bc2); a = step·λ (2·step·λ for kind 0);
// floor > 0: the floored metric with fill where v = 0
template <typename T>
void adam_lq(int64_t numel, T* p, const T* g, T* m, T* v, const double* scal, double decay, double w1,
             double beta2, double c2, double eps, double a, int64_t kind, double floor, double fill, int64_t vec,
             int nthreads) {
  const double tiny = double(std::numeric_limits<T>::min()), big = double(std::numeric_limits<T>::max());
  const T ta = T(kind <= 1 ? std::min(a, big) : std::min(std::max(a, tiny), big));
  const T coef = kind <= 1 ? T(1) : (kind == 2 ? T(-0.25) : T(-2.0 / 3.0));
  const T args[5] = {T(scal[2]), T(eps), T(floor), T(fill), ta * coef};
  auto with = [&](auto kd) {
    auto go = [&](auto sh) {
      adam_prox(numel, p, g, m, v, scal, decay, w1, beta2, c2, eps, int64_t(floor > 0), vec, nthreads, [&](auto fl) {
        return LqProx<T, decltype(fl)::value, decltype(kd)::value, decltype(sh)::value>{args[0], args[1], args[2],
                                                                                        args[3], args[4]};
      });
    };
    T(scal[1]) == args[0] ? go(std::true_type{}) : go(std::false_type{});
  };
  switch (kind) {
    case 0: with(std::integral_constant<int, 0>{}); break;
    case 1: with(std::integral_constant<int, 1>{}); break;
    case 2: with(std::integral_constant<int, 2>{}); break;
    default: with(std::integral_constant<int, 3>{}); break;
  }
}

// Tail as in adam_prox_range: there torch's compiler fused the momentum update the other way round
// (buf·μ + d·(1 − τ) as fma(buf, μ, d·(1 − τ))). ShrinkTail: the elements torch's softshrink runs in
// scalar code (a range of its own longer than Tail's).
template <typename T, bool Buf, bool Tail, bool ShrinkTail>
void sgd_l1_range(int64_t lo, int64_t hi, T* __restrict p, const T* __restrict g, T* __restrict buf, T w,
                  T mu, T d1, T neg_lr, T c, bool decay, bool nesterov, bool first) {
  for (int64_t j = lo; j < hi; ++j) {
    const T pj = p[j];
    T d = decay ? fmadd(pj, w, g[j]) : g[j], bj = d;
    if (Buf) {
      bj = first ? d : (Tail ? fmadd(buf[j], mu, d * d1) : fmadd(d1, d, buf[j] * mu));
      d = nesterov ? fmadd(bj, mu, d) : bj;
    }
    p[j] = softshrink<T, ShrinkTail>(fmadd(d, neg_lr, pj), c);
    if (Buf) buf[j] = bj;  // after p is read (4K aliasing, see adam_prox_range)
  }
}

template <typename T>
void sgd_l1(int64_t numel, T* p, const T* g, T* buf, double wd, double mom, double damp1, double lr, double c,
            int64_t nesterov, int64_t first, int64_t vec, int64_t shrink_vec, int nthreads) {
  const T w = T(wd), mu = T(mom), d1 = T(damp1), neg_lr = T(-lr), cc = T(c);
  const int64_t bulk = numel - numel % std::max<int64_t>(vec, 1);
  const int64_t shrink = std::min(bulk, numel - numel % std::max<int64_t>(shrink_vec, 1));
  auto run = [&](int64_t lo, int64_t hi, auto tail, auto shrink_tail) {
    constexpr bool Tail = decltype(tail)::value, ShrinkTail = decltype(shrink_tail)::value;
    if (buf)
      sgd_l1_range<T, true, Tail, ShrinkTail>(lo, hi, p, g, buf, w, mu, d1, neg_lr, cc, wd != 0.0, nesterov,
                                              first);
    else
      sgd_l1_range<T, false, Tail, ShrinkTail>(lo, hi, p, g, buf, w, mu, d1, neg_lr, cc, wd != 0.0, nesterov,
                                               first);
  };
  for_chunks(shrink, nthreads,
             [&](int64_t lo, int64_t hi) { run(lo, hi, std::false_type{}, std::false_type{}); });
  run(shrink, bulk, std::false_type{}, std::true_type{});
  run(bulk, numel, std::true_type{}, std::true_type{});
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
  extern "C" void lp_adam_lq_##SUF(int64_t n, const int64_t* numel, T* const* p, const T* const* g, T* const* m,        \
                        T* const* v, const double* scal, double decay, double w1, double beta2, double c2,   \
                        double eps, double a, int64_t kind, double floor, double fill, int64_t vec,         \
                        int nthreads) {                                                                      \
    for (int64_t i = 0; i < n; ++i)                                                                          \
      adam_lq<T>(numel[i], p[i], g[i], m[i], v[i], scal + 3 * i, decay, w1, beta2, c2, eps, a, kind, floor,  \
                 fill, vec, nthreads);                                                                       \
  }                                                                                                          \
  extern "C" void lp_sgd_l1_##SUF(int64_t n, const int64_t* numel, T* const* p, const T* const* g, T* const* buf,       \
                       double wd, double mom, double damp1, double lr, double c, int64_t nesterov,           \
                       int64_t first, int64_t vec, int64_t shrink_vec, int nthreads) {                       \
    for (int64_t i = 0; i < n; ++i)                                                                          \
      sgd_l1<T>(numel[i], p[i], g[i], buf ? buf[i] : nullptr, wd, mom, damp1, lr, c, nesterov, first, vec,  \
                shrink_vec, nthreads);                                                                       \
  }

LP_EXPORT(float, f32)
LP_EXPORT(double, f64)
