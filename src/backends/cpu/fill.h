// Each CPU kernel file fills its entries of a KernelTable. kernel_tables.cc calls them in order:
// the reference table gets every ref_* fill; the fast table starts as a copy of it and every
// fast_* fill overrides what it speeds up.
#pragma once

#include "ops/kernels.h"

namespace stipple::cpu {

void fill_reference_data(KernelTable& t);         // ref_data.cc
void fill_reference_elementwise(KernelTable& t);  // ref_elementwise.cc
void fill_reference_reduce(KernelTable& t);       // ref_reduce.cc
void fill_reference_linalg(KernelTable& t);       // ref_linalg.cc
void fill_reference_norm(KernelTable& t);         // ref_norm.cc
void fill_reference_attention(KernelTable& t);    // ref_attention.cc
void fill_reference_resample(KernelTable& t);     // ref_resample.cc
void fill_reference_optim(KernelTable& t);        // ref_optim.cc

void fill_fast_elementwise(KernelTable& t);  // fast_elementwise.cc (Highway)
void fill_fast_linalg(KernelTable& t);       // fast_linalg.cc (oneDNN)
void fill_fast_norm(KernelTable& t);         // fast_norm.cc (Highway)
void fill_fast_attention(KernelTable& t);    // fast_attention.cc (OpenBLAS + Highway)
void fill_fast_optim(KernelTable& t);        // fast_optim.cc (Highway)
void fill_fast_layout(KernelTable& t);       // fast_layout.cc (after elementwise: wraps its copy)

}  // namespace stipple::cpu
