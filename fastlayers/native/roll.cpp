// The dream step's jitter roll (NHWC, float32), and the reflect padding of its gradient smoothing, as
// one MLX primitive: out = reflect_pad(roll(x, start), pad), where roll(x, start)[y, x] =
// x[(y + start_y) % H, (x + start_x) % W] and the padding is torch's "reflect" (the edge not
// repeated; a side shorter than the padding repeats its last reflected sample, as
// deepdream/transforms.py's _reflect_pad_axis does).
//
// Why native: with MLX operations a roll is two concatenations and two dynamic slices, and the
// padding two more concatenations, each a copy on one thread, twice a step (the image forward, the
// gradient back). Here every output row is one copy of at most two runs of a source row (the
// wrap-around) plus the padding's few pixels, rows split over the threads.

#include "common.h"

namespace deepdream {
namespace {

struct Geometry {
  int n, h, w, c, pad;
};

// The sample an index i of a padded axis of n samples reads (i - pad, reflected into [0, n)).
inline int reflected(int i, int n, int pad) {
  int p = std::min(pad, n - 1);
  i -= pad;
  if (i < 0) return std::min(-i, p);
  if (i >= n) return std::max(2 * (n - 1) - i, n - 1 - p);
  return i;
}

void roll_pad(const float* x, const int* start, float* out, const Geometry& g) {
  int sy = ((start[0] % g.h) + g.h) % g.h, sx = ((start[1] % g.w) + g.w) % g.w;
  int hp = g.h + 2 * g.pad, wp = g.w + 2 * g.pad;
  size_t pixel = sizeof(float) * g.c;
  parallel_for(g.n * hp, [&](int begin, int end) {
    for (int row = begin; row < end; ++row) {
      int n = row / hp, y = (reflected(row % hp, g.h, g.pad) + sy) % g.h;
      const float* src = x + ((size_t)n * g.h + y) * g.w * g.c;
      float* dst = out + (size_t)row * wp * g.c;
      // the unpadded columns: source columns sx..w-1, then 0..sx-1
      std::memcpy(dst + (size_t)g.pad * g.c, src + (size_t)sx * g.c, pixel * (g.w - sx));
      std::memcpy(dst + (size_t)(g.pad + g.w - sx) * g.c, src, pixel * sx);
      for (int q = 0; q < g.pad; ++q) {
        std::memcpy(dst + (size_t)q * g.c, src + (size_t)((reflected(q, g.w, g.pad) + sx) % g.w) * g.c, pixel);
        int r = g.pad + g.w + q;
        std::memcpy(dst + (size_t)r * g.c, src + (size_t)((reflected(r, g.w, g.pad) + sx) % g.w) * g.c, pixel);
      }
    }
  });
}

class RollPad : public mx::UnaryPrimitive {
 public:
  RollPad(mx::Stream stream, Geometry g) : mx::UnaryPrimitive(stream), g_(g) {}

  // Inputs: x, start (int32 (2,)).
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const float* x = inputs[0].data<float>();
    const int* start = inputs[1].data<int>();
    float* o = allocate(out);
    dispatch(stream(), inputs, out, [g = g_, x, start, o]() { roll_pad(x, start, o, g); });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[RollPad] CPU only");
  }

  // Without padding a roll's gradient is the opposite roll; the padding's (a scatter) is not needed.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    if (g_.pad) throw std::runtime_error("[RollPad] no gradient of the padding");
    auto stream = mx::default_stream(mx::Device::cpu);
    auto size = mx::array(std::initializer_list<int>{g_.h, g_.w});
    auto back = mx::remainder(mx::subtract(size, primals[1], stream), size, stream);
    std::vector<mx::array> result;
    for (int arg : argnums)
      result.push_back(arg == 0 ? mx::array(primals[0].shape(), mx::float32, std::make_shared<RollPad>(stream, g_),
                                            prepare_int({cotangents[0], back}))
                                : mx::zeros_like(primals[1], stream));
    return result;
  }

  const char* name() const override { return "RollPad"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return std::memcmp(&g_, &static_cast<const RollPad&>(other).g_, sizeof(Geometry)) == 0;
  }

  // The image as contiguous float32, the offsets as contiguous int32.
  static std::vector<mx::array> prepare_int(std::vector<mx::array> inputs) {
    auto stream = mx::default_stream(mx::Device::cpu);
    return {prepare({inputs[0]})[0], mx::contiguous(mx::astype(inputs[1], mx::int32, stream), false, stream)};
  }

 private:
  Geometry g_;
};

}  // namespace

// x (N, H, W, C), start (2,) integers -> (N, H + 2 pad, W + 2 pad, C).
mx::array roll_pad(const mx::array& x, const mx::array& start, int pad) {
  if (x.ndim() != 4 || start.size() != 2 || pad < 0 || x.shape(1) < 1 || x.shape(2) < 1)
    throw std::invalid_argument("roll_pad: x (N, H, W, C), start (2,), pad >= 0");
  Geometry g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), pad};
  auto stream = mx::default_stream(mx::Device::cpu);
  return mx::array({g.n, g.h + 2 * pad, g.w + 2 * pad, g.c}, mx::float32, std::make_shared<RollPad>(stream, g),
                   RollPad::prepare_int({x, mx::reshape(start, {2}, stream)}));
}

}  // namespace deepdream
