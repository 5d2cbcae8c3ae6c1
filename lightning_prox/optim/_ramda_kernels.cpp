// RAMDA's CPU step as a few memory passes per tensor (lightning_prox.optim._ramda_kernels drives them).
//
// Built at first use by lightning_prox.optim._native with the system C++ compiler and called through the
// torch.library operators it registers: plain C ABI, no torch headers (a build takes about 3 s). The
// prototypes of the entry points are generated from the Python signature table (_ramda_kernels.KERNELS)
// and force-included, so a definition below that disagrees with the table does not compile. Every entry
// point takes n tensors per list argument (arrays of pointers to contiguous tensors) and exists for float
// (_f32) and double (_f64).
//
// Per element, with s = η√t, ε, c_m (momentum weight) and τ = α·λ:
//   V += s·g;  U += s·g²;  P = ∛U + ε;  z = W0 − V/P
//   elementwise (no regularizer / L1):  Ŵ = z − clamp(z, −τ/P, τ/P);  W ← lerp(W, Ŵ, c_m)
//   group lasso: Ŵ = P⊙z/(P + c_g) with the root c_g of c‖P⊙z/(P + c)‖ = τ·w_g found by the caller;
//     group_prep_first  stores P and P⊙z and returns per group Σq², Σq²/(P + c) (q = P⊙z/(P + c), at the
//                       caller's warm start c), ‖P⊙z‖², max P and min P;
//     group_secular     returns Σq², Σq²/(P + c) at new c;
//     group_final       writes Ŵ and W ← lerp(W, Ŵ, c_m).
//   An overflowed U (P = +inf) pins its coordinate, as GroupLasso's prox does for an infinite metric:
//   the solve sees the metric kPin (and z = W0), and Ŵ = z exactly there.
//
// Layouts of a tensor viewed as [R, N] (row-major): "cols" (dim="in": a group per input channel, the
// columns j with j / K = g, K the kernel size) and "rows" (dim="out": a group per row); the per-tensor
// layout array holds (rows, R, N, K, offset of the tensor's first group in the per-group arrays). The loops walk
// memory contiguously in both and GCC/Clang vectorize them (-O3, -fno-trapping-math lets the selects be
// if-converted). Sums run in T over at most kBlock terms per accumulator and are added up in double, so a
// float32 group of a million elements sums as accurately as a short one. The row split over OpenMP
// threads is fixed by the thread count: a given thread count gives the same bits every run.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int64_t kBlock = 64;     // rows summed in T before a flush into double ("cols")
constexpr int64_t kLanes = 64;     // lanes of a row's partial sums ("rows")
constexpr int64_t kSerial = 1 << 16;  // below this many elements one thread runs the pass
// the metric of a pinned coordinate (P = +inf) in the group solve: a power of two (so that P⊙z/kPin = z
// exactly) near GroupLasso's own pin metric √(float max)/16; P⊙z and its square stay finite for |z| < 16
template <typename T> constexpr T kPin = T(1152921504606846976.0);  // 2^60

template <typename T> struct Cbrt;
template <> struct Cbrt<float> {
  using I = int32_t;
  static constexpr float up = 16777216.0f, down = 0.00390625f;  // 2^24, 2^-8
  static constexpr float magic = 1419967118.0f;                 // round(4/3·2^23·(127 − 0.0450465))
  static constexpr float tiny = 1.17549435082228750797e-38f;
};
template <> struct Cbrt<double> {
  using I = int64_t;
  static constexpr double up = 18014398509481984.0, down = 3.814697265625e-06;  // 2^54, 2^-18
  static constexpr double magic = 6142639396532537344.0;  // round(4/3·2^52·(1023 − 0.0450465))
  static constexpr double tiny = 2.2250738585072013831e-308;
};

// ∛u for u ≥ 0 = u·r² with r ≈ u^{-1/3}: a first guess from the bit pattern (r's bits ≈ K − bits(u)/3,
// in floating point: SIMD has no integer division), Newton r ← r(4 − u r³)/3 (no division), then one
// Newton correction of y itself. ≤ 1 ulp in float32; subnormals are scaled into the normal range; 0 → 0.
template <typename T> inline T cbrt_(T u) {
  using C = Cbrt<T>;
  using I = typename C::I;
  const bool small = u < C::tiny;
  // a select of constants, not of two computed values (compilers would run the whole root twice and
  // blend); u = 0 runs on 0 (finite all the way: its guess is K) and is replaced by 0 at the end
  const T us = u * (small ? C::up : T(1));
  I bits;
  std::memcpy(&bits, &us, sizeof(T));
  const I guess = static_cast<I>(C::magic - static_cast<T>(bits) * (T(1) / T(3)));
  T r;
  std::memcpy(&r, &guess, sizeof(T));
  r = r * (T(4) - us * (r * r * r)) * (T(1) / T(3));
  r = r * (T(4) - us * (r * r * r)) * (T(1) / T(3));
  if constexpr (sizeof(T) == 8) r = r * (T(4) - us * (r * r * r)) * (T(1) / T(3));
  T y = us * r * r;
  y = y + (us - y * y * y) * (r * r) * (T(1) / T(3));
  y = y * (small ? C::down : T(1));
  // u = +inf (an overflowed U): ∛inf = inf, where the iteration above gives NaN (inf/inf)
  return u > T(0) ? (u <= std::numeric_limits<T>::max() ? y : u) : T(0);
}

// torch.lerp's formula (weight < 0.5: a + w(b − a), else b − (b − a)(1 − w)): the eager step's rounding
template <typename T> inline T lerp_(T a, T b, T w) {
  return w < T(0.5) ? a + w * (b - a) : b - (b - a) * (T(1) - w);
}

inline int threads_for(int64_t n, int nthreads) { return n < kSerial ? 1 : std::max(nthreads, 1); }

// V += s·g, U += s·g² (in place); returns P = ∛U + ε
template <typename T> inline T accumulate_(T g, T& v, T& u, T s, T eps) {
  v += s * g;
  u += s * g * g;
  return cbrt_(u) + eps;
}

// -- row kernels: one contiguous run of n elements; restrict pointers so that they vectorize ----------
// prep + first sums. ScalarC: one c for the whole run (rows layout), else c[j] per column.
template <typename T, bool ScalarC>
inline void prep_first_row(int64_t n, const T* __restrict g, const T* __restrict w0, T* __restrict v,
                           T* __restrict u, T* __restrict p_out, T* __restrict pz_out, T s, T eps,
                           const T* __restrict c, T* __restrict a2, T* __restrict a3, T* __restrict aq,
                           T* __restrict az, T* __restrict mx, T* __restrict mn) {
  for (int64_t j = 0; j < n; ++j) {
    const T Pu = accumulate_(g[j], v[j], u[j], s, eps);
    const T z = w0[j] - v[j] / Pu;  // as the eager step forms z (Pu = inf: z = W0), for ‖z_g‖
    const bool pin = !(Pu <= std::numeric_limits<T>::max());  // U overflowed: z = W0 − V/inf = W0
    const T P = pin ? kPin<T> : Pu;
    const T pz = pin ? kPin<T> * w0[j] : P * w0[j] - v[j];  // P⊙(W0 − V/P) without a division
    p_out[j] = P;
    pz_out[j] = pz;
    const T r = T(1) / (P + (ScalarC ? c[0] : c[j]));
    const T q = pz * r;
    const T q2 = q * q;
    a2[j] += q2;
    a3[j] += q2 * r;
    aq[j] += pz * pz;
    az[j] += z * z;
    mx[j] = std::max(mx[j], P);
    mn[j] = std::min(mn[j], P);
  }
}

template <typename T, bool ScalarC>
inline void secular_row(int64_t n, const T* __restrict P, const T* __restrict pz, const T* __restrict c,
                        T* __restrict a2, T* __restrict a3) {
  for (int64_t j = 0; j < n; ++j) {
    const T r = T(1) / (P[j] + (ScalarC ? c[0] : c[j]));
    const T q = pz[j] * r;
    const T q2 = q * q;
    a2[j] += q2;
    a3[j] += q2 * r;
  }
}

template <typename T, bool ScalarC>
inline void final_row(int64_t n, const T* __restrict P, const T* __restrict pz, const T* __restrict c,
                      T* __restrict w, T* __restrict x, T cm) {
  for (int64_t j = 0; j < n; ++j) {
    // c = inf (screened): exactly 0; a pinned coordinate keeps z = (kPin·z)/kPin exactly
    const T xn = P[j] == kPin<T> ? pz[j] * (T(1) / kPin<T>) : pz[j] / (P[j] + (ScalarC ? c[0] : c[j]));
    x[j] = xn;
    w[j] = lerp_(w[j], xn, cm);
  }
}

template <typename T>
inline void elementwise_row(int64_t n, T* __restrict w, const T* __restrict g, const T* __restrict w0,
                            T* __restrict v, T* __restrict u, T* __restrict x, T s, T eps, T cm, T tau) {
  for (int64_t j = 0; j < n; ++j) {
    const T rp = T(1) / accumulate_(g[j], v[j], u[j], s, eps);  // one division for z and the threshold
    const T z = w0[j] - v[j] * rp;
    const T t = tau * rp;
    const T xn = z - std::min(std::max(z, -t), t);  // soft thresholding as prox_l1: |z| ≤ t → +0
    x[j] = xn;
    w[j] = lerp_(w[j], xn, cm);
  }
}

// Per-group results: nacc double sums and (with minmax) max/min P.
struct Out {
  double* s2;
  double* s3;
  double* sq;  // ‖P⊙z‖² (null: not wanted, nor sz)
  double* sz;  // ‖z‖²
  double* mx;  // null: not wanted
  double* mn;
};

// One pass over [R, N] in the "cols" layout. row(r, a2, a3, aq, az, mx, mn) adds row r into the T
// accumulators (length N); groups g = j / K.
template <typename T, typename Row>
void cols_pass(int64_t R, int64_t N, int64_t K, int nthreads, const Out& out, Row row) {
  const int nt = threads_for(R * N, nthreads);
  const int nacc = out.sq ? 4 : 2;
  const bool minmax = out.mx != nullptr;
  std::vector<double> tot(static_cast<size_t>(nt) * nacc * N, 0.0);
  std::vector<T> ext(minmax ? static_cast<size_t>(nt) * 2 * N : 0);
#pragma omp parallel num_threads(nt)
  {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    const int64_t r_lo = R * tid / nt, r_hi = R * (tid + 1) / nt;
    std::vector<T> acc(static_cast<size_t>(4) * N);
    T* a2 = acc.data();
    T* a3 = a2 + N;
    T* aq = a3 + N;
    T* az = aq + N;
    T* mx = minmax ? ext.data() + static_cast<size_t>(tid) * 2 * N : nullptr;
    T* mn = minmax ? mx + N : nullptr;
    if (minmax) {
      std::fill(mx, mx + N, -INFINITY);
      std::fill(mn, mn + N, INFINITY);
    }
    double* t = tot.data() + static_cast<size_t>(tid) * nacc * N;
    for (int64_t b = r_lo; b < r_hi; b += kBlock) {
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t r = b; r < std::min(b + kBlock, r_hi); ++r) row(r, a2, a3, aq, az, mx, mn);
      for (int k = 0; k < nacc; ++k)
        for (int64_t j = 0; j < N; ++j) t[k * N + j] += static_cast<double>(acc[k * N + j]);
    }
  }
  const int64_t G = N / K;
  double* dst[4] = {out.s2, out.s3, out.sq, out.sz};
  for (int k = 0; k < nacc; ++k)
    for (int64_t grp = 0; grp < G; ++grp) {
      double sum = 0.0;
      for (int th = 0; th < nt; ++th)  // threads in order: the same bits for the same thread count
        for (int64_t j = grp * K; j < (grp + 1) * K; ++j) sum += tot[(static_cast<size_t>(th) * nacc + k) * N + j];
      dst[k][grp] = sum;
    }
  if (minmax)
    for (int64_t grp = 0; grp < G; ++grp) {
      T hi = -INFINITY, lo = INFINITY;
      for (int th = 0; th < nt; ++th)
        for (int64_t j = grp * K; j < (grp + 1) * K; ++j) {
          hi = std::max(hi, ext[static_cast<size_t>(th) * 2 * N + j]);
          lo = std::min(lo, ext[static_cast<size_t>(th) * 2 * N + N + j]);
        }
      out.mx[grp] = hi;
      out.mn[grp] = lo;
    }
}

// Σ x[0..n) in 8 interleaved partial sums (independent adds, not one latency-bound chain)
inline double tree_sum(const double* x, int64_t n) {
  double part[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  int64_t l = 0;
  for (; l + 8 <= n; l += 8)
    for (int q = 0; q < 8; ++q) part[q] += x[l + q];
  for (; l < n; ++l) part[l & 7] += x[l];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// One pass over [R, N] in the "rows" layout: group r = row r. seg(r, j0, n, a2, a3, aq, az, mx, mn) adds
// elements j0..j0+n of row r into the accumulators (lane j − j0). A row runs as runs of kLanes elements
// into kLanes float lanes, flushed into double lanes every kBlock runs; short rows pay little set-up.
template <typename T, typename Seg>
void rows_pass(int64_t R, int64_t N, int nthreads, const Out& out, Seg seg) {
  const int nt = threads_for(R * N, nthreads);
  const int nacc = out.sq ? 4 : 2;
  const bool minmax = out.mx != nullptr;
  const int64_t L = std::min(kLanes, N);
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> acc(static_cast<size_t>(6) * L);
    std::vector<double> lanes(static_cast<size_t>(4) * L);
    T* a2 = acc.data();
    T* a3 = a2 + L;
    T* aq = a3 + L;
    T* az = aq + L;
    T* mx = az + L;
    T* mn = mx + L;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      std::fill(a2, a2 + 4 * L, T(0));
      std::fill(mx, mx + L, -INFINITY);
      std::fill(mn, mn + L, INFINITY);
      std::fill(lanes.begin(), lanes.end(), 0.0);
      int64_t runs = 0;
      for (int64_t j0 = 0; j0 < N; j0 += L) {
        seg(r, j0, std::min(L, N - j0), a2, a3, aq, az, mx, mn);
        if (++runs == kBlock || j0 + L >= N) {
          for (int64_t l = 0; l < nacc * L; ++l) lanes[l] += static_cast<double>(a2[l]);
          std::fill(a2, a2 + 4 * L, T(0));
          runs = 0;
        }
      }
      double sums[4];
      for (int k = 0; k < nacc; ++k) sums[k] = tree_sum(lanes.data() + k * L, L);
      out.s2[r] = sums[0];
      out.s3[r] = sums[1];
      if (out.sq) {
        out.sq[r] = sums[2];
        out.sz[r] = sums[3];
      }
      if (minmax) {
        out.mx[r] = *std::max_element(mx, mx + L);
        out.mn[r] = *std::min_element(mn, mn + L);
      }
    }
  }
}

// c per group (double, from the caller's root search) → T per column ("cols"; "rows" reads c[r] as is)
template <typename T> std::vector<T> per_column(const double* c, int64_t N, int64_t K) {
  std::vector<T> cc(N);
  for (int64_t j = 0; j < N; ++j) cc[j] = static_cast<T>(c[j / K]);
  return cc;
}

template <typename T>
void group_prep_first(int rows, int64_t R, int64_t N, int64_t K, const T* g, const T* w0, T* v, T* u, T* P,
                      T* pz, double s_, double eps_, const double* c, const Out& out, int nthreads) {
  const T s = static_cast<T>(s_), eps = static_cast<T>(eps_);
  if (rows) {
    rows_pass<T>(R, N, nthreads, out, [&](int64_t r, int64_t j0, int64_t n, T* a2, T* a3, T* aq, T* az, T* mx, T* mn) {
      const int64_t o = r * N + j0;
      const T cr = static_cast<T>(c[r]);
      prep_first_row<T, true>(n, g + o, w0 + o, v + o, u + o, P + o, pz + o, s, eps, &cr, a2, a3, aq, az, mx, mn);
    });
    return;
  }
  const std::vector<T> cc = per_column<T>(c, N, K);
  cols_pass<T>(R, N, K, nthreads, out, [&](int64_t r, T* a2, T* a3, T* aq, T* az, T* mx, T* mn) {
    const int64_t o = r * N;
    prep_first_row<T, false>(N, g + o, w0 + o, v + o, u + o, P + o, pz + o, s, eps, cc.data(), a2, a3, aq, az, mx,
                             mn);
  });
}

template <typename T>
void group_secular(int rows, int64_t R, int64_t N, int64_t K, const T* P, const T* pz, const double* c,
                   const Out& out, int nthreads) {
  if (rows) {
    rows_pass<T>(R, N, nthreads, out, [&](int64_t r, int64_t j0, int64_t n, T* a2, T* a3, T*, T*, T*, T*) {
      const int64_t o = r * N + j0;
      const T cr = static_cast<T>(c[r]);
      secular_row<T, true>(n, P + o, pz + o, &cr, a2, a3);
    });
    return;
  }
  const std::vector<T> cc = per_column<T>(c, N, K);
  cols_pass<T>(R, N, K, nthreads, out, [&](int64_t r, T* a2, T* a3, T*, T*, T*, T*) {
    secular_row<T, false>(N, P + r * N, pz + r * N, cc.data(), a2, a3);
  });
}

template <typename T>
void group_final(int rows, int64_t R, int64_t N, int64_t K, const T* P, const T* pz, const double* c, T* w,
                 T* x, double cm_, int nthreads) {
  const T cm = static_cast<T>(cm_);
  const int nt = threads_for(R * N, nthreads);
  const std::vector<T> cc = rows ? std::vector<T>() : per_column<T>(c, N, K);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const int64_t o = r * N;
    if (rows) {
      const T cr = static_cast<T>(c[r]);
      final_row<T, true>(N, P + o, pz + o, &cr, w + o, x + o, cm);
    } else {
      final_row<T, false>(N, P + o, pz + o, cc.data(), w + o, x + o, cm);
    }
  }
}

template <typename T>
void elementwise(int64_t n, T* w, const T* g, const T* w0, T* v, T* u, T* x, double s, double eps, double cm,
                 double tau, int nthreads) {
  const int nt = threads_for(n, nthreads);
  const int64_t step = 1 << 14;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t a = 0; a < n; a += step) {
    const int64_t m = std::min(step, n - a);
    elementwise_row<T>(m, w + a, g + a, w0 + a, v + a, u + a, x + a, static_cast<T>(s), static_cast<T>(eps),
                       static_cast<T>(cm), static_cast<T>(tau));
  }
}

template <typename T> void cbrt_array(int64_t n, const T* u, T* y) {
  for (int64_t j = 0; j < n; ++j) y[j] = cbrt_(u[j]);
}

}  // namespace

// -- entry points (prototypes generated from the signature table): loops over the n tensors ------------
// layout: per tensor (rows, R, N, K, offset); the per-group arrays of tensor i start at offset_i.
#define LP_EXPORT(T, SUF)                                                                                    \
  extern "C" void lp_ramda_elementwise_##SUF(int64_t n, const int64_t* numel, T* const* w, const T* const* g,           \
                                  const T* const* w0, T* const* v, T* const* u, T* const* x, double s,       \
                                  double eps, double cm, double tau, int nthreads) {                         \
    for (int64_t i = 0; i < n; ++i)                                                                          \
      elementwise<T>(numel[i], w[i], g[i], w0[i], v[i], u[i], x[i], s, eps, cm, tau, nthreads);              \
  }                                                                                                          \
  extern "C" void lp_ramda_group_prep_first_##SUF(int64_t n, const int64_t*, const int64_t* layout, const T* const* g,  \
                                       const T* const* w0, T* const* v, T* const* u, T* const* P,            \
                                       T* const* pz, double s, double eps, const double* c, double* s2,      \
                                       double* s3, double* sq, double* sz, double* mx, double* mn, int nthreads) {\
    for (int64_t i = 0; i < n; ++i) {                                                                        \
      const int64_t* l = layout + 5 * i;                                                                     \
      const int64_t o = l[4];                                                                                \
      group_prep_first<T>(static_cast<int>(l[0]), l[1], l[2], l[3], g[i], w0[i], v[i], u[i], P[i], pz[i], s, \
                          eps, c + o, Out{s2 + o, s3 + o, sq + o, sz + o, mx + o, mn + o}, nthreads);                \
    }                                                                                                        \
  }                                                                                                          \
  extern "C" void lp_ramda_group_secular_##SUF(int64_t n, const int64_t*, const int64_t* layout, const T* const* P,     \
                                    const T* const* pz, const double* c, double* s2, double* s3,             \
                                    int nthreads) {                                                          \
    for (int64_t i = 0; i < n; ++i) {                                                                        \
      const int64_t* l = layout + 5 * i;                                                                     \
      const int64_t o = l[4];                                                                                \
      group_secular<T>(static_cast<int>(l[0]), l[1], l[2], l[3], P[i], pz[i], c + o,                        \
                       Out{s2 + o, s3 + o, nullptr, nullptr, nullptr, nullptr}, nthreads);                            \
    }                                                                                                        \
  }                                                                                                          \
  extern "C" void lp_ramda_group_final_##SUF(int64_t n, const int64_t*, const int64_t* layout, const T* const* P,       \
                                  const T* const* pz, const double* c, T* const* w, T* const* x, double cm,  \
                                  int nthreads) {                                                            \
    for (int64_t i = 0; i < n; ++i) {                                                                        \
      const int64_t* l = layout + 5 * i;                                                                     \
      group_final<T>(static_cast<int>(l[0]), l[1], l[2], l[3], P[i], pz[i], c + l[4], w[i], x[i], cm,       \
                     nthreads);                                                                              \
    }                                                                                                        \
  }                                                                                                          \
  extern "C" void lp_ramda_cbrt_##SUF(int64_t n, const int64_t* numel, const T* const* u, T* const* y, int) {           \
    for (int64_t i = 0; i < n; ++i) cbrt_array<T>(numel[i], u[i], y[i]);                                     \
  }

LP_EXPORT(float, f32)
LP_EXPORT(double, f64)
