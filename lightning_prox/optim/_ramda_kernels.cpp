// RAMDA's CPU step as one memory pass per tensor (lightning_prox.optim._ramda_kernels drives it).
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
//   group lasso: Ŵ = P⊙z/(P + c_g) with c_g the root of c‖P⊙z/(P + c)‖ = τ·w_g (screened: Ŵ_g = 0).
//
// Group lasso runs tile by tile: a tile is a block of whole groups that fits in cache (rows of [R, N]
// for dim="out"; for dim="in" adjacent input channels, i.e. a block of columns of every row, at least a
// cache line wide). Per tile: V, U, P and P⊙z (P and P⊙z into a per-thread tile buffer, reused across
// calls), the per-group sums ‖P⊙z‖² (screening), ‖z‖² (the root's lower bound τw/‖z_g‖), max/min P
// (the bracket); then the safeguarded Newton root search of GroupLasso(solver="newton") on the groups of
// the tile, each iteration one sweep of the cached tile (Σq², Σq²/(P + c) with q = P⊙z/(P + c)); then
// Ŵ, W ← lerp(W, Ŵ, c_m) and ‖Ŵ_g‖ (the next step's warm start). So W, g, W0, V, U are read and W, V, U,
// Ŵ written once per step. An overflowed U (P = +inf) pins its coordinate, as GroupLasso's prox does
// for an infinite metric: the solve sees the metric kPin (and z = W0), and Ŵ = z exactly there.
//
// The loops walk memory contiguously and GCC/Clang vectorize them (-O3, -fno-trapping-math lets the
// selects be if-converted). Sums run in T over at most kBlock terms per accumulator and are added up in
// double, so a float32 group of a million elements sums as accurately as a short one. Every group is
// computed inside its tile in a fixed order, so the results do not depend on the thread count at all.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int64_t kBlock = 64;     // rows summed in T before a flush into double ("cols")
constexpr int64_t kLanes = 256;    // lanes of a row's partial sums ("rows")
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

// Σ x[0..n) in 8 interleaved partial sums (independent adds, not one latency-bound chain)
inline double tree_sum(const double* x, int64_t n) {
  double part[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  int64_t l = 0;
  for (; l + 8 <= n; l += 8)
    for (int q = 0; q < 8; ++q) part[q] += x[l + q];
  for (; l < n; ++l) part[l & 7] += x[l];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

constexpr int64_t kTile = 1 << 16;  // elements of a tile (its P and P⊙z stay in L2 while Newton sweeps them)
constexpr int64_t kSeg = 512;       // bytes of a "cols" tile's row segment at least (whole cache lines)
constexpr int64_t kAhead = 4;       // rows a "cols" tile prefetches ahead (its rows are a page apart)

// Prefetch the (64-byte) cache lines of x[0 … n): the short, page-strided row segments of a "cols" tile defeat the
// hardware prefetchers, so each sweep over memory asks for the segment kAhead rows ahead itself
template <typename T> inline void prefetch(const T* x, int64_t n) {
  const char* p = reinterpret_cast<const char*>(x);
  const char* end = p + n * static_cast<int64_t>(sizeof(T));
  for (p -= reinterpret_cast<uintptr_t>(p) % 64; p < end; p += 64) __builtin_prefetch(p);
}

// Per-thread buffers of the group pass (grown, never shrunk: no allocation per call once warm)
template <typename T> struct Scratch {
  std::vector<T> P, pz, acc, c, ext;
  std::vector<double> dacc, grp;
  std::vector<char> flags;
};
template <typename T> Scratch<T>& scratch() {
  static thread_local Scratch<T> s;
  return s;
}
template <typename V> typename V::value_type* grow(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// Per-group sums over a tile [nr, W] held as rows of W: ROWS: group r = row r; else group = column block
// of K. body(r, j0, m, a, L) adds elements (r, j0 … j0 + m) into the T lanes a[k·L + l] (l < m) for the NS
// sums and, with MM, max/min into a[NS·L + l], a[(NS + 1)·L + l]. Writes out[k·G + g] (double) and mx/mn.
template <typename T, bool ROWS, int NS, bool MM, typename Body>
void tile_sums(int64_t nr, int64_t W, int64_t K, Scratch<T>& sc, Body body, double* out, T* mx, T* mn) {
  const int64_t L = ROWS ? std::min(kLanes, W) : W;
  const int64_t G = ROWS ? nr : W / K;
  T* a = grow(sc.acc, static_cast<size_t>(NS + 2) * L);
  double* d = grow(sc.dacc, static_cast<size_t>(NS) * L);
  auto reset = [&] {
    std::fill(a, a + NS * L, T(0));
    std::fill(d, d + NS * L, 0.0);
    if (MM) {
      std::fill(a + NS * L, a + (NS + 1) * L, -std::numeric_limits<T>::infinity());
      std::fill(a + (NS + 1) * L, a + (NS + 2) * L, std::numeric_limits<T>::infinity());
    }
  };
  auto flush = [&] {
    for (int64_t l = 0; l < NS * L; ++l) d[l] += static_cast<double>(a[l]);
    std::fill(a, a + NS * L, T(0));
  };
  if (ROWS) {
    for (int64_t r = 0; r < nr; ++r) {
      reset();
      int64_t runs = 0;
      for (int64_t j0 = 0; j0 < W; j0 += L) {
        body(r, j0, std::min(L, W - j0), a, L);
        if (++runs == kBlock || j0 + L >= W) {
          flush();
          runs = 0;
        }
      }
      for (int k = 0; k < NS; ++k) out[k * G + r] = tree_sum(d + k * L, L);
      if (MM) {
        mx[r] = *std::max_element(a + NS * L, a + (NS + 1) * L);
        mn[r] = *std::min_element(a + (NS + 1) * L, a + (NS + 2) * L);
      }
    }
    return;
  }
  reset();
  for (int64_t r = 0; r < nr; ++r) {
    body(r, 0, W, a, L);
    if ((r + 1) % kBlock == 0 || r + 1 == nr) flush();
  }
  for (int64_t g = 0; g < G; ++g) {
    for (int k = 0; k < NS; ++k) {
      double sum = 0.0;
      for (int64_t j = g * K; j < (g + 1) * K; ++j) sum += d[k * L + j];
      out[k * G + g] = sum;
    }
    if (MM) {
      mx[g] = *std::max_element(a + NS * L + g * K, a + NS * L + (g + 1) * K);
      mn[g] = *std::min_element(a + (NS + 1) * L + g * K, a + (NS + 1) * L + (g + 1) * K);
    }
  }
}

// -- segment kernels: one contiguous run of n elements; restrict pointers so that they vectorize ------
// ScalarC: one c = c0 for the whole run (rows layout), else c[j] per column.
template <typename T>
inline void prep_seg(int64_t n, const T* __restrict g, const T* __restrict w0, T* __restrict v,
                     T* __restrict u, T* __restrict p_out, T* __restrict pz_out, T s, T eps, T* __restrict aq,
                     T* __restrict az, T* __restrict mx, T* __restrict mn) {
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const T Pu = accumulate_(g[j], v[j], u[j], s, eps);
    const T z = w0[j] - v[j] / Pu;  // as the eager step forms z (Pu = inf: z = W0), for ‖z_g‖
    const bool pin = !(Pu <= std::numeric_limits<T>::max());  // U overflowed: z = W0 − V/inf = W0
    const T P = pin ? kPin<T> : Pu;
    const T pz = pin ? kPin<T> * w0[j] : P * w0[j] - v[j];  // P⊙(W0 − V/P) without a division
    p_out[j] = P;
    pz_out[j] = pz;
    aq[j] += pz * pz;
    az[j] += z * z;
    mx[j] = std::max(mx[j], P);
    mn[j] = std::min(mn[j], P);
  }
}

template <typename T, bool ScalarC>
inline void secular_seg(int64_t n, const T* __restrict P, const T* __restrict pz, const T* __restrict c, T c0,
                        T* __restrict a2, T* __restrict a3) {
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    const T r = T(1) / (P[j] + (ScalarC ? c0 : c[j]));
    const T q = pz[j] * r;
    const T q2 = q * q;
    a2[j] += q2;
    a3[j] += q2 * r;
  }
}

template <typename T, bool ScalarC>
inline void final_seg(int64_t n, const T* __restrict P, const T* __restrict pz, const T* __restrict c, T c0,
                      T* __restrict w, T* __restrict x, T cm, T* __restrict ax) {
#pragma GCC ivdep
  for (int64_t j = 0; j < n; ++j) {
    // c = inf (screened): exactly 0; a pinned coordinate keeps z = (kPin·z)/kPin exactly
    const T xn = P[j] == kPin<T> ? pz[j] * (T(1) / kPin<T>) : pz[j] / (P[j] + (ScalarC ? c0 : c[j]));
    x[j] = xn;
    w[j] = lerp_(w[j], xn, cm);
    ax[j] += xn * xn;
  }
}

// One safeguarded Newton update of a group's root c, GroupLasso(solver="newton")'s _newton_update for one
// group in float64 (NaN-propagating max/min as numpy's): bracket [lo, hi], sticky done, last correction.
inline void newton_update(double& c, double p2, double p3, double& lo, double& hi, double thr, bool& done,
                          double& prev, double tol) {
  const double tiny = std::numeric_limits<double>::min();
  auto max_ = [](double a, double b) { return a < b ? b : a; };  // NaN a stays NaN, as np.maximum
  const double nrm = c * std::sqrt(p2);  // ‖c·p(c)‖, increasing in c
  if (nrm < thr) lo = c;
  else hi = c;
  const double dn = max_(c * (p2 - c * p3), 0.0) / max_(nrm, tiny);  // d‖c·p‖/dc ≥ 0
  const double step = c - (nrm - thr) / max_(dn, tiny);
  const bool inside = step >= lo && step <= hi;
  const double c_new = inside ? step : std::sqrt(lo) * std::sqrt(hi);
  const double delta = std::fabs(c_new - c);
  const double resid = std::fabs(nrm - thr);
  const bool stalled = delta >= 0.5 * prev && resid <= std::sqrt(tol) * thr;
  const bool small = inside && (delta <= tol * c || stalled);
  done = done || resid <= tol * thr || hi - lo <= tol * hi || small;
  prev = inside ? delta : std::numeric_limits<double>::infinity();
  c = done ? (inside ? c_new : c) : c_new;
}

struct Hyper {
  double s, eps, cm, tol;
  int64_t max_iters;
};

// One tile: groups g0 … g0 + ng of a tensor viewed as [R, N] (ROWS: group = row; else group = K columns).
// thr, nrm (in: ‖Ŵ_{t−1,g}‖, 0 for none; out: ‖Ŵ_t,g‖) and stat (out: −1 screened, 0 closed form, else
// the Newton iteration at which the group converged, max_iters if it did not) start at group g0.
template <typename T, bool ROWS>
void group_tile(int64_t R, int64_t N, int64_t K, int64_t g0, int64_t ng, T* w, const T* g, const T* w0, T* v,
                T* u, T* x, const Hyper& h, const double* thr, double* nrm, double* stat) {
  Scratch<T>& sc = scratch<T>();
  const int64_t nr = ROWS ? ng : R, W = ROWS ? N : ng * K;
  T* P = grow(sc.P, static_cast<size_t>(nr * W));
  T* PZ = grow(sc.pz, static_cast<size_t>(nr * W));
  T* cc = grow(sc.c, static_cast<size_t>(ROWS ? ng : W));  // c in T: per row, or per column
  double* q = grow(sc.grp, static_cast<size_t>(8 * ng));  // per group, float64
  double *sq = q, *sz = q + ng, *s2 = q + 2 * ng, *s3 = q + 3 * ng, *c = q + 4 * ng, *lo = q + 5 * ng,
         *hi = q + 6 * ng, *prev = q + 7 * ng;
  T* mx = grow(sc.ext, static_cast<size_t>(2 * ng));
  T* mn = mx + ng;
  char* alive = grow(sc.flags, static_cast<size_t>(2 * ng));
  char* done = alive + ng;
  auto gbase = [&](int64_t r) { return ROWS ? (g0 + r) * N : r * N + g0 * K; };
  const T s = static_cast<T>(h.s), eps = static_cast<T>(h.eps), cm = static_cast<T>(h.cm);

  tile_sums<T, ROWS, 2, true>(nr, W, K, sc, [&](int64_t r, int64_t j0, int64_t m, T* a, int64_t L) {
    const int64_t o = gbase(r) + j0, t = r * W + j0;
    if (!ROWS && r + kAhead < nr) {
      const int64_t a = gbase(r + kAhead);
      for (const T* y : {g, w0, static_cast<const T*>(v), static_cast<const T*>(u)}) prefetch(y + a, W);
    }
    prep_seg<T>(m, g + o, w0 + o, v + o, u + o, P + t, PZ + t, s, eps, a, a + L, a + 2 * L, a + 3 * L);
  }, sq, mx, mn);  // sq then sz (out[k·G + g])

  const double tiny = std::numeric_limits<double>::min();
  bool closed = true;
  for (int64_t i = 0; i < ng; ++i) {
    const double t = thr[i], norm = std::sqrt(sq[i]);
    const bool a = norm > t;  // zero iff ‖P⊙z‖ ≤ α·λ·w_g (ties → zero)
    const double gap = std::max(norm - t, tiny);
    // root bracket τw·[min P, max P]/(‖P⊙z‖ − τw), both ends ≥ tiny; its lower end raised to τw/‖z_g‖
    const double hv = std::max(a ? t * static_cast<double>(mx[i]) / gap : 1.0, tiny);
    double lv = std::min(std::max(a ? t * static_cast<double>(mn[i]) / gap : 1.0, tiny), hv);
    if (a) lv = std::min(std::max(lv, t / std::max(std::sqrt(sz[i]), tiny)), hv);
    closed = closed && (mn[i] == mx[i] || !a);
    const double x0 = nrm[i];
    // warm start: the last solution Ŵ_{t−1} has c = τw/‖Ŵ_{t−1,g}‖, clamped into the bracket
    c[i] = (x0 > 0 && a) ? std::min(std::max(t / std::max(x0, tiny), lv), hv) : lv;
    lo[i] = lv;
    hi[i] = hv;
    prev[i] = std::numeric_limits<double>::infinity();
    alive[i] = a;
    done[i] = !a;
    stat[i] = a ? 0.0 : -1.0;
  }
  auto set_c = [&] {
    if (ROWS)
      for (int64_t i = 0; i < ng; ++i) cc[i] = static_cast<T>(c[i]);
    else
      for (int64_t j = 0; j < W; ++j) cc[j] = static_cast<T>(c[j / K]);
  };
  if (closed) {  // every group zero or of uniform P: the closed form c = hi, no iteration
    for (int64_t i = 0; i < ng; ++i) c[i] = hi[i];
  } else {
    for (int64_t i = 0; i < ng; ++i)
      if (alive[i]) stat[i] = static_cast<double>(h.max_iters);  // until it converges
    const int64_t jmin = std::min<int64_t>(2, h.max_iters);
    for (int64_t j = 1; j <= h.max_iters; ++j) {
      set_c();
      tile_sums<T, ROWS, 2, false>(nr, W, K, sc, [&](int64_t r, int64_t j0, int64_t m, T* a, int64_t L) {
        const int64_t t = r * W + j0;
        if (ROWS) secular_seg<T, true>(m, P + t, PZ + t, nullptr, cc[r], a, a + L);
        else secular_seg<T, false>(m, P + t, PZ + t, cc + j0, T(0), a, a + L);
      }, s2, nullptr, nullptr);  // s2 then s3
      bool all = true;
      for (int64_t i = 0; i < ng; ++i) {
        bool d = done[i];
        newton_update(c[i], s2[i], s3[i], lo[i], hi[i], thr[i], d, prev[i], h.tol);
        if (d && !done[i] && alive[i]) stat[i] = static_cast<double>(j);
        done[i] = d;
        all = all && d;
      }
      if (j >= jmin && all) break;
    }
  }
  for (int64_t i = 0; i < ng; ++i)
    if (!alive[i]) c[i] = std::numeric_limits<double>::infinity();  // screened: Ŵ = P⊙z/(P + inf) = 0
  set_c();
  tile_sums<T, ROWS, 1, false>(nr, W, K, sc, [&](int64_t r, int64_t j0, int64_t m, T* a, int64_t) {
    const int64_t o = gbase(r) + j0, t = r * W + j0;
    if (!ROWS && r + kAhead < nr) {
      const int64_t a = gbase(r + kAhead);
      prefetch(w + a, W);
      prefetch(x + a, W);
    }
    if (ROWS) final_seg<T, true>(m, P + t, PZ + t, nullptr, cc[r], w + o, x + o, cm, a);
    else final_seg<T, false>(m, P + t, PZ + t, cc + j0, T(0), w + o, x + o, cm, a);
  }, sq, nullptr, nullptr);
  for (int64_t i = 0; i < ng; ++i) nrm[i] = std::sqrt(sq[i]);
}

template <typename T>
void group_tensor(const int64_t* lay, T* w, const T* g, const T* w0, T* v, T* u, T* x, const Hyper& h,
                  const double* thr, double* nrm, double* stat, int nthreads) {
  const bool rows = lay[0] != 0;
  const int64_t R = lay[1], N = lay[2], K = lay[3], G = rows ? R : N / K;
  // groups per tile: whole groups of about kTile elements; a "cols" row segment at least a cache line
  // and a whole number of vectors (so that no row of a sweep ends in a scalar remainder)
  const int64_t vec = 64 / static_cast<int64_t>(sizeof(T)), mult = vec / std::gcd(K, vec);
  const int64_t line = (kSeg / static_cast<int64_t>(sizeof(T)) + K - 1) / K;
  const int64_t b_cols = (std::max(line, kTile / std::max<int64_t>(R * K, 1)) + mult - 1) / mult * mult;
  const int64_t B = std::min(G, rows ? std::max<int64_t>(1, kTile / std::max<int64_t>(N, 1)) : b_cols);
  const int64_t tiles = (G + B - 1) / B;
  const int nt = static_cast<int>(std::min<int64_t>(threads_for(R * N, nthreads), tiles));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t g0 = t * B, ng = std::min(B, G - g0);
    if (rows)
      group_tile<T, true>(R, N, K, g0, ng, w, g, w0, v, u, x, h, thr + g0, nrm + g0, stat + g0);
    else
      group_tile<T, false>(R, N, K, g0, ng, w, g, w0, v, u, x, h, thr + g0, nrm + g0, stat + g0);
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
  extern "C" void lp_ramda_elementwise_##SUF(int64_t n, const int64_t* numel, T* const* w, const T* const* g, \
                                             const T* const* w0, T* const* v, T* const* u, T* const* x,      \
                                             double s, double eps, double cm, double tau, int nthreads) {    \
    for (int64_t i = 0; i < n; ++i)                                                                          \
      elementwise<T>(numel[i], w[i], g[i], w0[i], v[i], u[i], x[i], s, eps, cm, tau, nthreads);              \
  }                                                                                                          \
  extern "C" void lp_ramda_group_##SUF(int64_t n, const int64_t*, const int64_t* layout, T* const* w,        \
                                       const T* const* g, const T* const* w0, T* const* v, T* const* u,      \
                                       T* const* x, double s, double eps, double cm, const double* thr,      \
                                       double* norms, double* stat, double tol, int64_t max_iters,           \
                                       int nthreads) {                                                       \
    const Hyper h{s, eps, cm, tol, max_iters};                                                               \
    for (int64_t i = 0; i < n; ++i) {                                                                        \
      const int64_t* l = layout + 5 * i;                                                                     \
      group_tensor<T>(l, w[i], g[i], w0[i], v[i], u[i], x[i], h, thr + l[4], norms + l[4], stat + l[4],      \
                      nthreads);                                                                             \
    }                                                                                                        \
  }                                                                                                          \
  extern "C" void lp_ramda_cbrt_##SUF(int64_t n, const int64_t* numel, const T* const* u, T* const* y, int) { \
    for (int64_t i = 0; i < n; ++i) cbrt_array<T>(numel[i], u[i], y[i]);                                     \
  }

// one dtype per half of the build: the halves compile in parallel (lightning_prox.optim._native)
#if LP_WANT(f32)
LP_EXPORT(float, f32)
#endif
#if LP_WANT(f64)
LP_EXPORT(double, f64)
#endif
