// The exact group-lasso prox under a diagonal metric, one group at a time in cache
// (lightning_prox.optim._group_kernels drives it; GroupLasso(solver="newton") calls it on CPU).
//
// Built at first use by lightning_prox.optim._native with the system C++ compiler (plain C ABI, no torch
// headers); the prototype is generated from the Python signature table (_group_kernels.KERNELS) and
// force-included, so a definition below that disagrees with it does not compile.
//
// Per group g of a tensor, min_x τw‖x‖ + ½Σ m_i (x_i − z_i)²: zero iff ‖m⊙z‖ ≤ τw (ties → zero), else
// x = m⊙z/(m + c) with c > 0 the root of c‖m⊙z/(m + c)‖ = τw. The steps are those of the eager solver
// (lightning_prox.regularizers._group_solver._solve_newton), in the same order and dtype T: the metric
// and |z| scaled by their group maxima, the bracket τw·[min m, max m]/(‖m⊙z‖ − τw) tightened by τw/‖z‖,
// the warm start τw/‖x0‖, then the safeguarded Newton update (_newton_update) in double on per-group
// sums of T terms accumulated in double. The group is read once from memory (z and m; gathered for
// dim="in"), iterated on its cached scaled copies, and x written once. A +inf metric entry takes the
// finite pin metric in the solve and x = z there, as GroupLasso's prox does.
//
// Differences from the eager solver, all at rounding level: sums in double (eager: in T); a group stops
// iterating once it has converged (eager iterates every group of a tensor until all have), and a group
// with a constant metric takes the closed form c = hi (eager does so only when every group does).
//
// adam_group_lasso (ProxGen + GroupLasso) runs ProxGen's smooth step and its floored metric with the same
// solve, tile of adjacent groups by tile, without a metric buffer (see adam_group_tensor).
//
// Layouts of a tensor viewed as [R, N] (row-major): "rows" (dim="out": group r = row r) and "cols"
// (dim="in": group g = the columns g·K … g·K + K − 1 of every row). Groups are split over OpenMP threads
// with a static schedule: a given thread count gives the same bits every run (and a group's result does
// not depend on the thread count at all).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kSerial = 1 << 15;  // below this many elements one thread runs the tensor
constexpr int kL = 8;                 // independent lanes: the loops vectorize without reassociation
constexpr int64_t kChunk = 128;       // elements summed in T lanes before a flush into double
constexpr int64_t kRefine = 10;       // Newton steps past a loose ("stalled") stop, see solve_group
constexpr int64_t kTileBytes = 1 << 19;  // dim="in": the gathered tile (z, m, M, x0) stays in L2

inline int threads_for(int64_t n, int nthreads) { return n < kSerial ? 1 : std::max(nthreads, 1); }

inline double lanes_sum(const double* p) {
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

// Two sums over n elements: fill(i0, len, t1, t2) writes the terms of elements i0 … i0 + len − 1 into
// t1, t2 (a plain loop that vectorizes); they are added in kL lanes of T per chunk of kChunk elements
// and the chunks in double lanes (a float32 group of any size sums as accurately as a short one)
template <typename T, typename F> inline void sum2(int64_t n, double& out1, double& out2, F fill) {
  alignas(64) T t1[kChunk], t2[kChunk];
  double d1[kL] = {}, d2[kL] = {};
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t len = std::min(kChunk, n - i0);
    fill(i0, len, t1, t2);
    T a1[kL] = {}, a2[kL] = {};
    int64_t k = 0;
    for (; k + kL <= len; k += kL)
      for (int q = 0; q < kL; ++q) {
        a1[q] += t1[k + q];
        a2[q] += t2[k + q];
      }
    for (; k < len; ++k) {
      a1[k % kL] += t1[k];
      a2[k % kL] += t2[k];
    }
    for (int q = 0; q < kL; ++q) {
      d1[q] += static_cast<double>(a1[q]);
      d2[q] += static_cast<double>(a2[q]);
    }
  }
  out1 = lanes_sum(d1);
  out2 = lanes_sum(d2);
}

// One group: z, m (and x0) of n values (gathered for dim="in"); returns the Newton iterations where the
// eager stop rule is met, and writes flags (bit 0: alive, bit 1: constant metric), the scaled metric M
// (n values, kept for the solution, see solution()) and c_out. A: scratch of n values.
template <typename T>
int64_t solve_group(int64_t n, const T* zg, const T* mg, const T* x0g, T* __restrict M, T* __restrict A, T thr,
                    T pin, double tol, int64_t max_iters, int64_t& flags, T& c_out) {
  constexpr T tiny = std::numeric_limits<T>::min(), big = std::numeric_limits<T>::max();
  constexpr T inf = std::numeric_limits<T>::infinity();
  // pass 1: group max/min of the metric (+inf → the pin metric), max |z|
  T mxl[kL], mnl[kL], zal[kL];
  std::fill(mxl, mxl + kL, -inf);
  std::fill(mnl, mnl + kL, inf);
  std::fill(zal, zal + kL, T(0));
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t len = std::min(kChunk, n - i0);
    alignas(64) T mc[kChunk], zc[kChunk];
    for (int64_t k = 0; k < len; ++k) {
      mc[k] = mg[i0 + k] == inf ? pin : mg[i0 + k];
      zc[k] = std::abs(zg[i0 + k]);
    }
    for (int64_t k = len; k < (len + kL - 1) / kL * kL; ++k) {  // pad the last lanes neutrally
      mc[k] = mc[0];
      zc[k] = T(0);
    }
    for (int64_t k = 0; k < len; k += kL)
      for (int q = 0; q < kL; ++q) {
        mxl[q] = mxl[q] < mc[k + q] ? mc[k + q] : mxl[q];
        mnl[q] = mnl[q] > mc[k + q] ? mc[k + q] : mnl[q];
        zal[q] = zal[q] < zc[k + q] ? zc[k + q] : zal[q];
      }
  }
  T mx = std::max(*std::max_element(mxl, mxl + kL), tiny), mn = *std::min_element(mnl, mnl + kL);
  const T za = std::max(*std::max_element(zal, zal + kL), tiny);
  const T rza = T(1) / za;
  // pass 2: the scaled metric M = m/mx and |a| = (|z|/za)⊙M, ‖z‖ and ‖a‖ (scaled)
  double nz2, na2;
  sum2<T>(n, nz2, na2, [&](int64_t i0, int64_t len, T* __restrict s, T* __restrict t) {
    const T* zp = zg + i0;
    const T* mp = mg + i0;
    T* __restrict Mp = M + i0;
    T* __restrict Ap = A + i0;
    for (int64_t k = 0; k < len; ++k) {
      const T m = (mp[k] == inf ? pin : mp[k]) / mx;
      const T a0 = std::abs(zp[k]) * rza;
      const T a = a0 * m;
      Mp[k] = m;
      Ap[k] = a;
      s[k] = a0 * a0;
      t[k] = a * a;
    }
  });
  const T norm_z = static_cast<T>(std::sqrt(nz2));
  const T norm_a = static_cast<T>(std::sqrt(na2));
  const T thr_s = std::min((thr / za) / mx, big);
  const bool alive = norm_a > thr_s;  // zero iff ‖m⊙z‖ ≤ τw (ties → zero; NaN → screened, x = z·0)
  const bool uniform = mn == mx;
  flags = (alive ? 1 : 0) | (uniform ? 2 : 0);
  int64_t j = 0;
  T c = inf;  // screened: x = z⊙M/(M + inf) = z·0, exactly 0 where z is finite
  if (alive) {
    const T gap = std::max(norm_a - thr_s, tiny);
    const T t_over_gap = std::min(thr_s / gap, big);
    const T hi = std::max(t_over_gap, tiny);
    T lo = std::min(std::max(t_over_gap * (mn / mx), tiny), hi);
    const T lo_z = std::min(thr_s / std::max(norm_z, tiny), big);
    lo = std::min(std::max(lo, lo_z), hi);
    c = lo;
    if (x0g) {
      double x02, unused;
      sum2<T>(n, x02, unused, [&](int64_t i0, int64_t len, T* __restrict s, T* __restrict t) {
        for (int64_t k = 0; k < len; ++k) {
          s[k] = x0g[i0 + k] * x0g[i0 + k];
          t[k] = T(0);
        }
      });
      const T x0n = static_cast<T>(std::sqrt(x02));
      const T warm = std::min(thr_s * za / std::max(x0n, tiny), big);
      if (x0n > T(0)) c = std::min(std::max(warm, lo), hi);
    }
    // the safeguarded Newton update of _group_solver._newton_update, in double
    const double dtiny = std::numeric_limits<double>::min(), th = thr_s, sq_tol = std::sqrt(tol);
    double cv = c, lo_v = lo, hi_v = hi, prev = std::numeric_limits<double>::infinity();
    bool done = false, tight = false;
    int64_t extra = 0, iters = 0;
    const int64_t min_iters = std::min<int64_t>(2, max_iters);
    while (j < max_iters) {
      ++j;
      // Σ a²/(M + c)², Σ a²/(M + c)³ (one division per element)
      double p2, p3;
      const T ct = static_cast<T>(cv);
      sum2<T>(n, p2, p3, [&](int64_t i0, int64_t len, T* __restrict s, T* __restrict t) {
        const T* __restrict Mp = M + i0;
        const T* __restrict Ap = A + i0;
        for (int64_t k = 0; k < len; ++k) {
          const T r = T(1) / (Mp[k] + ct);
          const T u = Ap[k] * r;
          const T u2 = u * u;
          s[k] = u2;
          t[k] = u2 * r;
        }
      });
      const double nrm = cv * std::sqrt(p2);
      const bool below = nrm < th;
      if (below) lo_v = cv; else hi_v = cv;
      const double dn = std::max(cv * (p2 - cv * p3), 0.0) / std::max(nrm, dtiny);
      const double step = cv - (nrm - th) / std::max(dn, dtiny);
      const bool inside = step >= lo_v && step <= hi_v;
      const double c_new = inside ? step : std::sqrt(lo_v) * std::sqrt(hi_v);
      const double delta = std::abs(c_new - cv), resid = std::abs(nrm - th);
      const bool stalled = delta >= 0.5 * prev && resid <= sq_tol * th;
      const bool small = inside && (delta <= tol * cv || stalled);
      tight = resid <= tol * th || hi_v - lo_v <= tol * hi_v || (inside && delta <= tol * cv);
      done = done || tight || small;
      prev = inside ? delta : std::numeric_limits<double>::infinity();
      cv = done ? (inside ? c_new : cv) : c_new;
      if (done && j >= min_iters) {
        if (iters == 0) iters = j;  // where the eager solver's stop rule is met: the reported count
        // the eager solver keeps refining converged groups until every group of the tensor has
        // converged; refine a group stopped by the loose "stalled" rule a few more steps likewise
        if (tight || !inside || ++extra > kRefine) break;
      }
    }
    j = iters ? iters : j;
    c = uniform ? hi : static_cast<T>(cv);  // constant metric: the closed form
  }
  c_out = c;
  return j;
}

// the solution x = z⊙M/(M + c) (c = inf: z·0), z where the metric is +inf
template <typename T> inline T solution(T z, T m, T M, T c) {
  return m == std::numeric_limits<T>::infinity() ? z : z * (M / (M + c));
}

// the gather/scatter loops copy K elements (often 1 or 9) at a time: GCC would call memcpy for each
template <typename T>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
void prox_tensor(int rows, int64_t R, int64_t N, int64_t K, const T* z, const T* m, const T* x0, T* x, T thr,
                 T pin, double tol, int64_t max_iters, int64_t* iters, int64_t* flags, int nthreads) {
  const int nt = threads_for(R * N, nthreads);
  if (rows) {  // dim="out": a group per row, solved in place
#pragma omp parallel num_threads(nt)
    {
      std::vector<T> buf(static_cast<size_t>(2 * N));
      const T* M = buf.data();
#pragma omp for schedule(static)
      for (int64_t g = 0; g < R; ++g) {
        const int64_t o = g * N;
        T c;
        iters[g] = solve_group<T>(N, z + o, m + o, x0 ? x0 + o : nullptr, buf.data(), buf.data() + N, thr, pin, tol,
                                  max_iters, flags[g], c);
        // x may alias z or x0: each element is read before it is written
        for (int64_t k = 0; k < N; ++k) x[o + k] = solution(z[o + k], m[o + k], M[k], c);
      }
    }
    return;
  }
  // dim="in": tiles of B groups gathered row by row into group-major buffers; wide tiles, since every row
  // of a tile is another memory page (a TLB miss per row and tile)
  const int64_t G = N / K, size = R * K;
  const int64_t B = std::min(G, std::max<int64_t>(1, kTileBytes / (size * static_cast<int64_t>(sizeof(T)) * (x0 ? 4 : 3))));
  const int64_t tiles = (G + B - 1) / B;
#pragma omp parallel num_threads(nt)
  {
    const int64_t w = B * size;
    std::vector<T> buf(static_cast<size_t>(w) * (x0 ? 4 : 3) + size + B);
    T* zg = buf.data();
    T* mg = zg + w;
    T* M = mg + w;  // the scaled metric of every group of the tile, for the solution
    T* x0g = x0 ? M + w : nullptr;
    T* A = M + w * (x0 ? 2 : 1);
    T* c = A + size;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t g0 = t * B, nb = std::min(B, G - g0);
      // row by row: each row of the tile is read once, as one run (a memory page and a TLB entry each)
      for (int64_t r = 0; r < R; ++r) {
        const int64_t o = r * N + g0 * K;
        for (int64_t b = 0; b < nb; ++b)
          for (int64_t k = 0; k < K; ++k) {
            zg[b * size + r * K + k] = z[o + b * K + k];
            mg[b * size + r * K + k] = m[o + b * K + k];
            if (x0) x0g[b * size + r * K + k] = x0[o + b * K + k];
          }
      }
      for (int64_t b = 0; b < nb; ++b)
        iters[g0 + b] = solve_group<T>(size, zg + b * size, mg + b * size, x0 ? x0g + b * size : nullptr,
                                       M + b * size, A, thr, pin, tol, max_iters, flags[g0 + b], c[b]);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t o = r * N + g0 * K;
        for (int64_t b = 0; b < nb; ++b)
          for (int64_t k = 0; k < K; ++k) {
            const int64_t i = b * size + r * K + k;
            x[o + b * K + k] = solution(zg[i], mg[i], M[i], c[b]);
          }
      }
    }
  }
}

template <typename T> inline T fmadd(T a, T b, T c) {
#if LP_FMA
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// ProxGen's smooth step and its prox metric for the fused pass (adam_group_lasso below)
template <typename T> struct Smooth {
  T dec, coeff, b2, c2, eps, neg_step, bc2, b, floor, fill;
};

// The prox metric of one element: D = √v/b + eps as the eager step's _foreach_denoms rounds it (Shared: b is
// the smooth step's √bc2 and D its denominator den), floored as its _floored (Floor: max(D, floor), fill
// where v = 0; a NaN D stays NaN)
template <typename T, bool Shared, bool Floor> inline T metric(T root, T den, T vj, const Smooth<T>& k) {
  T d = Shared ? den : root / k.b + k.eps;
  if (Floor) d = vj == T(0) ? k.fill : (d < k.floor ? k.floor : d);
  return d;
}

// Elements [lo, hi) of one tensor: the smooth step (the element update of _l1_kernels.cpp's
// adam_prox_range: torch's fused Adam rounding, Tail: its scalar code), m and v written back; θ̂ and the
// prox metric into zo and dout (indexed from lo) with Metric, else θ̂ into p.
template <typename T, bool Tail, bool Small, bool Shared, bool Floor, bool Metric>
void smooth_range(int64_t lo, int64_t hi, T* __restrict p, const T* __restrict g, T* __restrict m,
                  T* __restrict v, const Smooth<T> k, T* __restrict zo, T* __restrict dout) {
  for (int64_t j = lo; j < hi; ++j) {
    const T gj = g[j];
    const T mj = fmadd(k.coeff, gj - m[j], Small ? m[j] : gj);
    const T vj = Tail ? fmadd(v[j], k.b2, k.c2 * gj * gj) : fmadd(k.c2 * gj, gj, v[j] * k.b2);
    m[j] = mj;
    v[j] = vj;
    const T root = std::sqrt(vj);
    const T den = root / k.bc2 + k.eps;
    const T zhat = p[j] * k.dec + k.neg_step * mj / den;
    if (Metric) {
      zo[j - lo] = zhat;
      dout[j - lo] = metric<T, Shared, Floor>(root, den, vj, k);
    } else {
      p[j] = zhat;
    }
  }
}

// the prox metric of len elements from their (updated) second moments
template <typename T, bool Shared, bool Floor>
void metric_run(int64_t len, const T* __restrict v, T* __restrict out, const Smooth<T> k) {
  for (int64_t j = 0; j < len; ++j) {
    const T root = std::sqrt(v[j]);
    out[j] = metric<T, Shared, Floor>(root, root / k.bc2 + k.eps, v[j], k);
  }
}

// dim="in": the rows of a tile are short runs a page apart, which the hardware prefetcher does not
// follow; each row's run is fetched kAhead rows early
constexpr int64_t kAhead = 4;
constexpr int64_t kSmoothChunk = 1 << 14;  // elements per OpenMP work item of the dim="in" step

template <typename T> inline void prefetch_run(int64_t o, int64_t len, std::initializer_list<const T*> arrays) {
  for (const T* a : arrays)
    for (int64_t i = 0; i < len; i += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(a + o + i);
}

// One fused step of a tensor viewed as [R, N] with groups of K columns (dim="out": R = 1, K = the row
// length), per tile of B adjacent groups solved by solve_group in per-thread buffers (group-major θ̂ and
// floored metric). dim="out": the tile is one contiguous run that goes through the smooth step straight
// into the buffers, and its solution is written back: p, g, m, v are read once and p, m, v written once.
// dim="in": the smooth step runs first as a contiguous pass (θ̂ into p), then each tile reads θ̂ and v
// (the metric is recomputed from v, the same bits) row by row, one contiguous run per row, and writes
// its solution back; reading four arrays in short strided runs costs more than this extra contiguous
// pass. A group whose metric has a NaN (a NaN second moment, only without the finite check) is screened
// by solve_group, as in the eager prox: NaN where θ̂ is NaN, zero elsewhere in it. Each group's result
// depends on its own values only, so the tiling (chosen per thread count) changes no bit.
template <typename T>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
void adam_group_tensor(int64_t R, int64_t N, int64_t K, T* p, const T* g, T* m, T* v, const double* scal,
                       const Smooth<T> k0, bool small, double thr, double pin, double tol, int64_t max_iters,
                       int64_t vec, int64_t* iters, int64_t* flags, int nthreads) {
  const int64_t numel = R * N, G = N / K, size = R * K;
  const int64_t bulk = numel - numel % std::max<int64_t>(vec, 1);
  Smooth<T> k = k0;
  k.neg_step = T(-scal[0]);
  k.bc2 = T(scal[1]);
  k.b = T(scal[2]);
  const bool shared = k.bc2 == k.b, floor = k.floor > T(0);
  const int nt = threads_for(numel, nthreads);
  // tiles of about kTileBytes of buffers, at least 4 per thread where the groups allow
  int64_t B = std::max<int64_t>(1, kTileBytes / (size * static_cast<int64_t>(sizeof(T)) * 3));
  B = std::min(B, std::max<int64_t>(1, (G + 4 * nt - 1) / (4 * nt)));
  const int64_t tiles = (G + B - 1) / B;
  // the template flags of the metric (Shared, Floor), then those of the step
  auto with_metric = [&](auto f) {
    auto with_fl = [&](auto sh) { floor ? f(sh, std::true_type{}) : f(sh, std::false_type{}); };
    shared ? with_fl(std::true_type{}) : with_fl(std::false_type{});
  };
  auto part = [&](int64_t lo, int64_t hi, T* zo, T* dout, auto tail, auto met) {
    with_metric([&](auto sh, auto fl) {
      auto go = [&](auto sm) {
        smooth_range<T, decltype(tail)::value, decltype(sm)::value, decltype(sh)::value, decltype(fl)::value,
                     decltype(met)::value>(lo, hi, p, g, m, v, k, zo, dout);
      };
      small ? go(std::true_type{}) : go(std::false_type{});
    });
  };
  // the last numel % vec elements of the tensor round as torch's scalar code
  auto smooth = [&](int64_t lo, int64_t hi, T* zo, T* dout, auto met) {
    const int64_t mid = std::min(std::max(lo, bulk), hi);
    if (mid > lo) part(lo, mid, zo, dout, std::false_type{}, met);
    if (hi > mid) part(mid, hi, zo + (mid - lo), dout + (mid - lo), std::true_type{}, met);
  };
  if (R > 1) {  // dim="in": the step first, contiguous (θ̂ into p), then the tiles read θ̂ and v
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t a = 0; a < numel; a += kSmoothChunk)
      smooth(a, std::min(a + kSmoothChunk, numel), nullptr, nullptr, std::false_type{});
  }
  const T tthr = static_cast<T>(thr), tpin = static_cast<T>(pin);
#pragma omp parallel num_threads(nt)
  {
    const int64_t w = B * size;
    std::vector<T> buf(static_cast<size_t>(w) * 3 + size + B + (R > 1 ? B * K : 0));
    T* zg = buf.data();
    T* mg = zg + w;
    T* M = mg + w;  // the scaled metric of every group of the tile, for the solution
    T* A = M + w;
    T* c = A + size;
    T* dr = c + B;  // one row's metric of the tile (R > 1), before it is scattered group-major
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t g0 = t * B, nb = std::min(B, G - g0), run = nb * K;
      if (R == 1) {  // dim="out": the tile is one run, already group-major
        smooth(g0 * K, g0 * K + run, zg, mg, std::true_type{});
      } else {
        for (int64_t r = 0; r < R; ++r) {
          const int64_t o = r * N + g0 * K;
          if (r + kAhead < R) prefetch_run(o + kAhead * N, run, {p, v});
          with_metric([&](auto sh, auto fl) {
            metric_run<T, decltype(sh)::value, decltype(fl)::value>(run, v + o, dr, k);
          });
          for (int64_t b = 0; b < nb; ++b)
            for (int64_t q = 0; q < K; ++q) {
              zg[b * size + r * K + q] = p[o + b * K + q];
              mg[b * size + r * K + q] = dr[b * K + q];
            }
        }
      }
      for (int64_t b = 0; b < nb; ++b) {
        T* __restrict zb = zg + b * size;
        const T* __restrict mb = mg + b * size;
        const T* __restrict Mb = M + b * size;
        iters[g0 + b] = solve_group<T>(size, zb, mb, nullptr, M + b * size, A, tthr, tpin, tol, max_iters,
                                       flags[g0 + b], c[b]);
        const T cb = c[b];
        for (int64_t i = 0; i < size; ++i) zb[i] = solution(zb[i], mb[i], Mb[i], cb);  // group-major, in place
      }
      for (int64_t r = 0; r < R; ++r) {
        T* __restrict pr = p + r * N + g0 * K;
        if (r + kAhead < R) prefetch_run(r * N + g0 * K + kAhead * N, run, {p});
        for (int64_t b = 0; b < nb; ++b)
          for (int64_t q = 0; q < K; ++q) pr[b * K + q] = zg[b * size + r * K + q];
      }
    }
  }
}

}  // namespace

// layout: per tensor (rows, R, N, K, offset of its first group in iters/flags); thr: per tensor τ·w_g
#define LP_EXPORT(T, SUF)                                                                                     \
  extern "C" void lp_group_lasso_prox_##SUF(int64_t n, const int64_t*, const int64_t* layout,               \
                                            const T* const* z, const T* const* m, const T* const* x0,       \
                                            T* const* x, const double* thr, double pin, double tol,         \
                                            int64_t max_iters, int64_t* iters, int64_t* flags, int nthreads) { \
    for (int64_t i = 0; i < n; ++i) {                                                                         \
      const int64_t* l = layout + 5 * i;                                                                      \
      prox_tensor<T>(static_cast<int>(l[0]), l[1], l[2], l[3], z[i], m[i], x0 ? x0[i] : nullptr, x[i],        \
                     static_cast<T>(thr[i]), static_cast<T>(pin), tol, max_iters, iters + l[4], flags + l[4], \
                     nthreads);                                                                               \
    }                                                                                                         \
  }

LP_EXPORT(float, f32)
LP_EXPORT(double, f64)

// scal per tensor: lr/bc1 and √bc2 of the smooth step (torch's Adam), b (the metric's √bc2) and τ·w_g
#define LP_EXPORT_FUSED(T, SUF)                                                                                \
  extern "C" void lp_adam_group_lasso_##SUF(                                                                   \
      int64_t n, const int64_t*, const int64_t* layout, T* const* p, const T* const* g, T* const* m,           \
      T* const* v, const double* scal, double decay, double w1, double beta2, double c2, double eps,         \
      double floor, double fill, double pin, double tol, int64_t max_iters, int64_t vec, int64_t* iters,      \
      int64_t* flags, int nthreads) {                                                                          \
    const T W = T(w1);                                                                                         \
    const bool small = std::abs(W) < T(0.5);                                                                   \
    const Smooth<T> k{T(decay), small ? W : W - T(1), T(beta2), T(c2), T(eps), T(0), T(1), T(1), T(floor),  \
                      T(fill)};                                                                                \
    for (int64_t i = 0; i < n; ++i) {                                                                          \
      const int64_t* l = layout + 5 * i;                                                                       \
      const bool rows = l[0] != 0;                                                                             \
      adam_group_tensor<T>(rows ? 1 : l[1], rows ? l[1] * l[2] : l[2], rows ? l[2] : l[3], p[i], g[i], m[i],  \
                           v[i], scal + 4 * i, k, small, scal[4 * i + 3], pin, tol, max_iters, vec,             \
                           iters + l[4], flags + l[4], nthreads);                                              \
    }                                                                                                          \
  }

LP_EXPORT_FUSED(float, f32)
LP_EXPORT_FUSED(double, f64)
