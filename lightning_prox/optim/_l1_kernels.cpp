// ProxGen's Adam + ℓ1, ℓ0/Lq, MCP, SCAD and Quantization steps and ProxSGD's SGD + ℓ1 and SGD + the
// other separable proxes as one memory pass per tensor
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
// (see there); MCP, SCAD and Quantization (their section below) to the bit. Elements are independent:
// the OpenMP split changes no bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "_native_common.h"

namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per OpenMP work item

template <typename T> inline T fmadd(T a, T b, T c) { return lp_fmadd(a, b, c); }

template <typename T, bool Signed = false> inline T softshrink(T a, T lam) { return lp_softshrink<T, Signed>(a, lam); }

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

// LqProx's a of kind from a = step·λ (2·step·λ for kind 0), as the eager kernels round and clamp it
template <typename T> inline T lq_scale(double a, int64_t kind) {
  const double tiny = double(std::numeric_limits<T>::min()), big = double(std::numeric_limits<T>::max());
  const T ta = T(kind <= 1 ? std::min(a, big) : std::min(std::max(a, tiny), big));
  return ta * (kind <= 1 ? T(1) : (kind == 2 ? T(-0.25) : T(-2.0 / 3.0)));
}

// scal per tensor: lr/bc1, √bc2 (torch's Adam), b (the prox's √bc2); a = step·λ (2·step·λ for kind 0);
// floor > 0: the floored metric with fill where v = 0
template <typename T>
void adam_lq(int64_t numel, T* p, const T* g, T* m, T* v, const double* scal, double decay, double w1,
             double beta2, double c2, double eps, double a, int64_t kind, double floor, double fill, int64_t vec,
             int nthreads) {
  const T args[5] = {T(scal[2]), T(eps), T(floor), T(fill), lq_scale<T>(a, kind)};
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

// a if the mask is all ones, b if it is 0, by bits: a select on a loop-invariant bool does not vectorize
// (GCC 12) in a long loop body, the bitwise one does
template <typename T, typename U> inline T pick(U m, T a, T b) {
  U ua, ub;
  std::memcpy(&ua, &a, sizeof(T));
  std::memcpy(&ub, &b, sizeof(T));
  ua = (ua & m) | (ub & ~m);
  std::memcpy(&a, &ua, sizeof(T));
  return a;
}

// tail as Tail in adam_prox_range: there torch's compiler fused the momentum update the other way round
// (buf·μ + d·(1 − τ) as fma(buf, μ, d·(1 − τ))); prox(θ̂) is the prox of the Euclidean metric. The
// flags are masks, not template arguments or branches (see pick), and the one instantiation per prox
// is not inlined into its three call sites: a short build.
template <typename T, bool Buf, typename Prox>
__attribute__((noinline)) void sgd_prox_range(int64_t lo, int64_t hi, T* __restrict p, const T* __restrict g,
                                              T* __restrict buf, T w, T mu, T d1, T neg_lr, bool decay,
                                              bool nesterov, bool first, bool tail, const Prox prox) {
  using U = std::conditional_t<std::is_same_v<T, float>, uint32_t, uint64_t>;
  const U dec = decay ? ~U(0) : U(0), fst = first ? ~U(0) : U(0), nes = nesterov ? ~U(0) : U(0);
  const U tl = tail ? ~U(0) : U(0);
  for (int64_t j = lo; j < hi; ++j) {
    const T pj = p[j], gj = g[j];
    T d = pick(dec, fmadd(pj, w, gj), gj), bj = d;
    if (Buf) {
      const T bo = buf[j];
      bj = pick(fst, d, pick(tl, fmadd(bo, mu, d * d1), fmadd(d1, d, bo * mu)));
      d = pick(nes, fmadd(bj, mu, d), bj);
    }
    p[j] = prox(fmadd(d, neg_lr, pj));
    if (Buf) buf[j] = bj;  // after p is read (4K aliasing, see adam_prox_range)
  }
}

// One tensor: torch's fused SGD step, then make_prox(ShrinkTail)'s prox, where ShrinkTail marks the
// elements torch's softshrink runs in scalar code (a range of its own longer than the tail's; shrink_vec
// = 1: none, for a prox without such a range).
template <typename T, typename MakeProx>
void sgd_prox(int64_t numel, T* p, const T* g, T* buf, double wd, double mom, double damp1, double lr,
              int64_t nesterov, int64_t first, int64_t vec, int64_t shrink_vec, int nthreads, MakeProx make_prox) {
  const T w = T(wd), mu = T(mom), d1 = T(damp1), neg_lr = T(-lr);
  const int64_t bulk = numel - numel % std::max<int64_t>(vec, 1);
  const int64_t shrink = std::min(bulk, numel - numel % std::max<int64_t>(shrink_vec, 1));
  auto run = [&](int64_t lo, int64_t hi, bool tail, auto shrink_tail) {
    const auto prox = make_prox(shrink_tail);
    if (buf)
      sgd_prox_range<T, true>(lo, hi, p, g, buf, w, mu, d1, neg_lr, wd != 0.0, nesterov, first, tail, prox);
    else
      sgd_prox_range<T, false>(lo, hi, p, g, buf, w, mu, d1, neg_lr, wd != 0.0, nesterov, first, tail, prox);
  };
  for_chunks(shrink, nthreads, [&](int64_t lo, int64_t hi) { run(lo, hi, false, std::false_type{}); });
  run(shrink, bulk, false, std::true_type{});
  run(bulk, numel, true, std::true_type{});
}

template <typename T>
void sgd_l1(int64_t numel, T* p, const T* g, T* buf, double wd, double mom, double damp1, double lr, double c,
            int64_t nesterov, int64_t first, int64_t vec, int64_t shrink_vec, int nthreads) {
  const T cc = T(c);
  sgd_prox(numel, p, g, buf, wd, mom, damp1, lr, nesterov, first, vec, shrink_vec, nthreads, [&](auto st) {
    return [cc](T z) { return softshrink<T, decltype(st)::value>(z, cc); };
  });
}

// ---- MCP, SCAD and Quantization under ProxGen's metric, and every separable prox after ProxSGD's step ----
// Each map(z, s) follows its eager chunk kernel (lightning_prox.regularizers.functional.mcp_kernel,
// scad_kernel; Quantization's level-mask kernel) operation by operation in T with the same constants
// (Python doubles rounded to T), s = step/metric (times λ for Quantization) as _scale_into rounds it:
// the eager bits for the same θ̂ and metric. Boolean selects are the eager 0/1 masks; max/min are torch.maximum/minimum on the
// finite, non-negative candidates they compare. An element whose θ̂ is not finite or whose metric is
// +inf keeps θ̂ (pin_nonfinite).

// ProxGen's floored prox metric from the smooth step's denominator D = √v/√bc2 + eps (the D its eager
// prox rebuilds, with a correctly rounded square root): max(D, floor), fill where v = 0; without a
// floor, floor = 0 and fill = eps give D itself (√0/√bc2 + eps = eps, and max(D, 0) = D)
template <typename T> struct DiagMetric {
  T floor, fill;
  T operator()(T den, T vj) const { return vj == T(0) ? fill : std::max(den, floor); }
};

template <typename T> inline T mask(bool c) { return c ? T(1) : T(0); }
template <typename T> inline T sign(T z) { return mask<T>(T(0) < z) - mask<T>(z < T(0)); }  // torch.sign

// the best of 0 and the candidates for a magnitude, by ½(x − |z|)² + s·ρ(x), ties to the smaller: the
// eager kernels' running (best, value) with best ← max(x·[value < best value], best)
template <typename T> struct BestOf {
  T az, best, val;
  explicit BestOf(T a) : az(a), best(T(0)), val(a * T(0.5) * a) {}
  void offer(T x, T pen_s) {
    T v = x - az;
    v = v * v * T(0.5) + pen_s;
    best = std::max(x * mask<T>(v < val), best);
    val = std::min(v, val);
  }
};

// prox_mcp: 0, the inner piece's stationary point clipped to [0, bλ] (where s < b), max(|z|, bλ)
template <typename T> struct MCPMap {
  T lam, b, bl, two_b, flat_pen, tiny;
  MCPMap(double l, double bb)
      : lam(T(l)), b(T(bb)), bl(T(std::min(bb * l, double(std::numeric_limits<T>::max())))), two_b(T(2.0 * bb)),
        flat_pen(T(std::min(0.5 * bb * l * l, double(std::numeric_limits<T>::max())))),
        tiny(std::numeric_limits<T>::min()) {}
  T operator()(T z, T s) const {
    const T az = std::abs(z);
    T inner = (az - s * lam) * b / std::max(-s + b, tiny);
    inner = std::min(std::max(inner, T(0)), bl) * mask<T>(s < b);
    BestOf<T> o(az);
    o.offer(inner, (-(inner / two_b) + lam) * inner * s);
    o.offer(std::max(az, bl), s * flat_pen);
    return sign(z) * o.best;
  }
};

// prox_scad: 0, clamp(|z| − sλ, 0, λ), the middle piece's stationary point clipped to [λ, aλ] (where
// s < a − 1, else λ), max(|z|, aλ)
template <typename T> struct SCADMap {
  T lam, lam_k, alam, alam_k, am1, two_alam, lam2, two_am1, flat_pen, tiny;
  SCADMap(double l, double a)
      : lam(T(l)), lam_k(T(std::min(l, double(std::numeric_limits<T>::max())))), alam(T(a * l)),
        alam_k(T(std::min(a * l, double(std::numeric_limits<T>::max())))), am1(T(a - 1.0)),
        two_alam(T(2.0 * a * l)), lam2(T(l * l)), two_am1(T(2.0 * (a - 1.0))),
        flat_pen(T(std::min(0.5 * (a + 1.0) * l * l, double(std::numeric_limits<T>::max())))),
        tiny(std::numeric_limits<T>::min()) {}
  T operator()(T z, T s) const {
    const T az = std::abs(z);
    BestOf<T> o(az);
    const T c1 = std::min(std::max(az - s * lam, T(0)), lam_k);
    o.offer(c1, c1 * lam * s);
    T c2 = (az * am1 - s * alam) / std::max(-s + am1, tiny);
    c2 = std::max(std::min(std::max(c2, lam_k), alam_k) * mask<T>(s < am1), lam_k);
    o.offer(c2, ((-c2 + two_alam) * c2 - lam2) / two_am1 * s);
    o.offer(std::max(az, alam_k), s * flat_pen);
    return sign(z) * o.best;
  }
};

// Quantization (q = 1, at most 4 levels): the nearest level (ties: the larger) by 0/1 masks,
// level ← level·(1 − mask) + mask·b, then the level plus the soft-thresholded offset. Missing gaps
// have midpoint +inf and level −0 (the identity on every finite z: x + (−0) = x).
template <typename T> struct QuantMap {
  T lv0, mid[3], lv[3];
  QuantMap(const double* levels, int64_t n) : lv0(T(levels[0])) {
    for (int k = 0; k < 3; ++k) {
      mid[k] = k + 1 < n ? T(0.5 * (levels[k] + levels[k + 1])) : std::numeric_limits<T>::infinity();
      lv[k] = k + 1 < n ? T(levels[k + 1]) : T(-0.0);
    }
  }
  T operator()(T z, T s) const {
    T level = lv0;
    for (int k = 0; k < 3; ++k) {
      const T m = mask<T>(z >= mid[k]);
      level = level * (-m + T(1)) + m * lv[k];
    }
    const T d = z - level;
    return level + (d - std::min(std::max(d, -s), s));
  }
};

enum SepKind : int64_t { kMCP = 4, kSCAD = 5, kQuant = 6 };

// map(kind) gives the map of an MCP, SCAD or Quantization kind (prm: λ and b, λ and a, the levels)
template <typename T, typename F> void with_map(int64_t kind, const double* prm, int64_t nprm, F f) {
  if (kind == kMCP) f(MCPMap<T>(prm[0], prm[1]));
  else if (kind == kSCAD) f(SCADMap<T>(prm[0], prm[1]));
  else f(QuantMap<T>(prm, nprm));
}

// ProxGen: the smooth step of adam_prox, then map(θ̂, s) with s = min(num/D̄, max) (reciprocal, then
// the product, as _scale_into)
template <typename T, typename Map> struct MetricProx {
  DiagMetric<T> metric;
  T num;
  Map map;
  T operator()(T z, T, T den, T vj) const {
    const T d = metric(den, vj);
    const T x = map(z, std::min(T(1) / d * num, std::numeric_limits<T>::max()));
    return std::abs(z) <= std::numeric_limits<T>::max() && d != std::numeric_limits<T>::infinity() ? x : z;
  }
};

// scal per tensor: lr/bc1 and √bc2 (torch's Adam, and the prox's metric); num = step (MCP, SCAD) or
// step·λ (Quantization), capped at T's max as the eager scale is; floor > 0: the floored metric with
// fill where v = 0
template <typename T>
void adam_sep(int64_t numel, T* p, const T* g, T* m, T* v, const double* scal, double decay, double w1,
              double beta2, double c2, double eps, int64_t kind, double num, const double* prm, int64_t nprm,
              double floor, double fill, int64_t vec, int nthreads) {
  const T tnum = T(std::min(num, double(std::numeric_limits<T>::max())));
  const DiagMetric<T> metric = floor > 0 ? DiagMetric<T>{T(floor), T(fill)} : DiagMetric<T>{T(0), T(eps)};
  with_map<T>(kind, prm, nprm, [&](auto map) {
    // one prox for both metrics (the floor is in metric's values)
    adam_prox(numel, p, g, m, v, scal, decay, w1, beta2, c2, eps, 0, vec, nthreads, [&](auto) {
      return MetricProx<T, decltype(map)>{metric, tnum, map};
    });
  });
}

// ProxSGD: the fused SGD step of sgd_prox, then the Euclidean prox of kind (0-6, the table of
// lightning_prox.optim._l1_kernels): 0, 1: hard thresholding at a (ℓ0, Lq q = 0: the eager threshold,
// computed in double); 2, 3: LqProx with D = 1 and a = step·λ; 4-6: map(θ̂, min(a, max)) with
// a = step (MCP, SCAD) or step·λ (Quantization)
template <typename T>
void sgd_sep(int64_t numel, T* p, const T* g, T* buf, double wd, double mom, double damp1, double lr,
             int64_t nesterov, int64_t first, int64_t vec, int64_t kind, double a, const double* prm, int64_t nprm,
             int nthreads) {
  constexpr T big = std::numeric_limits<T>::max();
  auto run = [&](auto prox) {
    sgd_prox(numel, p, g, buf, wd, mom, damp1, lr, nesterov, first, vec, 1, nthreads, [&](auto) { return prox; });
  };
  auto lq = [&](auto kd) {
    const LqProx<T, false, decltype(kd)::value, true> lp{T(1), T(0), T(0), T(1), lq_scale<T>(a, kd.value)};
    run([lp](T z) { return lp(z, T(1), T(1), T(1)); });
  };
  if (kind <= 1) {
    const T thr = T(a);
    run([thr](T z) { return std::abs(z) > thr || !(std::abs(z) <= big) ? z : T(0); });
  } else if (kind == 2) {
    lq(std::integral_constant<int, 2>{});
  } else if (kind == 3) {
    lq(std::integral_constant<int, 3>{});
  } else {
    const T s = T(std::min(a, double(big)));
    with_map<T>(kind, prm, nprm, [&](auto map) { run([map, s](T z) { return std::abs(z) <= big ? map(z, s) : z; }); });
  }
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
  }                                                                                                          \
  extern "C" void lp_adam_sep_##SUF(int64_t n, const int64_t* numel, T* const* p, const T* const* g,           \
                                    T* const* m, T* const* v, const double* scal, double decay, double w1,   \
                                    double beta2, double c2, double eps, int64_t kind, double num,           \
                                    int64_t nprm, const double* prm, double floor, double fill, int64_t vec, \
                                    int nthreads) {                                                          \
    for (int64_t i = 0; i < n; ++i)                                                                          \
      adam_sep<T>(numel[i], p[i], g[i], m[i], v[i], scal + 2 * i, decay, w1, beta2, c2, eps, kind, num, prm, \
                  nprm, floor, fill, vec, nthreads);                                                         \
  }                                                                                                          \
  extern "C" void lp_sgd_sep_##SUF(int64_t n, const int64_t* numel, T* const* p, const T* const* g,            \
                                   T* const* buf, double wd, double mom, double damp1, double lr,            \
                                   int64_t nesterov, int64_t first, int64_t vec, int64_t kind, double a,     \
                                   int64_t nprm, const double* prm, int nthreads) {                          \
    for (int64_t i = 0; i < n; ++i)                                                                          \
      sgd_sep<T>(numel[i], p[i], g[i], buf ? buf[i] : nullptr, wd, mom, damp1, lr, nesterov, first, vec,     \
                 kind, a, prm, nprm, nthreads);                                                              \
  }

// one dtype per half of the build: the halves compile in parallel (lightning_prox.optim._native)
#if LP_WANT(f32)
LP_EXPORT(float, f32)
#endif
#if LP_WANT(f64)
LP_EXPORT(double, f64)
#endif
