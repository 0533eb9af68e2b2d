// The mean of several separable blurs of an already padded image (NHWC, float32), as an MLX
// primitive: out[n, y, x, c] = 1/B sum_b sum_ij taps[b, i] taps[b, j] padded[n, y + i, x + j, c].
//
// Why native: the dream step smooths its gradient with three Gaussian blurs every step
// (deepdream/transforms.py's cascade smoothing); written with MLX operations those are passes
// over shifted slices on one thread, a sizeable share of a cheap model's step. Here each output
// row is one vertical pass and one horizontal pass per blur over rows still in cache, rows split
// over the threads. With the channels interleaved, a row of (width, channels) is one flat vector
// and both passes run along it.

#include "common.h"

namespace deepdream {
namespace {

struct Geometry {
  int n, h, w, c;    // output (N, H, W, C); the input is padded by (k - 1) / 2 on every side
  int blurs, k;      // taps (blurs, k)
};

void blur(const float* padded, const float* taps, float* out, const Geometry& g) {
  int wp = g.w + g.k - 1;
  size_t row_in = (size_t)wp * g.c, row_out = (size_t)g.w * g.c;
  float scale = 1.0f / g.blurs;
  parallel_for(g.n * g.h, [&](int begin, int end) {
    std::vector<float> vertical(row_in);
    for (int row = begin; row < end; ++row) {
      int n = row / g.h, y = row % g.h;
      const float* top = padded + ((size_t)n * (g.h + g.k - 1) + y) * row_in;
      float* o = out + (size_t)row * row_out;
      std::fill(o, o + row_out, 0.0f);
      for (int b = 0; b < g.blurs; ++b) {
        const float* t = taps + (size_t)b * g.k;
        float* __restrict v = vertical.data();
        for (size_t q = 0; q < row_in; ++q) v[q] = t[0] * top[q];
        for (int i = 1; i < g.k; ++i) {
          const float* __restrict src = top + i * row_in;
          float ti = t[i];
          for (size_t q = 0; q < row_in; ++q) v[q] += ti * src[q];
        }
        for (int j = 0; j < g.k; ++j) {
          const float* __restrict src = v + (size_t)j * g.c;
          float tj = t[j] * scale;
          for (size_t q = 0; q < row_out; ++q) o[q] += tj * src[q];
        }
      }
    }
  });
}

class SeparableBlurs : public mx::UnaryPrimitive {
 public:
  SeparableBlurs(mx::Stream stream, Geometry g) : mx::UnaryPrimitive(stream), g_(g) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const float* padded = inputs[0].data<float>();
    const float* taps = inputs[1].data<float>();
    float* o = allocate(out);
    dispatch(stream(), inputs, out, [g = g_, padded, taps, o]() { blur(padded, taps, o, g); });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[SeparableBlurs] CPU only");
  }

  const char* name() const override { return "SeparableBlurs"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return std::memcmp(&g_, &static_cast<const SeparableBlurs&>(other).g_, sizeof(Geometry)) == 0;
  }

 private:
  Geometry g_;
};

}  // namespace

// padded (N, H + k - 1, W + k - 1, C), taps (B, k) -> (N, H, W, C): the mean of the B blurs.
mx::array separable_blurs(const mx::array& padded, const mx::array& taps) {
  if (padded.ndim() != 4 || taps.ndim() != 2 || taps.shape(1) % 2 == 0 || padded.shape(1) < taps.shape(1) ||
      padded.shape(2) < taps.shape(1))
    throw std::invalid_argument("separable_blurs: padded (N, H + k - 1, W + k - 1, C), taps (B, k) with k odd");
  int k = taps.shape(1);
  Geometry g{padded.shape(0), padded.shape(1) - (k - 1), padded.shape(2) - (k - 1), padded.shape(3), taps.shape(0), k};
  auto stream = mx::default_stream(mx::Device::cpu);
  return mx::array({g.n, g.h, g.w, g.c}, mx::float32, std::make_shared<SeparableBlurs>(stream, g),
                   prepare({padded, taps}));
}

}  // namespace deepdream
