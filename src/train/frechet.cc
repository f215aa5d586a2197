// Fréchet distance between Gaussians: statistics, LAPACK eigendecomposition, PSD square roots.
#include "train/frechet.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "core/error.h"

#ifdef STIPPLE_WITH_FAST_CPU
// LAPACK's symmetric eigensolver (divide and conquer), from the OpenBLAS the library links. The
// trailing arguments are the hidden lengths gfortran passes for the two character arguments.
extern "C" void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda,
                        double* w, double* work, const int* lwork, int* iwork, const int* liwork,
                        int* info, size_t jobz_len, size_t uplo_len);
#endif

namespace stipple::train {

GaussianStats gaussian_stats(const Tensor& features) {
  STIPPLE_CHECK(features.dim() == 2 && features.size(0) >= 2,
                "gaussian_stats: expects features [N, D] with N >= 2, got ", features.describe());
  const int64_t n = features.size(0), d = features.size(1);
  const std::vector<double> x = features.contiguous().to_vector_f64();  // [N, D]
  GaussianStats s;
  s.dim = d;
  s.count = n;
  s.mean.assign(d, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) s.mean[j] += x[i * d + j];
  for (double& m : s.mean) m /= static_cast<double>(n);
  // Centred, then X^T X / (n - 1), accumulated over the lower triangle and mirrored.
  std::vector<double> c(x.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) c[i * d + j] = x[i * d + j] - s.mean[j];
  s.cov.assign(d * d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const double* row = c.data() + i * d;
    for (int64_t a = 0; a < d; ++a) {
      const double ra = row[a];
      double* out = s.cov.data() + a * d;
      for (int64_t b = 0; b <= a; ++b) out[b] += ra * row[b];
    }
  }
  const double inv = 1.0 / static_cast<double>(n - 1);
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = 0; b <= a; ++b) {
      s.cov[a * d + b] *= inv;
      s.cov[b * d + a] = s.cov[a * d + b];
    }
  return s;
}

namespace {

void check_square(const std::vector<double>& a, int64_t n) {
  STIPPLE_CHECK(n >= 1 && static_cast<int64_t>(a.size()) == n * n, "symmetric_eigen: expected ", n,
                "x", n, " = ", n * n, " values, got ", a.size());
}

// Eigenpairs sorted by ascending value (the vectors' columns moved with them).
SymmetricEigen sorted(std::vector<double> values, const std::vector<double>& vectors, int64_t n) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t x, int64_t y) { return values[x] < values[y]; });
  SymmetricEigen e;
  e.values.resize(n);
  e.vectors.assign(n * n, 0.0);
  for (int64_t j = 0; j < n; ++j) {
    e.values[j] = values[order[j]];
    for (int64_t i = 0; i < n; ++i) e.vectors[i * n + j] = vectors[i * n + order[j]];
  }
  return e;
}

}  // namespace

SymmetricEigen symmetric_eigen_reference(const std::vector<double>& a, int64_t n) {
  check_square(a, n);
  std::vector<double> m = a, v(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) v[i * n + i] = 1.0;
  double total = 0;
  for (double x : m) {
    STIPPLE_CHECK(std::isfinite(x), "symmetric_eigen: the matrix holds NaN or Inf");
    total += x * x;
  }
  auto off = [&] {
    double s = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j)
        if (i != j) s += m[i * n + j] * m[i * n + j];
    return s;
  };
  for (int sweep = 0; sweep < 100 && off() > 1e-30 * total; ++sweep) {
    for (int64_t p = 0; p < n - 1; ++p)
      for (int64_t q = p + 1; q < n; ++q) {
        const double apq = m[p * n + q];
        if (apq == 0.0) continue;
        // The rotation that zeroes m[p][q] (the smaller angle).
        const double theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int64_t k = 0; k < n; ++k) {  // columns p, q
          const double mkp = m[k * n + p], mkq = m[k * n + q];
          m[k * n + p] = c * mkp - s * mkq;
          m[k * n + q] = s * mkp + c * mkq;
        }
        for (int64_t k = 0; k < n; ++k) {  // rows p, q
          const double mpk = m[p * n + k], mqk = m[q * n + k];
          m[p * n + k] = c * mpk - s * mqk;
          m[q * n + k] = s * mpk + c * mqk;
        }
        for (int64_t k = 0; k < n; ++k) {
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  std::vector<double> values(n);
  for (int64_t i = 0; i < n; ++i) values[i] = m[i * n + i];
  return sorted(std::move(values), v, n);
}

SymmetricEigen symmetric_eigen(const std::vector<double>& a, int64_t n) {
#ifndef STIPPLE_WITH_FAST_CPU
  return symmetric_eigen_reference(a, n);
#else
  check_square(a, n);
  // A row-major lower triangle is LAPACK's column-major upper triangle.
  std::vector<double> m = a;
  SymmetricEigen e;
  e.values.assign(n, 0.0);
  const int ni = static_cast<int>(n);
  int info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  double work_query = 0;
  const char jobz = 'V', uplo = 'U';
  dsyevd_(&jobz, &uplo, &ni, m.data(), &ni, e.values.data(), &work_query, &lwork, &iwork_query,
          &liwork, &info, 1, 1);
  STIPPLE_CHECK(info == 0, "symmetric_eigen: LAPACK dsyevd workspace query failed (info ", info,
                ")");
  lwork = static_cast<int>(work_query);
  liwork = iwork_query;
  std::vector<double> work(std::max(1, lwork));
  std::vector<int> iwork(std::max(1, liwork));
  dsyevd_(&jobz, &uplo, &ni, m.data(), &ni, e.values.data(), work.data(), &lwork, iwork.data(),
          &liwork, &info, 1, 1);
  STIPPLE_CHECK(info == 0, "symmetric_eigen: LAPACK dsyevd did not converge (info ", info,
                "); the matrix may hold NaN or Inf");
  // Column-major eigenvectors (m[i + j n] = component i of vector j) to row-major columns.
  e.vectors.assign(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) e.vectors[i * n + j] = m[i + j * n];
  return e;
#endif
}

std::vector<double> matmul_square(const std::vector<double>& a, const std::vector<double>& b,
                                  int64_t n) {
  std::vector<double> c(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < n; ++k) {
      const double aik = a[i * n + k];
      for (int64_t j = 0; j < n; ++j) c[i * n + j] += aik * b[k * n + j];
    }
  return c;
}

std::vector<double> sqrtm_psd(const std::vector<double>& a, int64_t n) {
  const SymmetricEigen e = symmetric_eigen(a, n);
  // V diag(sqrt w) V^T = sum_k sqrt(w_k) v_k v_k^T
  std::vector<double> out(n * n, 0.0);
  for (int64_t k = 0; k < n; ++k) {
    const double s = std::sqrt(std::max(0.0, e.values[k]));
    if (s == 0.0) continue;
    for (int64_t i = 0; i < n; ++i) {
      const double vi = e.vectors[i * n + k] * s;
      for (int64_t j = 0; j < n; ++j) out[i * n + j] += vi * e.vectors[j * n + k];
    }
  }
  // Exactly symmetric.
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j)
      out[i * n + j] = out[j * n + i] = 0.5 * (out[i * n + j] + out[j * n + i]);
  return out;
}

double trace_sqrt_product(const std::vector<double>& s1, const std::vector<double>& s2, int64_t n) {
  const std::vector<double> r = sqrtm_psd(s1, n);                        // S1^{1/2}
  std::vector<double> m = matmul_square(matmul_square(r, s2, n), r, n);  // S1^{1/2} S2 S1^{1/2}
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j)
      m[i * n + j] = m[j * n + i] = 0.5 * (m[i * n + j] + m[j * n + i]);
  double t = 0;
  for (double w : symmetric_eigen(m, n).values) t += std::sqrt(std::max(0.0, w));
  return t;
}

double frechet_mean_term(const GaussianStats& a, const GaussianStats& b) {
  STIPPLE_CHECK(a.dim == b.dim && a.dim > 0, "frechet_distance: feature dimensions differ (", a.dim,
                " vs ", b.dim, ")");
  double mean_term = 0;
  for (int64_t i = 0; i < a.dim; ++i) {
    const double d = a.mean[i] - b.mean[i];
    mean_term += d * d;
  }
  return mean_term;
}

double frechet_distance(const GaussianStats& a, const GaussianStats& b) {
  const double mean_term = frechet_mean_term(a, b);
  const int64_t n = a.dim;
  double trace = 0;
  for (int64_t i = 0; i < n; ++i) trace += a.cov[i * n + i] + b.cov[i * n + i];
  return mean_term + trace - 2.0 * trace_sqrt_product(a.cov, b.cov, n);
}

}  // namespace stipple::train
