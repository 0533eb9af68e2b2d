// The dream step's update (NHWC, float32) as one MLX primitive: normalise the smoothed gradient over
// the whole image, step, clamp each channel to its valid range:
//   out = min(max(state + scale * (grad - centre) / (spread + eps), low[c]), high[c])
// with centre = mean(grad) and spread its standard deviation ("std"), or centre = 0 and spread
// mean(|grad|) ("mean-abs").
//
// Why native: written with MLX operations (deepdream/transforms.py, deepdream/colour.py) this is
// two reductions and a fused element-wise kernel on one thread, and mx.compile folds the scalar
// square root and division into every element's work, while the per-channel bounds send the fused
// kernel down its general strided path: a sizeable share of a cheap model's step. Here a first
// pass sums on all threads (in double), a second writes the step.

#include "common.h"

namespace deepdream {
namespace {

constexpr double kEps = 1e-8;      // deepdream.transforms.NORMALIZE_EPS

struct Geometry {
  size_t count;       // elements
  int c;              // channels (the last axis): the bounds' length
  int mean_abs;       // 1: "mean-abs", 0: "std"
};

void step(const float* state, const float* grad, const float* scale, const float* low, const float* high, float* out,
          const Geometry& g) {
  size_t pixels = g.count / g.c;
  int parts = std::max(1, std::min(thread_count(), (int)pixels));
  std::vector<double> sums(2 * parts, 0.0);
  parallel_for(parts, [&](int p0, int p1) {
    for (int part = p0; part < p1; ++part) {
      size_t begin = g.count * part / parts, end = g.count * (part + 1) / parts;
      double first = 0.0, second = 0.0;
      if (g.mean_abs)
        for (size_t i = begin; i < end; ++i) first += std::abs(grad[i]);
      else
        for (size_t i = begin; i < end; ++i) {
          double v = grad[i];
          first += v;
          second += v * v;
        }
      sums[2 * part] = first;
      sums[2 * part + 1] = second;
    }
  });
  double first = 0.0, second = 0.0;
  for (int part = 0; part < parts; ++part) {
    first += sums[2 * part];
    second += sums[2 * part + 1];
  }
  double n = (double)g.count, centre = 0.0, spread;
  if (g.mean_abs) {
    spread = first / n;
  } else {
    centre = first / n;
    spread = std::sqrt(std::max(second / n - centre * centre, 0.0));
  }
  float gain = (float)(*scale / (spread + kEps)), shift = (float)centre;
  parallel_for((int)pixels, [&](int begin, int end) {
    for (size_t p = begin; p < (size_t)end; ++p)
      for (int k = 0; k < g.c; ++k) {
        size_t i = p * g.c + k;
        out[i] = std::min(std::max(state[i] + gain * (grad[i] - shift), low[k]), high[k]);
      }
  });
}

class NormalizedStep : public mx::UnaryPrimitive {
 public:
  NormalizedStep(mx::Stream stream, Geometry g) : mx::UnaryPrimitive(stream), g_(g) {}

  // Inputs: state, grad, scale (a scalar), low (C,), high (C,).
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    std::vector<const float*> in;
    for (auto& input : inputs) in.push_back(input.data<float>());
    float* o = allocate(out);
    dispatch(stream(), inputs, out, [g = g_, in, o]() { step(in[0], in[1], in[2], in[3], in[4], o, g); });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[NormalizedStep] CPU only");
  }

  const char* name() const override { return "NormalizedStep"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return std::memcmp(&g_, &static_cast<const NormalizedStep&>(other).g_, sizeof(Geometry)) == 0;
  }

 private:
  Geometry g_;
};

}  // namespace

// state and grad (..., C) of one shape, scale a scalar, low and high (C,).
mx::array normalized_step(const mx::array& state, const mx::array& grad, const mx::array& scale, const mx::array& low,
                          const mx::array& high, bool mean_abs) {
  int c = state.ndim() ? state.shape(-1) : 0;
  if (state.ndim() < 1 || state.shape() != grad.shape() || state.size() == 0 || scale.size() != 1 ||
      low.ndim() != 1 || high.ndim() != 1 || low.shape(0) != c || high.shape(0) != c)
    throw std::invalid_argument("normalized_step: state and grad (..., C) alike, scale a scalar, low and high (C,)");
  Geometry g{state.size(), c, mean_abs ? 1 : 0};
  auto stream = mx::default_stream(mx::Device::cpu);
  return mx::array(state.shape(), mx::float32, std::make_shared<NormalizedStep>(stream, g),
                   prepare({state, grad, mx::reshape(scale, {1}, stream), low, high}));
}

}  // namespace deepdream
