// Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", CVPR 2016) for the 3x3 stride-1 layers: the forward and the input gradient.
//
// Why: every VGG layer and most of googlenet's, resnet50's, alexnet's and inception_v3's spatial
// layers are 3x3 stride 1. Computed directly (conv.cpp), each 4x4 output tile costs 16 * 9 = 144
// multiply-adds per (C_in, C_out) pair. Here the 6x6 input tile is transformed (V = B^T d B), multiplied
// point by point with the transformed kernel (U = G g G^T) and transformed back (Y = A^T M A): 36
// multiply-adds per pair, 4x fewer. Summed over channels, the 36 point-wise products are 36 matrix
// products (tiles x C_in) @ (C_in x C_out), the BLAS's job; the transforms are short passes over
// channel vectors. float32 error ~1e-5 of the output's range per layer (direct: ~1e-7).
//
// The input gradient is the adjoint of the same three steps (dM = A dY A^T, dV = dM U^T, then
// B dV B^T added back onto the overlapping 6x6 input tiles), so it needs no second transformed kernel.
// U is 4x the size of the weights and the same every step of a dream: it is cached per weight buffer.
//
// Tiles are processed in blocks whose transformed inputs and products stay in cache; each pass
// over a block splits the channels between the cores (the gradient's overlapping tiles then never
// race) and each product runs on the BLAS's own threads.

#include <dlfcn.h>

#include <list>
#include <mutex>

#include "conv.h"

namespace deepdream {
namespace {

constexpr int kOut = 4;                  // output tile side
constexpr int kIn = kOut + 2;            // input tile side (3x3 kernel)
constexpr int kPoints = kIn * kIn;       // points of the transformed tile: one matrix product each
constexpr int kLanes = 16;               // channels per transform: one AVX-512 register

// The 1-D transforms (interpolation points 0, 1, -1, 2, -2 and infinity) and the two adjoints the
// gradient needs. Each maps rows of kLanes channels: element k of `in` is in[k * is + lane].
void input_1d(const float* __restrict in, int is, float* __restrict out, int os) {    // B^T, 6 -> 6
  for (int l = 0; l < kLanes; ++l) {
    float d0 = in[l], d1 = in[is + l], d2 = in[2 * is + l], d3 = in[3 * is + l], d4 = in[4 * is + l],
          d5 = in[5 * is + l];
    out[l] = 4 * d0 - 5 * d2 + d4;
    out[os + l] = d3 + d4 - 4 * (d1 + d2);
    out[2 * os + l] = d4 - d3 + 4 * (d1 - d2);
    out[3 * os + l] = d4 - d2 + 2 * (d3 - d1);
    out[4 * os + l] = d4 - d2 + 2 * (d1 - d3);
    out[5 * os + l] = 4 * d1 - 5 * d3 + d5;
  }
}

void input_1d_adjoint(const float* __restrict in, int is, float* __restrict out, int os) {    // B, 6 -> 6
  for (int l = 0; l < kLanes; ++l) {
    float v0 = in[l], v1 = in[is + l], v2 = in[2 * is + l], v3 = in[3 * is + l], v4 = in[4 * is + l],
          v5 = in[5 * is + l];
    out[l] = 4 * v0;
    out[os + l] = 4 * (v2 - v1 + v5) + 2 * (v4 - v3);
    out[2 * os + l] = -5 * v0 - 4 * (v1 + v2) - v3 - v4;
    out[3 * os + l] = v1 - v2 + 2 * (v3 - v4) - 5 * v5;
    out[4 * os + l] = v0 + v1 + v2 + v3 + v4;
    out[5 * os + l] = v5;
  }
}

void kernel_1d(const float* __restrict in, int is, float* __restrict out, int os) {    // G, 3 -> 6
  for (int l = 0; l < kLanes; ++l) {
    float g0 = in[l], g1 = in[is + l], g2 = in[2 * is + l];
    out[l] = g0 / 4;
    out[os + l] = -(g0 + g1 + g2) / 6;
    out[2 * os + l] = -(g0 - g1 + g2) / 6;
    out[3 * os + l] = g0 / 24 + g1 / 12 + g2 / 6;
    out[4 * os + l] = g0 / 24 - g1 / 12 + g2 / 6;
    out[5 * os + l] = g2;
  }
}

void output_1d(const float* __restrict in, int is, float* __restrict out, int os) {    // A^T, 6 -> 4
  for (int l = 0; l < kLanes; ++l) {
    float m0 = in[l], m1 = in[is + l], m2 = in[2 * is + l], m3 = in[3 * is + l], m4 = in[4 * is + l],
          m5 = in[5 * is + l];
    out[l] = m0 + m1 + m2 + m3 + m4;
    out[os + l] = (m1 - m2) + 2 * (m3 - m4);
    out[2 * os + l] = (m1 + m2) + 4 * (m3 + m4);
    out[3 * os + l] = (m1 - m2) + 8 * (m3 - m4) + m5;
  }
}

void output_1d_adjoint(const float* __restrict in, int is, float* __restrict out, int os) {    // A, 4 -> 6
  for (int l = 0; l < kLanes; ++l) {
    float y0 = in[l], y1 = in[is + l], y2 = in[2 * is + l], y3 = in[3 * is + l];
    out[l] = y0;
    out[os + l] = y0 + y1 + y2 + y3;
    out[2 * os + l] = y0 - y1 + y2 - y3;
    out[3 * os + l] = y0 + 2 * y1 + 4 * y2 + 8 * y3;
    out[4 * os + l] = y0 - 2 * y1 + 4 * y2 - 8 * y3;
    out[5 * os + l] = y3;
  }
}

// A 2-D transform: the 1-D one down the columns of a (rows_in x rows_in) tile of lanes, then along the
// rows of the result. `in` is [rows_in][rows_in][kLanes], `out` [rows_out][rows_out][kLanes].
template <int kFrom, int kTo, auto one_d>
void transform_2d(const float* in, float* out) {
  float columns[kTo * kFrom * kLanes];
  for (int j = 0; j < kFrom; ++j) one_d(in + j * kLanes, kFrom * kLanes, columns + j * kLanes, kFrom * kLanes);
  for (int i = 0; i < kTo; ++i) one_d(columns + i * kFrom * kLanes, kLanes, out + i * kTo * kLanes, kLanes);
}

// Copies `count` <= kLanes channels into a lane row, zeros after (the last, partial group of channels).
// The full case is a fixed-size copy the compiler inlines: these run 36 times per tile.
inline void load_lanes(const float* src, int count, float* lanes) {
  if (count == kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = src[l];
    return;
  }
  std::memcpy(lanes, src, sizeof(float) * count);
  std::fill(lanes + count, lanes + kLanes, 0.0f);
}

// Copies the first `count` lanes of a lane row out; `add` adds them instead.
template <bool add = false>
inline void store_lanes(const float* lanes, int count, float* dst) {
  if (count == kLanes) {
    for (int l = 0; l < kLanes; ++l) dst[l] = add ? dst[l] + lanes[l] : lanes[l];
    return;
  }
  for (int l = 0; l < count; ++l) dst[l] = add ? dst[l] + lanes[l] : lanes[l];
}

// Calls body(item, c0, c1) for every item in [0, items) and every group [c0, c1) of kLanes channels of
// [0, channels). The groups are split over the cores, so items whose writes overlap (the gradient's
// tiles) never race; each core goes through the items in order, all of its groups of one at a time,
// so it reads and writes whole runs of each pixel's channels.
template <typename F>
void over_channels(int items, int channels, F body) {
  int groups = (channels + kLanes - 1) / kLanes;
  parallel_for(groups, [&](int g0, int g1) {
    for (int item = 0; item < items; ++item)
      for (int gi = g0; gi < g1; ++gi) body(item, gi * kLanes, std::min(channels, (gi + 1) * kLanes));
  });
}

// U[p][co][ci] = (G w[co, :, :, ci] G^T)[p].
std::vector<float> transform_kernel(const float* w, int co, int ci) {
  std::vector<float> u((size_t)kPoints * co * ci);
  over_channels(co, ci, [&](int o, int c0, int c1) {
    float g[9 * kLanes], t[kPoints * kLanes];
    for (int k = 0; k < 9; ++k) load_lanes(w + ((size_t)o * 9 + k) * ci + c0, c1 - c0, g + k * kLanes);
    transform_2d<3, kIn, kernel_1d>(g, t);
    for (int p = 0; p < kPoints; ++p) store_lanes(t + p * kLanes, c1 - c0, &u[((size_t)p * co + o) * ci + c0]);
  });
  return u;
}

// The transformed kernels of the weights in use, kept while someone else holds the weights: a dream
// transforms each layer's kernel once, not every step. Holding the buffer also keeps MLX from
// reusing it in place (donation) while it is a key here.
class KernelCache {
 public:
  std::shared_ptr<const std::vector<float>> get(const WeightsBuffer& buffer, const float* w, int co, int ci) {
    std::lock_guard<std::mutex> lock(mutex_);
    drop_unused();
    for (auto it = entries_.begin(); it != entries_.end(); ++it)
      if (it->buffer == buffer && it->w == w && it->co == co && it->ci == ci) {
        entries_.splice(entries_.begin(), entries_, it);
        return it->u;
      }
    auto u = std::make_shared<const std::vector<float>>(transform_kernel(w, co, ci));
    entries_.push_front({buffer, w, co, ci, u});
    size_t bytes = 0;
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      bytes += it->u->size() * sizeof(float);
      if (bytes > kMaxBytes && it != entries_.begin()) {     // least recently used past the cap
        entries_.erase(it, entries_.end());
        break;
      }
    }
    return u;
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    drop_unused();
    return entries_.size();
  }

 private:
  // Whatever only this cache still holds (a finished model, the last training step's weights) is gone.
  void drop_unused() {
    entries_.remove_if([](const Entry& e) { return e.buffer.use_count() == 1; });
  }

  static constexpr size_t kMaxBytes = size_t(1) << 30;
  struct Entry {
    WeightsBuffer buffer;
    const float* w;
    int co, ci;
    std::shared_ptr<const std::vector<float>> u;
  };
  std::mutex mutex_;
  std::list<Entry> entries_;
};

KernelCache& kernel_cache() {
  static KernelCache cache;
  return cache;
}

// MKL's one call for many same-shaped products (it threads across them); else a loop of sgemm.
using SgemmBatchStrided = void (*)(int, int, int, int, int, int, float, const float*, int, int, const float*, int,
                                   int, float, float*, int, int, int);

// c[p] = a[p] @ op(b[p]) for the kPoints points; a: (m, k) row-major, b: (n, k) if transposed else (k, n).
void point_products(int m, int n, int k, const float* a, size_t stride_a, const float* b, bool transposed,
                    size_t stride_b, float* c, size_t stride_c) {
  static auto batched = reinterpret_cast<SgemmBatchStrided>(dlsym(RTLD_DEFAULT, "cblas_sgemm_batch_strided"));
  int ldb = transposed ? k : n, trans = transposed ? kTrans : kNoTrans;
  if (batched) {
    batched(kRowMajor, kNoTrans, trans, m, n, k, 1.0f, a, k, (int)stride_a, b, ldb, (int)stride_b, 0.0f, c, n,
            (int)stride_c, kPoints);
    return;
  }
  for (int p = 0; p < kPoints; ++p)
    sgemm()(kRowMajor, kNoTrans, trans, m, n, k, 1.0f, a + p * stride_a, k, b + p * stride_b, ldb, 0.0f,
            c + p * stride_c, n);
}

// Tiles per block: the block's transformed inputs and products (kPoints x tiles x (C_in + C_out) floats)
// about the size of one core's L2 cache, yet enough rows that each product is worth its call.
int block_tiles(int ci, int co, int tiles) {
  constexpr size_t kBlockBytes = 2 << 20;
  int fit = (int)(kBlockBytes / (sizeof(float) * kPoints * (ci + co)));
  return std::min(tiles, std::max(64, fit));
}

struct Tiling {
  int rows, cols;          // output tiles down and across one image
  int tiles() const { return rows * cols; }
  int y(int tile) const { return (tile / cols) * kOut; }     // the tile's first output row
  int x(int tile) const { return (tile % cols) * kOut; }     // and column
};

Tiling tiling(const ConvGeometry& g) { return {(g.oh + kOut - 1) / kOut, (g.ow + kOut - 1) / kOut}; }

// A window of kRows x kRows pixels from (y0, x0) on in an (h, w, c) image, channels [c0, c1) as
// [kRows][kRows][kLanes]: read with zeros outside the image, written (or added) only inside it.
template <int kRows>
struct Window {
  int h, w, c, y0, x0, c0, c1;

  bool inside(int r, int s) const {
    int y = y0 + r, x = x0 + s;
    return y >= 0 && y < h && x >= 0 && x < w;
  }
  size_t offset(int r, int s) const { return ((size_t)(y0 + r) * w + (x0 + s)) * c + c0; }
  bool whole() const { return y0 >= 0 && x0 >= 0 && y0 + kRows <= h && x0 + kRows <= w; }

  void read(const float* image, float* lanes) const {
    bool all = whole();
    for (int r = 0; r < kRows; ++r)
      for (int s = 0; s < kRows; ++s) {
        float* dst = lanes + (r * kRows + s) * kLanes;
        if (all || inside(r, s)) load_lanes(image + offset(r, s), c1 - c0, dst);
        else std::fill(dst, dst + kLanes, 0.0f);
      }
  }

  template <bool add>
  void write(const float* lanes, float* image) const {
    bool all = whole();
    for (int r = 0; r < kRows; ++r)
      for (int s = 0; s < kRows; ++s)
        if (all || inside(r, s)) store_lanes<add>(lanes + (r * kRows + s) * kLanes, c1 - c0, image + offset(r, s));
  }
};

// The first step of either direction for one tile: its window's kPoints transformed values, stored in
// the block's point buffer as points[p][tile][channel] (B^T d B forward, A dY A^T for the gradient).
// With `y` (the forward's output, for the gradient) dY is masked by the activation at y first.
template <int kRows, auto one_d>
void window_to_points(const Window<kRows>& win, const float* image, const float* y, int act, float* points, int block,
                      int tile) {
  float lanes[kRows * kRows * kLanes], transformed[kPoints * kLanes];
  win.read(image, lanes);
  if (y && act != kLinear) {
    float outputs[kRows * kRows * kLanes];
    win.read(y, outputs);
    with_activation(act, [&](auto kind) {
      constexpr int kAct = decltype(kind)::value;
      for (int q = 0; q < kRows * kRows * kLanes; ++q) lanes[q] = passes<kAct>(outputs[q]) ? lanes[q] : 0.0f;
    });
  }
  transform_2d<kRows, kIn, one_d>(lanes, transformed);
  for (int p = 0; p < kPoints; ++p)
    store_lanes(transformed + p * kLanes, win.c1 - win.c0, points + ((size_t)p * block + tile) * win.c + win.c0);
}

// The last step: one tile's products transformed back onto its window (A^T M A forward, B dV B^T for the
// gradient), then finished: + `bias` (per channel, or null), + `residual` (an image shaped like the
// output, or null), the activation; written or (overlapping windows) added.
template <int kRows, auto one_d, bool add>
void points_to_window(const float* points, int block, int tile, const float* bias, const float* residual, int act,
                      const Window<kRows>& win, float* image) {
  int count = win.c1 - win.c0;
  float transformed[kPoints * kLanes], lanes[kRows * kRows * kLanes];
  for (int p = 0; p < kPoints; ++p)
    load_lanes(points + ((size_t)p * block + tile) * win.c + win.c0, count, transformed + p * kLanes);
  transform_2d<kIn, kRows, one_d>(transformed, lanes);
  if (bias || residual || act != kLinear) {
    float shift[kLanes] = {}, extra[kRows * kRows * kLanes] = {};
    if (bias) load_lanes(bias + win.c0, count, shift);
    if (residual) win.read(residual, extra);
    with_activation(act, [&](auto kind) {
      constexpr int kAct = decltype(kind)::value;
      for (int q = 0; q < kRows * kRows; ++q)
        for (int l = 0; l < kLanes; ++l)
          lanes[q * kLanes + l] = activate<kAct>(lanes[q * kLanes + l] + shift[l] + extra[q * kLanes + l]);
    });
  }
  win.template write<add>(lanes, image);
}

}  // namespace

size_t winograd_cached_kernels() { return kernel_cache().size(); }

bool winograd_applies(const ConvGeometry& g) {
  // Fewer tiles than this and the point products are too small for the BLAS to run them fast.
  constexpr int kMinTiles = 16;
  return g.kh == 3 && g.kw == 3 && g.stride == 1 && g.ci >= kLanes && g.co >= kLanes && tiling(g).tiles() >= kMinTiles;
}

void winograd_forward(const float* x, const float* w, const WeightsBuffer& w_buffer, const float* bias,
                      const float* residual, float* out, const ConvGeometry& g) {
  auto u = kernel_cache().get(w_buffer, w, g.co, g.ci);
  Tiling t = tiling(g);
  int tiles = t.tiles(), block = block_tiles(g.ci, g.co, tiles);
  // Scratch, not zeroed: every element the products read is written first.
  std::unique_ptr<float[]> v(new float[(size_t)kPoints * block * g.ci]), m(new float[(size_t)kPoints * block * g.co]);
  for (int n = 0; n < g.n; ++n) {
    const float* image = x + (size_t)n * g.h * g.w * g.ci;
    float* result = out + (size_t)n * g.oh * g.ow * g.co;
    const float* extra = residual ? residual + (size_t)n * g.oh * g.ow * g.co : nullptr;
    for (int t0 = 0; t0 < tiles; t0 += block) {
      int count = std::min(block, tiles - t0);
      // V[p][tile][ci] = (B^T d B)[p]
      over_channels(count, g.ci, [&](int b, int c0, int c1) {
        Window<kIn> win{g.h, g.w, g.ci, t.y(t0 + b) - g.top, t.x(t0 + b) - g.left, c0, c1};
        window_to_points<kIn, input_1d>(win, image, nullptr, kLinear, v.get(), block, b);
      });
      // M[p] = V[p] @ U[p]^T: (tiles, C_in) @ (C_in, C_out)
      point_products(count, g.co, g.ci, v.get(), (size_t)block * g.ci, u->data(), true, (size_t)g.co * g.ci,
                     m.get(), (size_t)block * g.co);
      // out = activation(A^T M A + bias + residual), cropped to the output
      over_channels(count, g.co, [&](int b, int c0, int c1) {
        Window<kOut> win{g.oh, g.ow, g.co, t.y(t0 + b), t.x(t0 + b), c0, c1};
        points_to_window<kOut, output_1d, false>(m.get(), block, b, bias, extra, g.act, win, result);
      });
    }
  }
}

void winograd_input_grad(const float* grad, const float* w, const WeightsBuffer& w_buffer, const float* y, float* dx,
                         const ConvGeometry& g) {
  auto u = kernel_cache().get(w_buffer, w, g.co, g.ci);
  Tiling t = tiling(g);
  int tiles = t.tiles(), block = block_tiles(g.ci, g.co, tiles);
  std::unique_ptr<float[]> dm(new float[(size_t)kPoints * block * g.co]), dv(new float[(size_t)kPoints * block * g.ci]);
  parallel_for(g.n * g.h, [&](int r0, int r1) {      // the tiles' windows add into it
    std::fill(dx + (size_t)r0 * g.w * g.ci, dx + (size_t)r1 * g.w * g.ci, 0.0f);
  });
  for (int n = 0; n < g.n; ++n) {
    const float* dy = grad + (size_t)n * g.oh * g.ow * g.co;
    const float* out = y ? y + (size_t)n * g.oh * g.ow * g.co : nullptr;
    float* image = dx + (size_t)n * g.h * g.w * g.ci;
    for (int t0 = 0; t0 < tiles; t0 += block) {
      int count = std::min(block, tiles - t0);
      // dM[p][tile][co] = (A dY A^T)[p], dY masked by the activation, zero past the output's edge
      over_channels(count, g.co, [&](int b, int c0, int c1) {
        Window<kOut> win{g.oh, g.ow, g.co, t.y(t0 + b), t.x(t0 + b), c0, c1};
        window_to_points<kOut, output_1d_adjoint>(win, dy, out, g.act, dm.get(), block, b);
      });
      // dV[p] = dM[p] @ U[p]: (tiles, C_out) @ (C_out, C_in)
      point_products(count, g.ci, g.co, dm.get(), (size_t)block * g.co, u->data(), false, (size_t)g.co * g.ci,
                     dv.get(), (size_t)block * g.ci);
      // dx += B dV B^T over each tile's 6x6 window (windows overlap; each core owns its channels)
      over_channels(count, g.ci, [&](int b, int c0, int c1) {
        Window<kIn> win{g.h, g.w, g.ci, t.y(t0 + b) - g.top, t.x(t0 + b) - g.left, c0, c1};
        points_to_window<kIn, input_1d_adjoint, true>(dv.get(), block, b, nullptr, nullptr, kLinear, win, image);
      });
    }
  }
}

}  // namespace deepdream
