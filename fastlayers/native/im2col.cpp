// The few-channel convolutions (the RGB input layer of every model): the forward and the input
// gradient as one BLAS product per cache-sized block of output pixels over an im2col matrix.
//
// Why: with 3 input channels, conv.cpp's products (one per tap) are 3 deep, far too thin for the
// BLAS to run near its speed, and stacking a strided layer's phases as channels (12 for a 7x7/2
// stem) multiplies zero taps and costs MLX's single-threaded copies. Here every output pixel's
// window (kh * kw * C_in values, 27 for a 3x3 RGB layer, 147 for a 7x7 one) is copied into a row of
// a block's matrix, which then meets all the weights in one product of that depth; the copy is
// small next to the product. The input gradient is the same product transposed, its rows then
// added back onto the windows they came from (col2im), each input row by one thread.
// The weight gradient stays in conv.cpp.

#include "conv.h"

namespace deepdream {
namespace {

// Output pixels per block: the block's window matrix and result (depth + C_out floats a pixel)
// about 1 MiB, within one core's L2 cache, yet many rows for the product.
int block_pixels(int depth, int co) { return std::max(512, (1 << 18) / (depth + co)); }

// Row p of the window matrix: output pixel (oy, ox)'s kh x kw window of the zero-padded image, tap by
// tap, C_in values each (the weights' (kh, kw, C_in) order).
void window_row(const float* image, const ConvGeometry& g, int oy, int ox, float* row) {
  int run = g.kw * g.ci, x0 = ox * g.stride - g.left;
  bool columns_inside = x0 >= 0 && x0 + g.kw <= g.w;
  for (int i = 0; i < g.kh; ++i, row += run) {
    int iy = oy * g.stride + i - g.top;
    if (iy < 0 || iy >= g.h) {
      std::fill(row, row + run, 0.0f);
    } else if (columns_inside) {
      std::memcpy(row, image + ((size_t)iy * g.w + x0) * g.ci, sizeof(float) * run);
    } else {
      for (int j = 0; j < g.kw; ++j) {
        int ix = x0 + j;
        if (ix < 0 || ix >= g.w) std::fill(row + j * g.ci, row + (j + 1) * g.ci, 0.0f);
        else std::memcpy(row + j * g.ci, image + ((size_t)iy * g.w + ix) * g.ci, sizeof(float) * g.ci);
      }
    }
  }
}

inline void add_run(float* __restrict d, const float* __restrict v, int count) {
  for (int k = 0; k < count; ++k) d[k] += v[k];
}

}  // namespace

bool im2col_applies(const ConvGeometry& g) { return g.ci < kFewChannels; }

// out = activation(windows @ w^T + bias [+ residual]): w (C_out, kh, kw, C_in) is already the
// (C_out, depth) matrix the product needs. Each thread takes its own run of output rows, block by
// block (its own window matrix, products on one thread): no thread waits for another between the
// copy, the product and the finish, and the blocks' copies stay in their own core's cache.
void im2col_forward(const float* x, const float* w, const float* bias, const float* residual, float* out,
                    const ConvGeometry& g) {
  int depth = g.kh * g.kw * g.ci, rows = std::max(1, block_pixels(depth, g.co) / g.ow);
  parallel_for(g.n * g.oh, [&](int r0, int r1) {          // output rows, all images
    std::vector<float> cols((size_t)std::min(rows, r1 - r0) * g.ow * depth);
    for (int r = r0; r < r1; r += rows) {
      int m = std::min(rows, r1 - r) * g.ow;
      for (int p = 0; p < m; ++p) {
        int row = r + p / g.ow, n = row / g.oh;
        window_row(x + (size_t)n * g.h * g.w * g.ci, g, row % g.oh, p % g.ow, &cols[(size_t)p * depth]);
      }
      size_t at = (size_t)r * g.ow * g.co;
      float* o = out + at;
      sgemm()(kRowMajor, kNoTrans, kTrans, m, g.co, depth, 1.0f, cols.data(), depth, w, depth, 0.0f, o, g.co);
      const float* extra = residual ? residual + at : nullptr;
      if (bias || extra || g.act != kLinear)
        for (int p = 0; p < m; ++p)
          epilogue(o + (size_t)p * g.co, o + (size_t)p * g.co, bias, extra ? extra + (size_t)p * g.co : nullptr,
                   g.co, g.act);
    }
  });
}

// dx[y, x] = sum over the taps (i, j) and outputs (oy, ox) whose window holds (y, x) of
// (g[oy, ox] @ w[:, i, j, :]). Each thread owns a run of input rows: it computes the (g @ w) rows of
// the output rows whose windows reach them, block by block (g masked by the activation at y first),
// and adds each one's window back onto its rows (taps i with (y + top - i) a multiple of the
// stride). The few output rows next to another thread's run are computed by both.
void im2col_input_grad(const float* grad, const float* w, const float* y, float* dx, const ConvGeometry& g) {
  int depth = g.kh * g.kw * g.ci, s = g.stride;
  // The product's columns padded with zero weights to a multiple of 16: MKL runs a product 32 columns
  // wide much faster than one 27 wide (a 3x3 RGB window's), more than the zero columns cost.
  int wide = (depth + 15) / 16 * 16, rows = std::max(1, block_pixels(wide, g.co) / g.ow);
  std::vector<float> padded;
  if (wide != depth) {
    padded.assign((size_t)g.co * wide, 0.0f);
    for (int o = 0; o < g.co; ++o)
      std::copy(w + (size_t)o * depth, w + (size_t)(o + 1) * depth, &padded[(size_t)o * wide]);
    w = padded.data();
  }
  size_t out_image = (size_t)g.oh * g.ow * g.co;
  parallel_for(g.n * g.h, [&](int r0, int r1) {           // input rows, all images
    std::fill(dx + (size_t)r0 * g.w * g.ci, dx + (size_t)r1 * g.w * g.ci, 0.0f);
    std::vector<float> cols((size_t)rows * g.ow * wide), masked;
    for (int n = r0 / g.h; n * g.h < r1; ++n) {
      int ya = std::max(r0 - n * g.h, 0), yb = std::min(r1 - n * g.h, g.h);   // this image's rows of the run
      const float* gn = grad + n * out_image;
      const float* yn = y ? y + n * out_image : nullptr;
      float* image = dx + (size_t)n * g.h * g.w * g.ci;
      // the output rows whose windows reach rows [ya, yb): s * oy - top + kh > ya and s * oy - top < yb
      int reach = ya + g.top - g.kh + 1;
      int oy_lo = reach <= 0 ? 0 : (reach + s - 1) / s, oy_hi = std::min(g.oh, (yb - 1 + g.top) / s + 1);
      for (int oy0 = oy_lo; oy0 < oy_hi; oy0 += rows) {
        int oy1 = std::min(oy_hi, oy0 + rows), m = (oy1 - oy0) * g.ow;
        const float* gm = gn + (size_t)oy0 * g.ow * g.co;
        if (yn && g.act != kLinear) {
          masked.resize((size_t)m * g.co);
          masked_copy(masked.data(), gm, yn + (size_t)oy0 * g.ow * g.co, m * g.co, g.act);
          gm = masked.data();
        }
        sgemm()(kRowMajor, kNoTrans, kNoTrans, m, wide, g.co, 1.0f, gm, g.co, w, wide, 0.0f, cols.data(), wide);
        int y0 = std::max(ya, oy0 * s - g.top), y1 = std::min(yb, (oy1 - 1) * s - g.top + g.kh);
        for (int iy = y0; iy < y1; ++iy) {
          float* row = image + (size_t)iy * g.w * g.ci;
          for (int i = (iy + g.top) % s, last = std::min(g.kh - 1, iy + g.top); i <= last; i += s) {
            int oy = (iy + g.top - i) / s;
            if (oy < oy0 || oy >= oy1) continue;
            // output (oy, ox)'s row-i taps cover the input pixels s * ox - left + [0, kw): one run of
            // kw * C_in values in both
            const float* taps_row = &cols[(size_t)(oy - oy0) * g.ow * wide] + (size_t)i * g.kw * g.ci;
            for (int ox = 0; ox < g.ow; ++ox) {
              int x0 = ox * s - g.left, j0 = std::max(0, -x0), j1 = std::min(g.kw, g.w - x0);
              float* d = row + (size_t)(x0 + j0) * g.ci;
              const float* v = taps_row + (size_t)ox * wide + j0 * g.ci;
              add_run(d, v, (j1 - j0) * g.ci);
            }
          }
        }
      }
    }
  });
}

}  // namespace deepdream
