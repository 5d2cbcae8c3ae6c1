// Helpers shared by the native kernel sources of lightning_prox.optim (included by them; the build cache
// of lightning_prox.optim._native keys every library by its source and the local headers it includes, so
// a change here rebuilds them all).
#pragma once

#include <cmath>

// a·b + c rounded as torch's vectorized CPU kernels do: fused where torch 2.14's x86 build fuses (LP_FMA)
template <typename T> inline T lp_fmadd(T a, T b, T c) {
#if LP_FMA
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// torch.nn.functional.softshrink as its vectorized CPU kernel rounds: |a| ≤ λ → +0, NaN stays NaN; its
// scalar code (Signed) gives a·0 there (−0 for a < 0)
template <typename T, bool Signed = false> inline T lp_softshrink(T a, T lam) {
  return a > lam ? a - lam : (a < -lam ? a + lam : (Signed ? a * T(0) : (a == a ? T(0) : a)));
}
