// The convolution's pieces shared by its three algorithms: conv.cpp (shifted-view products, any
// kernel and stride), winograd.cpp (F(4x4, 3x3), the 3x3 stride-1 kernels on maps big enough to pay
// for it) and im2col.cpp (the few-channel layers: the RGB input layer).
#pragma once

#include <memory>

#include "common.h"

namespace deepdream {

// cblas_sgemm from whichever BLAS the process loaded (fastlayers/_blas.py puts MKL or OpenBLAS in
// the global scope before MLX, which resolves the same symbol).
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                       int);
Sgemm sgemm();

struct ConvGeometry {
  int n, h, w, ci;        // input (N, H, W, C_in)
  int oh, ow, co;         // output (N, oh, ow, C_out)
  int kh, kw;
  int top, left;          // zero padding before the first row / column (after: implied by oh, ow)
  int act;                // Activation (common.h) applied to conv + bias [+ residual]
  int residual;           // 1: the forward adds an input shaped like its output before the activation
  int stride;             // the same down and across
};

// Whether winograd.cpp runs this convolution's forward and input gradient (else conv.cpp's products do):
// 3x3, stride 1, enough channels and tiles.
bool winograd_applies(const ConvGeometry& g);
// x (N, H, W, C_in), w (C_out, 3, 3, C_in) living in `w_buffer` (the key of the transformed-weight cache).
// The forward applies the geometry's activation to conv + bias [+ residual]; the input gradient masks
// `grad` by the activation at the forward's output `y` as it reads it (y null: no mask).
void winograd_forward(const float* x, const float* w, const WeightsBuffer& w_buffer, const float* bias,
                      const float* residual, float* out, const ConvGeometry& g);
void winograd_input_grad(const float* grad, const float* w, const WeightsBuffer& w_buffer, const float* y, float* dx,
                         const ConvGeometry& g);

// Below this many input channels (the RGB input layer) conv.cpp's per-tap products are too thin for
// the BLAS; im2col.cpp runs the forward and the input gradient as products as deep as a whole window.
constexpr int kFewChannels = 16;
bool im2col_applies(const ConvGeometry& g);
void im2col_forward(const float* x, const float* w, const float* bias, const float* residual, float* out,
                    const ConvGeometry& g);
void im2col_input_grad(const float* grad, const float* w, const float* y, float* dx, const ConvGeometry& g);

// Rows [r0, r0 + m) of a gradient (rows, c), masked by the activation at y (null: as they are), as a
// matrix: the gradient itself when nothing masks it, else a masked copy in `scratch`.
const float* gradient_rows(const float* grad, const float* y, int act, int r0, int m, int c,
                           std::vector<float>& scratch);

// How many transformed kernels winograd.cpp holds (those of weights still alive elsewhere).
size_t winograd_cached_kernels();

}  // namespace deepdream
