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
constexpr int kLanes = 8;             // independent partial sums (vectorizable without reassociation)
constexpr int64_t kRefine = 10;       // Newton steps past a loose ("stalled") stop, see solve_group

inline int threads_for(int64_t n, int nthreads) { return n < kSerial ? 1 : std::max(nthreads, 1); }

inline double lanes_sum(const double* p) {
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

// Σ a²/(M + c)², Σ a²/(M + c)³ with the eager rounding of each term: t = M + c, u = a/t, u², u²/t
template <typename T> void secular(int64_t n, const T* __restrict M, const T* __restrict A, T c, double& p2,
                                   double& p3) {
  double s2[kLanes] = {}, s3[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int q = 0; q < kLanes; ++q) {
      const T t = M[i + q] + c;
      T u = A[i + q] / t;
      u = u * u;
      s2[q] += static_cast<double>(u);
      s3[q] += static_cast<double>(u / t);
    }
  for (; i < n; ++i) {
    const T t = M[i] + c;
    T u = A[i] / t;
    u = u * u;
    s2[i % kLanes] += static_cast<double>(u);
    s3[i % kLanes] += static_cast<double>(u / t);
  }
  p2 = lanes_sum(s2);
  p3 = lanes_sum(s3);
}

// One group: z, m (and x0) gathered into zg, mg (x0g); returns the Newton iterations; writes xg, flags
// (bit 0: alive, bit 1: constant metric). M, A: scratch of n values. xg may alias zg or x0g (the prox
// written over its input): each is read before x is written, element by element.
template <typename T>
int64_t solve_group(int64_t n, const T* zg, const T* mg, const T* x0g, T* xg,
                    T* __restrict M, T* __restrict A, T thr, T pin, double tol, int64_t max_iters,
                    int64_t& flags) {
  constexpr T tiny = std::numeric_limits<T>::min(), big = std::numeric_limits<T>::max();
  constexpr T inf = std::numeric_limits<T>::infinity();
  T mx = -inf, mn = inf, za = T(0);
  for (int64_t i = 0; i < n; ++i) {
    const T m = mg[i] == inf ? pin : mg[i];
    mx = std::max(mx, m);
    mn = std::min(mn, m);
    za = std::max(za, std::abs(zg[i]));
  }
  mx = std::max(mx, tiny);
  za = std::max(za, tiny);
  const T rza = T(1) / za;
  double nz[kLanes] = {}, na[kLanes] = {};
  for (int64_t i = 0; i < n; ++i) {
    const T m = (mg[i] == inf ? pin : mg[i]) / mx;  // scaled metric, group max 1
    const T a0 = std::abs(zg[i]) * rza;
    const T a = a0 * m;  // |a| = (|z|/za)⊙(m/mx) ≤ 1
    M[i] = m;
    A[i] = a;
    nz[i % kLanes] += static_cast<double>(a0 * a0);
    na[i % kLanes] += static_cast<double>(a * a);
  }
  const T norm_z = static_cast<T>(std::sqrt(lanes_sum(nz)));
  const T norm_a = static_cast<T>(std::sqrt(lanes_sum(na)));
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
      double s[kLanes] = {};
      for (int64_t i = 0; i < n; ++i) s[i % kLanes] += static_cast<double>(x0g[i] * x0g[i]);
      const T x0n = static_cast<T>(std::sqrt(lanes_sum(s)));
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
      double p2, p3;
      secular<T>(n, M, A, static_cast<T>(cv), p2, p3);
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
  for (int64_t i = 0; i < n; ++i) xg[i] = mg[i] == inf ? zg[i] : zg[i] * (M[i] / (M[i] + c));
  return j;
}

template <typename T>
void prox_tensor(int rows, int64_t R, int64_t N, int64_t K, const T* z, const T* m, const T* x0, T* x, T thr,
                 T pin, double tol, int64_t max_iters, int64_t* iters, int64_t* flags, int nthreads) {
  const int64_t G = rows ? R : N / K, size = R * N / G;
  const int nt = threads_for(R * N, nthreads);
#pragma omp parallel num_threads(nt)
  {
    // dim="out" groups are contiguous rows, solved in place; dim="in" groups are gathered
    std::vector<T> buf(static_cast<size_t>(size) * (rows ? 2 : (x0 ? 6 : 5)));
    T* M = buf.data();
    T* A = M + size;
    T* zg = A + size;
    T* mg = zg + size;
    T* xg = mg + size;
    T* x0g = x0 ? xg + size : nullptr;
#pragma omp for schedule(static)
    for (int64_t g = 0; g < G; ++g) {
      if (rows) {
        const int64_t o = g * N;
        iters[g] = solve_group<T>(N, z + o, m + o, x0 ? x0 + o : nullptr, x + o, M, A, thr, pin, tol,
                                  max_iters, flags[g]);
        continue;
      }
      for (int64_t r = 0; r < R; ++r) {
        const int64_t o = r * N + g * K;
        std::memcpy(zg + r * K, z + o, sizeof(T) * K);
        std::memcpy(mg + r * K, m + o, sizeof(T) * K);
        if (x0) std::memcpy(x0g + r * K, x0 + o, sizeof(T) * K);
      }
      iters[g] = solve_group<T>(size, zg, mg, x0g, xg, M, A, thr, pin, tol, max_iters, flags[g]);
      for (int64_t r = 0; r < R; ++r) std::memcpy(x + r * N + g * K, xg + r * K, sizeof(T) * K);
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
