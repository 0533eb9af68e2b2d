// Max and average pooling (NHWC, float32) with torch's semantics for MLX's CPU backend: forward
// and input gradient of each as one MLX primitive.
//
// Why native: with MLX operations the gradient of a strided max pool is a gather of every
// window tap's share, several passes over strided views interleaved by copies, slower than
// torch's. Here each window is scanned once per output, and the gradient goes straight to the
// input element that won (the first one equal to the forward's output), channels vectorised, the
// input's rows split between the threads.
//
// Windows start at s*o - p and are clipped to the input. Max: padding is -inf, so it never
// wins; ties go to the first maximum in row-major window order, as torch's do. Average: the
// divisor is torch's, the window clipped to the padded input (count_include_pad) or to the
// input itself.

#include "common.h"

namespace deepdream {
namespace {

struct Pool {
  int n, h, w, c, oh, ow, kh, kw, sh, sw, ph, pw;
  int average;            // 0: max pooling; 1: average, padding counted; 2: average, padding not counted
};

constexpr int kChunk = 64;  // channels per scan: the running maxima stay in registers/L1

// The window of output (oy, ox), clipped to the input: rows [y0, y1), columns [x0, x1).
struct Window {
  int y0, y1, x0, x1;
};

inline Window window(const Pool& p, int oy, int ox) {
  int y = oy * p.sh - p.ph, x = ox * p.sw - p.pw;
  return {std::max(y, 0), std::min(y + p.kh, p.h), std::max(x, 0), std::min(x + p.kw, p.w)};
}

inline const float* pixel(const float* x, const Pool& p, int n, int iy, int ix) {
  return x + (((size_t)n * p.h + iy) * p.w + ix) * p.c;
}

// visit(n, oy, ox, output index, window) for every output, rows split across the cores.
template <typename Visit>
void for_each_output(const Pool& p, Visit visit) {
  parallel_for(p.n * p.oh, [&](int begin, int end) {
    for (int row = begin; row < end; ++row)
      for (int ox = 0; ox < p.ow; ++ox)
        visit(row / p.oh, row % p.oh, ox, (size_t)row * p.ow + ox, window(p, row % p.oh, ox));
  });
}

void forward(const float* x, float* out, const Pool& p) {
  for_each_output(p, [&](int n, int, int, size_t index, Window win) {
    float* __restrict o = out + index * p.c;
    std::memcpy(o, pixel(x, p, n, win.y0, win.x0), sizeof(float) * p.c);
    for (int iy = win.y0; iy < win.y1; ++iy)
      for (int ix = win.x0; ix < win.x1; ++ix) {
        const float* __restrict v = pixel(x, p, n, iy, ix);
        for (int k = 0; k < p.c; ++k) o[k] = std::max(o[k], v[k]);
      }
  });
}

// The gradients split the input's rows into bands, one per thread: windows overlap, so two
// outputs may send gradient to one input element, but every element is written by the thread
// that owns its row. A window that straddles two bands is visited by both threads, each adding
// only into its own rows. visit(n, y0, y1, oy) runs for every output row oy whose windows reach
// input rows [y0, y1) of image n, after those rows of dx are zeroed.
template <typename Visit>
void for_each_band(const Pool& p, float* dx, Visit visit) {
  parallel_for(p.n * p.h, [&](int begin, int end) {
    for (int row = begin; row < end;) {
      int n = row / p.h, y0 = row % p.h, y1 = std::min(p.h, y0 + (end - row));
      std::fill(dx + ((size_t)n * p.h + y0) * p.w * p.c, dx + ((size_t)n * p.h + y1) * p.w * p.c, 0.0f);
      // output rows whose window [oy * sh - ph, oy * sh - ph + kh) meets [y0, y1)
      int first = std::max(0, (y0 + p.ph - p.kh + p.sh) / p.sh), last = std::min(p.oh - 1, (y1 - 1 + p.ph) / p.sh);
      for (int oy = first; oy <= last; ++oy) visit(n, y0, y1, oy);
      row += y1 - y0;
    }
  });
}

// Each window's gradient goes to its first maximum in row-major order (torch's rule): the first
// tap equal to the window's output y, found per channel while walking the taps in order.
void input_grad(const float* x, const float* y, const float* grad, float* dx, const Pool& p) {
  for_each_band(p, dx, [&](int n, int y0, int y1, int oy) {
    float done[kChunk];
    for (int ox = 0; ox < p.ow; ++ox) {
      Window win = window(p, oy, ox);
      size_t out = (((size_t)n * p.oh + oy) * p.ow + ox) * p.c;
      for (int c0 = 0; c0 < p.c; c0 += kChunk) {
        int len = std::min(kChunk, p.c - c0);
        const float* __restrict best = y + out + c0;
        const float* __restrict g = grad + out + c0;
        std::fill(done, done + len, 0.0f);
        for (int iy = win.y0; iy < win.y1; ++iy) {
          bool mine = iy >= y0 && iy < y1;
          for (int ix = win.x0; ix < win.x1; ++ix) {
            const float* __restrict v = pixel(x, p, n, iy, ix) + c0;
            float* __restrict d = dx + (((size_t)n * p.h + iy) * p.w + ix) * p.c + c0;
            if (mine)
              for (int k = 0; k < len; ++k) {
                bool take = done[k] == 0.0f && v[k] == best[k];
                d[k] += take ? g[k] : 0.0f;
                done[k] = take ? 1.0f : done[k];
              }
            else
              for (int k = 0; k < len; ++k) done[k] = (done[k] == 0.0f && v[k] == best[k]) ? 1.0f : done[k];
          }
        }
      }
    }
  });
}

// torch's divisor of output (oy, ox): the window clipped to the padded input, or to the input.
inline float divisor(const Pool& p, int oy, int ox) {
  int y = oy * p.sh - p.ph, x = ox * p.sw - p.pw;
  if (p.average == 1)
    return float((std::min(y + p.kh, p.h + p.ph) - y) * (std::min(x + p.kw, p.w + p.pw) - x));
  Window win = window(p, oy, ox);
  return float((win.y1 - win.y0) * (win.x1 - win.x0));
}

void average_forward(const float* x, float* out, const Pool& p) {
  for_each_output(p, [&](int n, int oy, int ox, size_t index, Window win) {
    float* __restrict o = out + index * p.c;
    std::fill(o, o + p.c, 0.0f);
    for (int iy = win.y0; iy < win.y1; ++iy)
      for (int ix = win.x0; ix < win.x1; ++ix) {
        const float* __restrict v = pixel(x, p, n, iy, ix);
        for (int k = 0; k < p.c; ++k) o[k] += v[k];
      }
    float scale = 1.0f / divisor(p, oy, ox);
    for (int k = 0; k < p.c; ++k) o[k] *= scale;
  });
}

// Every input element of a window receives the output's gradient / divisor.
void average_input_grad(const float* grad, float* dx, const Pool& p) {
  for_each_band(p, dx, [&](int n, int y0, int y1, int oy) {
    float share[kChunk];
    for (int ox = 0; ox < p.ow; ++ox) {
      Window win = window(p, oy, ox);
      float scale = 1.0f / divisor(p, oy, ox);
      const float* g = grad + (((size_t)n * p.oh + oy) * p.ow + ox) * p.c;
      for (int c0 = 0; c0 < p.c; c0 += kChunk) {
        int len = std::min(kChunk, p.c - c0);
        for (int k = 0; k < len; ++k) share[k] = g[c0 + k] * scale;
        for (int iy = std::max(win.y0, y0); iy < std::min(win.y1, y1); ++iy)
          for (int ix = win.x0; ix < win.x1; ++ix) {
            float* __restrict d = dx + (((size_t)n * p.h + iy) * p.w + ix) * p.c + c0;
            for (int k = 0; k < len; ++k) d[k] += share[k];
          }
      }
    }
  });
}

class Pooling : public mx::UnaryPrimitive {
 public:
  Pooling(mx::Stream stream, bool gradient, Pool pool)
      : mx::UnaryPrimitive(stream), gradient_(gradient), p_(pool) {}

  // Forward: inputs (x). Gradient: (x, y, grad) for max pooling, (grad) for average pooling.
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const float* x = inputs[0].data<float>();
    const float* y = gradient_ && !p_.average ? inputs[1].data<float>() : nullptr;
    const float* g = gradient_ ? inputs.back().data<float>() : nullptr;
    float* o = allocate(out);
    dispatch(stream(), inputs, out, [gradient = gradient_, p = p_, x, y, g, o]() {
      if (p.average) gradient ? average_input_grad(g, o, p) : average_forward(x, o, p);
      else gradient ? input_grad(x, y, g, o, p) : forward(x, o, p);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[Pooling] CPU only");
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>&, const std::vector<mx::array>& outputs) override {
    if (gradient_) throw std::runtime_error("[Pooling] no second derivative");
    auto stream = mx::default_stream(mx::Device::cpu);
    auto inputs = p_.average ? std::vector<mx::array>{cotangents[0]}
                             : std::vector<mx::array>{primals[0], outputs[0], cotangents[0]};
    return {mx::array(primals[0].shape(), mx::float32, std::make_shared<Pooling>(stream, true, p_),
                      prepare(std::move(inputs)))};
  }

  const char* name() const override { return p_.average ? "AvgPool" : "MaxPool"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const Pooling&>(other);
    return gradient_ == o.gradient_ && std::memcmp(&p_, &o.p_, sizeof(Pool)) == 0;
  }

 private:
  bool gradient_;
  Pool p_;
};

}  // namespace

mx::array pool2d(const mx::array& x, int average, int kh, int kw, int sh, int sw, int ph, int pw, int out_h,
                 int out_w) {
  if (x.ndim() != 4 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || out_h < 1 || out_w < 1)
    throw std::invalid_argument("pool2d: x (N, H, W, C), positive kernel, stride and output size");
  Pool p{x.shape(0), x.shape(1), x.shape(2), x.shape(3), out_h, out_w, kh, kw, sh, sw, ph, pw, average};
  // every window must hold at least one input element (torch guarantees it; so does fastlayers/pooling.py)
  if ((out_h - 1) * sh - ph >= p.h || (out_w - 1) * sw - pw >= p.w || kh <= ph || kw <= pw)
    throw std::invalid_argument("pool2d: a window lies entirely in the padding");
  auto stream = mx::default_stream(mx::Device::cpu);
  return mx::array({p.n, out_h, out_w, p.c}, mx::float32, std::make_shared<Pooling>(stream, false, p),
                   prepare({x}));
}

mx::array max_pool2d(const mx::array& x, int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w) {
  return pool2d(x, 0, kh, kw, sh, sw, ph, pw, out_h, out_w);
}

mx::array avg_pool2d(const mx::array& x, int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w,
                     bool count_include_pad) {
  return pool2d(x, count_include_pad ? 1 : 2, kh, kw, sh, sw, ph, pw, out_h, out_w);
}

}  // namespace deepdream
