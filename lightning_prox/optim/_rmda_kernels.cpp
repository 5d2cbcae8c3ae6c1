// RMDA's CPU step as about one memory pass per tensor (lightning_prox.optim._rmda_kernels drives it;
// prototypes generated from its signature table KERNELS and force-included by lightning_prox.optim._native,
// so a definition that disagrees does not compile).
//
// Per element, with s = η√t, nb = −1/β (β = √t), the momentum weight c and the prox threshold τ:
//   V ← V + s·g;  z = W0 + nb·V;  Ŵ = prox(z);  W ← lerp(W, Ŵ, c)   (W ← Ŵ for c = 1)
// as the eager step rounds them (torch.add with alpha and torch.lerp, fused multiply-adds where torch's
// vectorized kernels use them, LP_FMA), so V, z and, without a regularizer, Ŵ and W are the eager bits.
// Group lasso (kind 1): Ŵ_g = max(0, 1 − τ_g/‖z_g‖)·z_g, with the scale formed as GroupLasso's eager
// prox forms it in T (1 − (1/max(‖z‖, tiny))·τ where ‖z‖ > τ, else 0: a NaN norm scales the group by 0,
// which keeps NaN; an infinite one by 1). The norm sums z² in T over short runs (16 lanes of a block of
// 2^14 values for dim="out", 64 rows per column for dim="in"), the runs added in double: a summation order
// of its own (not torch's), so Ŵ and W agree with the eager step to a few ulp of the scale, and a group
// within rounding of ‖z‖ = τ may be zeroed on the other side.
//
// Layouts of a tensor viewed as [R, N] (row-major): dim="out" (layout rows = 1) is a group per row,
// processed block by block (V and z into Ŵ, then z² summed from cache) and scaled in a second walk over
// the row while it is still in cache; dim="in" (rows = 0) owns the columns j with j / K = g, processed
// as whole rows with per-column sums (group_cols), Ŵ re-read once. Without a regularizer, and with
// dim="out", every group is summed by one thread in a fixed order: the bits do not depend on the thread
// count; with dim="in" the row split follows it (a given thread count gives the same bits every run).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "_native_common.h"

namespace {

constexpr int64_t kChunk = 1 << 14;   // elements per work item of the elementwise pass, per block of a row
constexpr int64_t kLanes = 16;        // partial sums of a run
constexpr int64_t kFlush = 64;        // rows of per-column sums in T before a flush into double
constexpr int64_t kSerial = 1 << 16;  // below this many elements one thread runs the tensor

template <typename T> inline T fmadd(T a, T b, T c) { return lp_fmadd(a, b, c); }

template <typename T> struct Scalars {
  T s, nb, coeff;  // coeff: torch.lerp's c (|c| < 0.5) or c − 1
};

// torch.lerp(w, x, c) as its CPU kernel rounds it: fma(c, x − w, w) for |c| < 0.5, else fma(c − 1, x − w, x);
// Copy: c = 1 (the eager step copies Ŵ)
template <typename T, bool Copy, bool Small> inline T lerp(T w, T x, T coeff) {
  return Copy ? x : fmadd(coeff, x - w, Small ? w : x);
}

// V ← V + s·g and z = W0 + nb·V into wh over [lo, hi)
template <typename T>
inline void dual_range(int64_t lo, int64_t hi, const T* __restrict g, T* __restrict v, const T* __restrict w0,
                       T* __restrict wh, const Scalars<T> k) {
  for (int64_t j = lo; j < hi; ++j) {
    const T vj = fmadd(k.s, g[j], v[j]);
    v[j] = vj;
    wh[j] = fmadd(vj, k.nb, w0[j]);
  }
}

// Σ x² over [0, n): kLanes partial sums in T, added in double
template <typename T> inline double sum_sq(const T* __restrict x, int64_t n) {
  T part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] += x[j + l] * x[j + l];
  double s = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) s += double(part[l]);
  for (; j < n; ++j) s += double(x[j] * x[j]);
  return s;
}

// GroupLasso's eager scale max(0, 1 − thr/‖z‖) in T: where(nrm > thr, 1 − reciprocal(max(nrm, tiny))·thr, 0)
template <typename T> inline T group_scale(double ss, T thr) {
  const T nrm = T(std::sqrt(ss));
  const T r = T(1) / std::max(nrm, std::numeric_limits<T>::min());
  return nrm > thr ? T(1) - r * thr : T(0);
}

// Ŵ ← scale·z and W ← lerp(W, Ŵ, c) over [lo, hi) (scale one value, or one per element: sc + j)
template <typename T, bool Copy, bool Small, bool PerCol>
inline void finish_range(int64_t lo, int64_t hi, T* __restrict wh, T* __restrict p, const T* __restrict sc,
                         T scale, T coeff) {
  for (int64_t j = lo; j < hi; ++j) {
    const T x = wh[j] * (PerCol ? sc[j - lo] : scale);
    wh[j] = x;
    p[j] = lerp<T, Copy, Small>(p[j], x, coeff);
  }
}

template <typename T> inline T softshrink(T z, T lam) { return lp_softshrink(z, lam); }

// elementwise prox (Shrink: ℓ1's soft thresholding at thr, else none): one pass in chunks
template <typename T, bool Copy, bool Small, bool Shrink>
inline void plain_range(int64_t lo, int64_t hi, const T* __restrict g, T* __restrict v, const T* __restrict w0,
                        T* __restrict p, T* __restrict wh, const Scalars<T> k, T thr) {
  for (int64_t j = lo; j < hi; ++j) {
    const T vj = fmadd(k.s, g[j], v[j]);
    v[j] = vj;
    const T z = fmadd(vj, k.nb, w0[j]);
    const T x = Shrink ? softshrink(z, thr) : z;
    wh[j] = x;
    p[j] = lerp<T, Copy, Small>(p[j], x, k.coeff);
  }
}

template <typename T, bool Copy, bool Small, bool Shrink>
void plain(int64_t numel, const T* g, T* v, const T* w0, T* p, T* wh, const Scalars<T> k, T thr, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t a = 0; a < numel; a += kChunk)
    plain_range<T, Copy, Small, Shrink>(a, std::min(a + kChunk, numel), g, v, w0, p, wh, k, thr);
}

// dim="out": a group per row of [R, N]; returns the number of zeroed (screened) groups
template <typename T, bool Copy, bool Small>
int64_t group_rows(int64_t R, int64_t N, const T* g, T* v, const T* w0, T* p, T* wh, const Scalars<T> k, T thr,
                   int nt) {
  int64_t zeroed = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : zeroed)
  for (int64_t r = 0; r < R; ++r) {
    const int64_t lo = r * N, hi = lo + N;
    double ss = 0.0;
    for (int64_t a = lo; a < hi; a += kChunk) {
      const int64_t b = std::min(a + kChunk, hi);
      dual_range(a, b, g, v, w0, wh, k);
      ss += sum_sq(wh + a, b - a);
    }
    const T scale = group_scale(ss, thr);
    zeroed += scale == T(0);
    finish_range<T, Copy, Small, false>(lo, hi, wh, p, nullptr, scale, k.coeff);
  }
  return zeroed;
}

// dim="in": group q owns the columns [qK, qK + K) of every row of [R, N]. Whole rows keep every stream
// contiguous (tiles of columns, with a short segment per row, stream several times slower): each thread
// takes a block of rows, sums z² per column, the per-thread sums are added in thread order, and the
// second half walks the thread's rows backwards, so that the rows written last are read from cache first.
template <typename T, bool Copy, bool Small>
int64_t group_cols(int64_t R, int64_t N, int64_t K, const T* g, T* v, const T* w0, T* p, T* wh,
                   const Scalars<T> k, T thr, int nt) {
  const int64_t G = N / K;
  nt = int(std::min<int64_t>(nt, R));
  std::vector<double> sums(size_t(nt) * N, 0.0);
  std::vector<T> sc(N);
  int64_t zeroed = 0;
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    // the team may be smaller than asked for (thread limits, nesting): split the rows over its size
    const int tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
    const int tid = 0, team = 1;
#endif
    const int64_t r0 = R * tid / team, r1 = R * (tid + 1) / team;
    std::vector<T> acc(N, T(0));
    double* __restrict accd = sums.data() + size_t(tid) * N;
    T* __restrict ac = acc.data();
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t a = r * N;
      dual_range(a, a + N, g, v, w0, wh, k);
      const T* __restrict z = wh + a;
      for (int64_t j = 0; j < N; ++j) ac[j] += z[j] * z[j];
      if ((r + 1 - r0) % kFlush == 0 || r + 1 == r1)
        for (int64_t j = 0; j < N; ++j) {
          accd[j] += double(ac[j]);
          ac[j] = T(0);
        }
    }
#pragma omp barrier
#pragma omp single
    {
      for (int64_t q = 0; q < G; ++q) {
        double ss = 0.0;
        for (int64_t j = q * K; j < (q + 1) * K; ++j)
          for (int t = 0; t < team; ++t) ss += sums[size_t(t) * N + j];
        const T scale = group_scale(ss, thr);
        zeroed += scale == T(0);
        std::fill(sc.begin() + q * K, sc.begin() + (q + 1) * K, scale);
      }
    }
    for (int64_t r = r1 - 1; r >= r0; --r)
      finish_range<T, Copy, Small, true>(r * N, (r + 1) * N, wh, p, sc.data(), T(0), k.coeff);
  }
  return zeroed;
}

// one tensor: lay = (rows, R, N, K); kind 0: no prox (Ŵ = z), 1: group lasso, 2: ℓ1, with threshold thr
template <typename T>
int64_t rmda_tensor(int64_t numel, const int64_t* lay, const T* g, T* v, const T* w0, T* p, T* wh, double thr,
                    double s, double nb, double c, int64_t kind, int nthreads) {
  if (numel == 0) return 0;
  const T tc = T(c);
  const bool copy = c == 1.0, small = std::abs(tc) < T(0.5);
  const Scalars<T> k{T(s), T(nb), small ? tc : tc - T(1)};
  const int nt = numel < kSerial ? 1 : std::max(nthreads, 1);
  auto go = [&](auto cp, auto sm) -> int64_t {
    constexpr bool Copy = decltype(cp)::value, Small = decltype(sm)::value;
    if (kind == 0 || kind == 2) {
      kind ? plain<T, Copy, Small, true>(numel, g, v, w0, p, wh, k, T(thr), nt)
           : plain<T, Copy, Small, false>(numel, g, v, w0, p, wh, k, T(thr), nt);
      return 0;
    }
    if (lay[0]) return group_rows<T, Copy, Small>(lay[1], lay[2], g, v, w0, p, wh, k, T(thr), nt);
    return group_cols<T, Copy, Small>(lay[1], lay[2], lay[3], g, v, w0, p, wh, k, T(thr), nt);
  };
  if (copy) return go(std::true_type{}, std::false_type{});
  return small ? go(std::false_type{}, std::true_type{}) : go(std::false_type{}, std::false_type{});
}

}  // namespace

#define LP_EXPORT(T, SUF)                                                                                    \
  extern "C" void lp_rmda_step_##SUF(int64_t n, const int64_t* numel, const int64_t* layout, const T* const* g, \
                                     T* const* v, const T* const* w0, T* const* p, T* const* w_hat,          \
                                     const double* thr, double s, double nb, double c, int64_t kind,         \
                                     int64_t* screened, int nthreads) {                                     \
    for (int64_t i = 0; i < n; ++i)                                                                          \
      screened[i] = rmda_tensor<T>(numel[i], layout + 4 * i, g[i], v[i], w0[i], p[i], w_hat[i], thr[i], s,  \
                                   nb, c, kind, nthreads);                                                   \
  }

// one dtype per half of the build: the halves compile in parallel (lightning_prox.optim._native)
#if LP_WANT(f32)
LP_EXPORT(float, f32)
#endif
#if LP_WANT(f64)
LP_EXPORT(double, f64)
#endif
