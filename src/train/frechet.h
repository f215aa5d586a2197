// The Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017, "GANs
// Trained by a Two Time-Scale Update Rule", eq. 6; the "FID" when the features are Inception's):
//
//   d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})
//
// (S1 S2)^{1/2} is not symmetric, but its trace is that of the symmetric PSD matrix
// (S1^{1/2} S2 S1^{1/2})^{1/2}, whose eigenvalues are real and non-negative; so the trace term
// is sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})), with S1^{1/2} from S1's eigendecomposition. Both
// eigendecompositions are LAPACK's dsyevd (divide and conquer, from OpenBLAS) in double, and
// negative rounding noise in eigenvalues is clamped to zero. This avoids the complex Schur form
// that scipy.linalg.sqrtm needs (pytorch-fid's route) and its occasional imaginary residue.
//
// Leaves out: the bias correction of FID at small N (FID_inf, Chong & Forsyth 2020); compare
// distances only at matched sample counts.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace stipple::train {

// Mean and covariance of a feature set, in double.
struct GaussianStats {
  int64_t dim = 0;
  int64_t count = 0;         // samples the statistics came from
  std::vector<double> mean;  // [dim]
  std::vector<double> cov;   // [dim, dim] row-major, unbiased (divides by count - 1, as np.cov)
};

// features [N, D] (any floating dtype), N >= 2.
GaussianStats gaussian_stats(const Tensor& features);

// Eigendecomposition of a symmetric n x n matrix (row-major; only its lower triangle is read):
// ascending eigenvalues, and eigenvectors as the columns of a row-major n x n matrix
// (vectors[i * n + j] is component i of eigenvector j). Throws when LAPACK does not converge.
struct SymmetricEigen {
  std::vector<double> values;
  std::vector<double> vectors;
};
// LAPACK's dsyevd (from OpenBLAS) in builds with the fast CPU kernels, else the reference below.
SymmetricEigen symmetric_eigen(const std::vector<double>& a, int64_t n);
// The plain twin: cyclic Jacobi rotations (Golub & Van Loan, alg. 8.5.3) until the off-diagonal
// mass is below 1e-15 of the matrix's (about 10 sweeps); O(n^3) per sweep. Throws for NaN or Inf.
SymmetricEigen symmetric_eigen_reference(const std::vector<double>& a, int64_t n);

// The symmetric PSD square root V diag(sqrt(max(w, 0))) V^T of a symmetric PSD matrix.
std::vector<double> sqrtm_psd(const std::vector<double>& a, int64_t n);

// Tr((S1 S2)^{1/2}) for symmetric PSD S1, S2 (see the header comment).
double trace_sqrt_product(const std::vector<double>& s1, const std::vector<double>& s2, int64_t n);

// The squared Fréchet distance d^2 above (what FID reports). Dimensions must agree.
double frechet_distance(const GaussianStats& a, const GaussianStats& b);
// Its first term alone, |mu1 - mu2|^2: how much of d^2 is a shift of the mean rather than a
// difference in spread.
double frechet_mean_term(const GaussianStats& a, const GaussianStats& b);

// C = A B for row-major n x n matrices (double; for the small matrices above).
std::vector<double> matmul_square(const std::vector<double>& a, const std::vector<double>& b,
                                  int64_t n);

}  // namespace stipple::train
