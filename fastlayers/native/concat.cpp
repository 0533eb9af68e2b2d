// Concatenation along the channels of NHWC maps, and its gradient (the split into the parts), as
// MLX primitives: each one copy split over the threads.
//
// Why native: MLX's concatenate is a copy on one thread, and the gradient's parts are slices
// (strided views) which the native kernels that read them first copy to contiguous arrays, again
// on one thread. Every Inception block does both, on its largest maps.

#include <numeric>

#include "common.h"

namespace deepdream {
namespace {

// Pixels of the maps, and each part's channel count.
struct Parts {
  size_t pixels;
  std::vector<int> channels;
  int total() const { return std::accumulate(channels.begin(), channels.end(), 0); }
};

// Pixel blocks of this many floats of output per task: enough work per task to pay for it.
constexpr size_t kTaskFloats = 1 << 15;

// Copies between the whole (pixels, total) and the parts (pixels, channels[i]): into the whole when
// `gather`, else out of it.
void copy(const Parts& parts, bool gather, float* whole, const std::vector<float*>& pieces) {
  int total = parts.total();
  size_t per_task = std::max<size_t>(1, kTaskFloats / std::max(1, total));
  int tasks = (int)((parts.pixels + per_task - 1) / per_task);
  parallel_for(tasks, [&](int t0, int t1) {
    for (size_t p = t0 * per_task; p < std::min(parts.pixels, t1 * per_task); ++p) {
      float* row = whole + p * total;
      for (size_t i = 0; i < pieces.size(); ++i) {
        int c = parts.channels[i];
        float* piece = pieces[i] + p * c;
        if (gather) std::memcpy(row, piece, sizeof(float) * c);
        else std::memcpy(piece, row, sizeof(float) * c);
        row += c;
      }
    }
  });
}

Parts parts_of(const std::vector<mx::array>& arrays) {
  Parts parts{arrays[0].size() / arrays[0].shape(-1), {}};
  for (auto& a : arrays) parts.channels.push_back(a.shape(-1));
  return parts;
}

mx::Shape with_channels(mx::Shape shape, int channels) {
  shape.back() = channels;
  return shape;
}

mx::array concat(std::vector<mx::array> arrays);

class Split : public mx::Primitive {
 public:
  Split(mx::Stream stream, std::vector<int> channels) : mx::Primitive(stream), channels_(std::move(channels)) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const float* whole = inputs[0].data<float>();
    std::vector<float*> pieces;
    for (auto& out : outputs) pieces.push_back(allocate(out));
    Parts parts{inputs[0].size() / inputs[0].shape(-1), channels_};
    auto& encoder = mx::cpu::get_command_encoder(stream());
    encoder.set_input_array(inputs[0]);
    for (auto& out : outputs) encoder.set_output_array(out);
    encoder.dispatch([parts, whole, pieces]() { copy(parts, false, const_cast<float*>(whole), pieces); });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("[SplitChannels] CPU only; on the GPU use slices");
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>& cotangents,
                             const std::vector<int>&, const std::vector<mx::array>&) override {
    return {concat(cotangents)};
  }

  const char* name() const override { return "SplitChannels"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return channels_ == static_cast<const Split&>(other).channels_;
  }

 private:
  std::vector<int> channels_;
};

std::vector<mx::array> split(const mx::array& whole, const std::vector<int>& channels) {
  auto stream = mx::default_stream(mx::Device::cpu);
  std::vector<mx::Shape> shapes;
  for (int c : channels) shapes.push_back(with_channels(whole.shape(), c));
  return mx::array::make_arrays(std::move(shapes), std::vector<mx::Dtype>(channels.size(), mx::float32),
                                std::make_shared<Split>(stream, channels), prepare({whole}));
}

class Concat : public mx::UnaryPrimitive {
 public:
  explicit Concat(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    std::vector<float*> pieces;
    for (auto& input : inputs) pieces.push_back(const_cast<float*>(input.data<float>()));
    float* whole = allocate(out);
    dispatch(stream(), inputs, out, [parts = parts_of(inputs), whole, pieces]() { copy(parts, true, whole, pieces); });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[ConcatChannels] CPU only; on the GPU use mx.concatenate");
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    std::vector<int> channels;
    for (auto& p : primals) channels.push_back(p.shape(-1));
    auto parts = split(cotangents[0], channels);
    std::vector<mx::array> result;
    for (int arg : argnums) result.push_back(parts[arg]);
    return result;
  }

  const char* name() const override { return "ConcatChannels"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

mx::array concat(std::vector<mx::array> arrays) {
  int total = 0;
  for (auto& a : arrays) total += a.shape(-1);
  auto stream = mx::default_stream(mx::Device::cpu);
  auto shape = with_channels(arrays[0].shape(), total);    // before the arrays move into the primitive
  return mx::array(std::move(shape), mx::float32, std::make_shared<Concat>(stream), prepare(std::move(arrays)));
}

}  // namespace

// The maps' channels side by side: (..., C_i) arrays with equal leading dimensions -> (..., sum C_i).
mx::array concat_channels(const std::vector<mx::array>& arrays) {
  if (arrays.empty()) throw std::invalid_argument("concat_channels: no arrays");
  for (auto& a : arrays)
    if (a.ndim() != arrays[0].ndim() || a.ndim() < 1 ||
        !std::equal(a.shape().begin(), a.shape().end() - 1, arrays[0].shape().begin()))
      throw std::invalid_argument("concat_channels: the arrays differ in more than their last dimension");
  return concat(arrays);
}

}  // namespace deepdream
