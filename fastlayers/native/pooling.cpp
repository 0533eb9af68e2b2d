// Max and average pooling (NHWC, float32) with torch's semantics for MLX's CPU backend: forward
// and input gradient of each as one MLX primitive.
//
// Why native: with MLX operations the gradient of a strided max pool is a gather of every
// window tap's share, several passes over strided views interleaved by copies, slower than
// torch's. Here each window is scanned once per
// output, and the gradient goes straight to the input element that won.
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

// Windows overlap, so two outputs may send gradient to one input element: each thread owns a
// range of channels (no two threads ever write the same element). Per window, the first pass
// finds each channel's winning tap (strictly greater: the first maximum stays), the second
// adds the output's gradient there.
void input_grad(const float* x, const float* grad, float* dx, const Pool& p) {
  std::fill(dx, dx + (size_t)p.n * p.h * p.w * p.c, 0.0f);
  int chunks = (p.c + kChunk - 1) / kChunk;
  parallel_for(chunks, [&](int begin, int end) {
    float best[kChunk];
    int tap[kChunk];
    for (int chunk = begin; chunk < end; ++chunk) {
      int c0 = chunk * kChunk, len = std::min(kChunk, p.c - c0);
      for (int n = 0; n < p.n; ++n)
        for (int oy = 0; oy < p.oh; ++oy)
          for (int ox = 0; ox < p.ow; ++ox) {
            Window win = window(p, oy, ox);
            int width = win.x1 - win.x0;
            const float* first = pixel(x, p, n, win.y0, win.x0) + c0;
            for (int k = 0; k < len; ++k) best[k] = first[k], tap[k] = 0;
            for (int iy = win.y0, t = 0; iy < win.y1; ++iy)
              for (int ix = win.x0; ix < win.x1; ++ix, ++t) {
                const float* __restrict v = pixel(x, p, n, iy, ix) + c0;
                for (int k = 0; k < len; ++k) {
                  bool take = v[k] > best[k];
                  best[k] = take ? v[k] : best[k];
                  tap[k] = take ? t : tap[k];
                }
              }
            const float* g = grad + (((size_t)n * p.oh + oy) * p.ow + ox) * p.c + c0;
            for (int k = 0; k < len; ++k) {
              int iy = win.y0 + tap[k] / width, ix = win.x0 + tap[k] % width;
              dx[(((size_t)n * p.h + iy) * p.w + ix) * p.c + c0 + k] += g[k];
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

// Every input element of a window receives the output's gradient / divisor; threads own
// channel ranges, as in the max pool's gradient.
void average_input_grad(const float* grad, float* dx, const Pool& p) {
  std::fill(dx, dx + (size_t)p.n * p.h * p.w * p.c, 0.0f);
  int chunks = (p.c + kChunk - 1) / kChunk;
  parallel_for(chunks, [&](int begin, int end) {
    float share[kChunk];
    for (int chunk = begin; chunk < end; ++chunk) {
      int c0 = chunk * kChunk, len = std::min(kChunk, p.c - c0);
      for (int n = 0; n < p.n; ++n)
        for (int oy = 0; oy < p.oh; ++oy)
          for (int ox = 0; ox < p.ow; ++ox) {
            const float* g = grad + (((size_t)n * p.oh + oy) * p.ow + ox) * p.c + c0;
            float scale = 1.0f / divisor(p, oy, ox);
            for (int k = 0; k < len; ++k) share[k] = g[k] * scale;
            Window win = window(p, oy, ox);
            for (int iy = win.y0; iy < win.y1; ++iy)
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

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const float* x = inputs[0].data<float>();
    const float* g = gradient_ ? inputs[1].data<float>() : nullptr;
    float* o = allocate(out);
    dispatch(stream(), inputs, out, [gradient = gradient_, p = p_, x, g, o]() {
      if (p.average) gradient ? average_input_grad(g, o, p) : average_forward(x, o, p);
      else gradient ? input_grad(x, g, o, p) : forward(x, o, p);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[Pooling] CPU only");
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>&, const std::vector<mx::array>&) override {
    if (gradient_) throw std::runtime_error("[Pooling] no second derivative");
    auto stream = mx::default_stream(mx::Device::cpu);
    return {mx::array(primals[0].shape(), mx::float32, std::make_shared<Pooling>(stream, true, p_),
                      prepare({primals[0], cotangents[0]}))};
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
