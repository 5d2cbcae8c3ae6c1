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
// solve, without a metric buffer: dim="out" tile of adjacent groups by tile, dim="in" in row layout, every
// group of a block of columns in lockstep (solve_rows; see adam_group_tensor).
//
// Layouts of a tensor viewed as [R, N] (row-major): "rows" (dim="out": group r = row r) and "cols"
// (dim="in": group g = the columns g·K … g·K + K − 1 of every row). Groups are split over OpenMP threads
// with a static schedule: a given thread count gives the same bits every run (and a group's result does
// not depend on the thread count at all).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kSerial = 1 << 15;  // below this many elements one thread runs the tensor
constexpr int kL = 8;                 // independent lanes: the loops vectorize without reassociation
constexpr int64_t kChunk = 128;       // elements summed in T lanes before a flush into double
constexpr int64_t kRefine = 10;       // Newton steps past a loose ("stalled") stop, see solve_group
constexpr int64_t kTileBytes = 1 << 19;  // a tile of gathered groups (z, m, M, x0) stays in L2

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

// A group's scaling, screening and Newton bracket (the steps of solve_group between its passes), shared by
// solve_group and the row-layout solve (adam_group_rows)
template <typename T> struct Scaled {
  static constexpr T tiny = std::numeric_limits<T>::min(), big = std::numeric_limits<T>::max();
  T mx, mn, za, rza, thr_s, lo = 0, hi = 0, c = std::numeric_limits<T>::infinity();
  bool alive = false, uniform = false;
  // from pass 1: the group max/min of the metric and max |z|
  Scaled(T mx0, T mn0, T za0, T thr)
      : mx(std::max(mx0, tiny)), mn(mn0), za(std::max(za0, tiny)), rza(T(1) / za),
        thr_s(std::min((thr / za) / mx, big)), uniform(mn == mx) {}
  int64_t flags() const { return (alive ? 1 : 0) | (uniform ? 2 : 0); }
  // from pass 2: ‖z‖² and ‖a‖² (scaled); screened: c = inf, x = z⊙M/(M + inf) = z·0, exactly 0 where z is
  // finite
  void screen(double nz2, double na2) {
    const T norm_z = static_cast<T>(std::sqrt(nz2));
    const T norm_a = static_cast<T>(std::sqrt(na2));
    alive = norm_a > thr_s;  // zero iff ‖m⊙z‖ ≤ τw (ties → zero; NaN → screened, x = z·0)
    if (!alive) return;
    const T gap = std::max(norm_a - thr_s, tiny);
    const T t_over_gap = std::min(thr_s / gap, big);
    hi = std::max(t_over_gap, tiny);
    lo = std::min(std::max(t_over_gap * (mn / mx), tiny), hi);
    const T lo_z = std::min(thr_s / std::max(norm_z, tiny), big);
    lo = std::min(std::max(lo, lo_z), hi);
    c = lo;
  }
};

// the safeguarded Newton update of _group_solver._newton_update, in double, on the sums
// p2 = Σ a²/(M + c)², p3 = Σ a²/(M + c)³ at c = T(cv)
struct Newton {
  double cv, lo_v, hi_v, th, tol, sq_tol, prev = std::numeric_limits<double>::infinity();
  bool done = false;
  int64_t j = 0, extra = 0, iters = 0, max_iters, min_iters;
  Newton(double c, double lo, double hi, double th_, double tol_, int64_t max_iters_)
      : cv(c), lo_v(lo), hi_v(hi), th(th_), tol(tol_), sq_tol(std::sqrt(tol_)), max_iters(max_iters_),
        min_iters(std::min<int64_t>(2, max_iters_)) {}
  bool more() const { return j < max_iters; }
  // one step; false once the group stops iterating
  bool step(double p2, double p3) {
    constexpr double dtiny = std::numeric_limits<double>::min();
    ++j;
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
    const bool tight = resid <= tol * th || hi_v - lo_v <= tol * hi_v || (inside && delta <= tol * cv);
    done = done || tight || small;
    prev = inside ? delta : std::numeric_limits<double>::infinity();
    cv = done ? (inside ? c_new : cv) : c_new;
    if (done && j >= min_iters) {
      if (iters == 0) iters = j;  // where the eager solver's stop rule is met: the reported count
      // the eager solver keeps refining converged groups until every group of the tensor has
      // converged; refine a group stopped by the loose "stalled" rule a few more steps likewise
      if (tight || !inside || ++extra > kRefine) return false;
    }
    return more();
  }
  int64_t count() const { return iters ? iters : j; }
};

// One group: z, m (and x0) of n values (gathered for dim="in"); returns the Newton iterations where the
// eager stop rule is met, and writes flags (bit 0: alive, bit 1: constant metric), the scaled metric M
// (n values, kept for the solution, see solution()) and c_out. A: scratch of n values.
template <typename T>
int64_t solve_group(int64_t n, const T* zg, const T* mg, const T* x0g, T* __restrict M, T* __restrict A, T thr,
                    T pin, double tol, int64_t max_iters, int64_t& flags, T& c_out) {
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
  Scaled<T> s(*std::max_element(mxl, mxl + kL), *std::min_element(mnl, mnl + kL),
              *std::max_element(zal, zal + kL), thr);
  // pass 2: the scaled metric M = m/mx and |a| = (|z|/za)⊙M, ‖z‖ and ‖a‖ (scaled)
  double nz2, na2;
  sum2<T>(n, nz2, na2, [&](int64_t i0, int64_t len, T* __restrict t1, T* __restrict t2) {
    const T* zp = zg + i0;
    const T* mp = mg + i0;
    T* __restrict Mp = M + i0;
    T* __restrict Ap = A + i0;
    for (int64_t k = 0; k < len; ++k) {
      const T m = (mp[k] == inf ? pin : mp[k]) / s.mx;
      const T a0 = std::abs(zp[k]) * s.rza;
      const T a = a0 * m;
      Mp[k] = m;
      Ap[k] = a;
      t1[k] = a0 * a0;
      t2[k] = a * a;
    }
  });
  s.screen(nz2, na2);
  flags = s.flags();
  int64_t j = 0;
  T c = s.c;
  if (s.alive) {
    if (x0g) {
      double x02, unused;
      sum2<T>(n, x02, unused, [&](int64_t i0, int64_t len, T* __restrict t1, T* __restrict t2) {
        for (int64_t k = 0; k < len; ++k) {
          t1[k] = x0g[i0 + k] * x0g[i0 + k];
          t2[k] = T(0);
        }
      });
      const T x0n = static_cast<T>(std::sqrt(x02));
      const T warm = std::min(s.thr_s * s.za / std::max(x0n, Scaled<T>::tiny), Scaled<T>::big);
      if (x0n > T(0)) c = std::min(std::max(warm, s.lo), s.hi);
    }
    Newton nw(c, s.lo, s.hi, s.thr_s, tol, max_iters);
    for (bool go = nw.more(); go;) {
      // Σ a²/(M + c)², Σ a²/(M + c)³ (one division per element)
      double p2, p3;
      const T ct = static_cast<T>(nw.cv);
      sum2<T>(n, p2, p3, [&](int64_t i0, int64_t len, T* __restrict t1, T* __restrict t2) {
        const T* __restrict Mp = M + i0;
        const T* __restrict Ap = A + i0;
        for (int64_t k = 0; k < len; ++k) {
          const T r = T(1) / (Mp[k] + ct);
          const T u = Ap[k] * r;
          const T u2 = u * u;
          t1[k] = u2;
          t2[k] = u2 * r;
        }
      });
      go = nw.step(p2, p3);
    }
    j = nw.count();
    c = s.uniform ? s.hi : static_cast<T>(nw.cv);  // constant metric: the closed form
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

// dim="in": the columns of a tensor are solved in blocks of about this many bytes of θ̂ and v: wide enough
// for long row runs (a memory page per row and pass), small enough to stay in cache between the passes of
// solve_rows (0.25-1 MB blocks measured slower on ResNet-18's tensors)
constexpr int64_t kBlockBytes = 1 << 21;

// Row-layout lanes of sum2 for groups of K adjacent columns: element i = r·K + q of group b (row r of the
// group's column block) goes to lane i mod kL of the group, flushed into double every kChunk elements,
// exactly as sum2 adds the group's terms in group-major order
template <typename T> struct RowLanes {
  int64_t ng, n;
  std::vector<T> a;       // [2][kL][ng]: the T lanes of both sums
  std::vector<double> d;  // [2][kL][ng]: their double lanes
  RowLanes(int64_t ng_, int64_t n_) : ng(ng_), n(n_), a(2 * kL * ng_), d(2 * kL * ng_) {}
  void flush(int64_t gb, int64_t ge) {
    for (int64_t l = 0; l < 2 * kL; ++l)
      for (int64_t b = gb; b < ge; ++b) {
        d[l * ng + b] += static_cast<double>(a[l * ng + b]);
        a[l * ng + b] = T(0);
      }
  }
  // the two sums of groups gb … ge − 1 over R rows: fill(r, t1, t2) writes the terms of row r's run of
  // those groups (t1, t2 indexed from the run of group 0)
  template <typename F>
  void sums(int64_t R, int64_t K, int64_t gb, int64_t ge, T* t1, T* t2, double* out1, double* out2, F fill) {
    for (int64_t l = 0; l < 2 * kL; ++l)
      for (int64_t b = gb; b < ge; ++b) {
        a[l * ng + b] = T(0);
        d[l * ng + b] = 0.0;
      }
    for (int64_t r = 0; r < R; ++r) {
      fill(r, t1, t2);
      for (int64_t q = 0; q < K; ++q) {
        const int64_t i = r * K + q;
        T* __restrict a1 = a.data() + (i % kL) * ng;
        T* __restrict a2 = a1 + kL * ng;
        for (int64_t b = gb; b < ge; ++b) {
          a1[b] += t1[b * K + q];
          a2[b] += t2[b * K + q];
        }
        if ((i + 1) % kChunk == 0) flush(gb, ge);
      }
    }
    if (n % kChunk) flush(gb, ge);
    for (int64_t b = gb; b < ge; ++b) {
      double l1[kL], l2[kL];
      for (int q = 0; q < kL; ++q) {
        l1[q] = d[q * ng + b];
        l2[q] = d[(kL + q) * ng + b];
      }
      out1[b] = lanes_sum(l1);
      out2[b] = lanes_sum(l2);
    }
  }
};

// dim="in": groups b0 … b1 − 1 of a tensor viewed as [R, N] (group b: the columns b·K … b·K + K − 1),
// solved as solve_group solves each of them, in lockstep, streaming whole row runs: pass 1 (step(o, len,
// zo, dm): the smooth step of a row's run, θ̂ into p and the metric into dm; the metric range and max
// |θ̂|), pass 2 (the scaled norms: screening, bracket, start), one pass per Newton iteration over the span
// of the groups still iterating (each group stops where solve_group stops it), and one that writes the
// solution. The metric is recomputed from v in every later pass (metric_run: the same bits); the
// per-group sums are sum2's, term for term, so each group's result is that of solve_group on its
// gathered values, whatever the split of the groups over threads and blocks.
template <typename T, bool Shared, bool Floor, typename Step>
void solve_rows(int64_t R, int64_t N, int64_t K, int64_t b0, int64_t b1, T* p, const T* v, const Smooth<T>& k,
                T thr, T pin, double tol, int64_t max_iters, int64_t* iters, int64_t* flags, Step step) {
  constexpr T inf = std::numeric_limits<T>::infinity();
  const int64_t ng = b1 - b0, run = ng * K;
  if (ng <= 0) return;
  // row-sized buffers: a row's metric and terms; per column, its group's scaling (cmx: max metric, cr:
  // 1/max|z|) and c, so that every per-row loop is one contiguous, vectorizable run
  std::vector<T> dm(run), t1(run), t2(run), cmx(run, -inf), cmn(run, inf), cr(run, T(0)), cc(run);
  std::vector<double> s1(ng), s2(ng);
  RowLanes<T> lanes(ng, R * K);
  auto row = [&](int64_t r, int64_t lo, int64_t hi) {  // the metric of a row's columns lo … hi − 1
    metric_run<T, Shared, Floor>(hi - lo, v + r * N + b0 * K + lo, dm.data() + lo, k);
    return p + r * N + b0 * K;
  };
  auto pinned = [&](int64_t i) { return dm[i] == inf ? pin : dm[i]; };
  for (int64_t r = 0; r < R; ++r) {  // pass 1, per column (max and min select exactly, in any order)
    const T* z = p + r * N + b0 * K;
    step(r * N + b0 * K, run, t1.data(), dm.data());
    for (int64_t i = 0; i < run; ++i) {
      const T m = pinned(i), a = std::abs(z[i]);
      cmx[i] = cmx[i] < m ? m : cmx[i];
      cmn[i] = cmn[i] > m ? m : cmn[i];
      cr[i] = cr[i] < a ? a : cr[i];
    }
  }
  std::vector<Scaled<T>> S;
  S.reserve(ng);
  for (int64_t b = 0; b < ng; ++b) {
    T mx = -inf, mn = inf, za = T(0);
    for (int64_t i = b * K; i < (b + 1) * K; ++i) {
      mx = mx < cmx[i] ? cmx[i] : mx;
      mn = mn > cmn[i] ? cmn[i] : mn;
      za = za < cr[i] ? cr[i] : za;
    }
    S.emplace_back(mx, mn, za, thr);
    std::fill(cmx.begin() + b * K, cmx.begin() + (b + 1) * K, S[b].mx);
    std::fill(cr.begin() + b * K, cr.begin() + (b + 1) * K, S[b].rza);
  }
  lanes.sums(R, K, 0, ng, t1.data(), t2.data(), s1.data(), s2.data(), [&](int64_t r, T* u1, T* u2) {  // pass 2
    const T* z = row(r, 0, run);
    for (int64_t i = 0; i < run; ++i) {
      const T m = pinned(i) / cmx[i];
      const T a0 = std::abs(z[i]) * cr[i];
      const T a = a0 * m;
      u1[i] = a0 * a0;
      u2[i] = a * a;
    }
  });
  std::vector<Newton> nw;
  nw.reserve(ng);
  std::vector<char> active(ng);
  for (int64_t b = 0; b < ng; ++b) {
    S[b].screen(s1[b], s2[b]);
    flags[b0 + b] = S[b].flags();
    nw.emplace_back(S[b].c, S[b].lo, S[b].hi, S[b].thr_s, tol, max_iters);
    active[b] = S[b].alive && nw[b].more();
  }
  for (;;) {  // the Newton iterations, over the span of the groups still iterating
    int64_t gb = 0, ge = ng;
    while (gb < ng && !active[gb]) ++gb;
    while (ge > gb && !active[ge - 1]) --ge;
    if (gb == ge) break;
    for (int64_t b = gb; b < ge; ++b) std::fill(cc.begin() + b * K, cc.begin() + (b + 1) * K, static_cast<T>(nw[b].cv));
    lanes.sums(R, K, gb, ge, t1.data(), t2.data(), s1.data(), s2.data(), [&](int64_t r, T* u1, T* u2) {
      const T* z = row(r, gb * K, ge * K);
      for (int64_t i = gb * K; i < ge * K; ++i) {
        const T M = pinned(i) / cmx[i];
        const T A = std::abs(z[i]) * cr[i] * M;
        const T rc = T(1) / (M + cc[i]);
        const T u = A * rc;
        const T uu = u * u;
        u1[i] = uu;
        u2[i] = uu * rc;
      }
    });
    for (int64_t b = gb; b < ge; ++b)
      if (active[b]) active[b] = nw[b].step(s1[b], s2[b]);
  }
  for (int64_t b = 0; b < ng; ++b) {
    iters[b0 + b] = S[b].alive ? nw[b].count() : 0;
    // screened: c = inf; constant metric: the closed form
    const T c = !S[b].alive ? S[b].c : S[b].uniform ? S[b].hi : static_cast<T>(nw[b].cv);
    std::fill(cc.begin() + b * K, cc.begin() + (b + 1) * K, c);
  }
  for (int64_t r = 0; r < R; ++r) {  // the solution, in place
    T* z = p + r * N + b0 * K;
    row(r, 0, run);
    for (int64_t i = 0; i < run; ++i) z[i] = solution(z[i], dm[i], pinned(i) / cmx[i], cc[i]);
  }
}

// One fused step of a tensor viewed as [R, N] with groups of K columns (dim="out": R = 1, K = the row
// length). dim="out": per tile of B adjacent groups, one contiguous run that goes through the smooth step
// straight into per-thread buffers (group-major θ̂ and floored metric), solved there by solve_group and
// written back: p, g, m, v are read once and p, m, v written once. dim="in": each thread owns a
// contiguous range of groups (columns), in blocks of about kBlockBytes of θ̂ and v; solve_rows runs the
// smooth step of a block row by row (θ̂ into p) with its first pass, then its other passes over the
// block's rows, whole contiguous row runs throughout (gathering a group's column block reads a short run
// a memory page apart per row). A group whose metric has a NaN (a NaN second moment, only without the
// finite check) is screened, as in the eager prox: NaN where θ̂ is NaN, zero elsewhere in it. Each group's
// result depends on its own values only, so the tiling and blocking (chosen per thread count) change no
// bit.
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
  const T tthr = static_cast<T>(thr), tpin = static_cast<T>(pin);
  if (R > 1) {  // dim="in": the step first, contiguous (θ̂ into p), then solve_rows on contiguous column ranges
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int s = 0; s < nt; ++s) {
      const int64_t e = (s + 1) * G / nt;
      const int64_t nb = std::max<int64_t>(1, kBlockBytes / (2 * size * static_cast<int64_t>(sizeof(T))));
      // the smooth step of a row's run of the block: θ̂ into p (through zo) and the metric into dm
      auto step = [&](int64_t o, int64_t len, T* zo, T* dm) {
        smooth(o, o + len, zo, dm, std::true_type{});
        std::memcpy(p + o, zo, static_cast<size_t>(len) * sizeof(T));
      };
      for (int64_t b0 = s * G / nt; b0 < e; b0 += nb)
        with_metric([&](auto sh, auto fl) {
          solve_rows<T, decltype(sh)::value, decltype(fl)::value>(R, N, K, b0, std::min(b0 + nb, e), p, v, k,
                                                                  tthr, tpin, tol, max_iters, iters, flags, step);
        });
    }
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    const int64_t w = B * size;
    std::vector<T> buf(static_cast<size_t>(w) * 3 + size + B);
    T* zg = buf.data();
    T* mg = zg + w;
    T* M = mg + w;  // the scaled metric of every group of the tile, for the solution
    T* A = M + w;
    T* c = A + size;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t g0 = t * B, nb = std::min(B, G - g0), run = nb * K;
      smooth(g0 * K, g0 * K + run, zg, mg, std::true_type{});  // the tile is one run, already group-major
      for (int64_t b = 0; b < nb; ++b) {
        T* __restrict zb = zg + b * size;
        const T* __restrict mb = mg + b * size;
        const T* __restrict Mb = M + b * size;
        iters[g0 + b] = solve_group<T>(size, zb, mb, nullptr, M + b * size, A, tthr, tpin, tol, max_iters,
                                       flags[g0 + b], c[b]);
        const T cb = c[b];
        for (int64_t i = 0; i < size; ++i) zb[i] = solution(zb[i], mb[i], Mb[i], cb);
      }
      std::memcpy(p + g0 * K, zg, static_cast<size_t>(run) * sizeof(T));
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
