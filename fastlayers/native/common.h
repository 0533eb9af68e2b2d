// Shared by the native kernels: the loop splitter and the headers every primitive needs.
#pragma once

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace deepdream {

namespace mx = mlx::core;

// How many threads the kernels split their work over: fastlayers.threads.count(), handed over by
// fastlayers/native/__init__.py when it loads the module (the BLAS reads the same setting).
inline std::atomic<int> thread_setting{0};

inline int thread_count() {
  int n = thread_setting.load(std::memory_order_relaxed);
  return n > 0 ? n : std::max(1u, std::thread::hardware_concurrency());
}

// The OpenMP runtime's entry point for a parallel region, from the process (MKL's libiomp5 brings
// one, and so does torch's libgomp): null until a runtime is loaded.
using OmpParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);

inline OmpParallel omp_parallel() {
  static std::atomic<OmpParallel> found{nullptr};
  OmpParallel fn = found.load(std::memory_order_acquire);
  if (!fn) {
    fn = reinterpret_cast<OmpParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    if (fn) found.store(fn, std::memory_order_release);
  }
  return fn;
}

// Run body(begin, end) over [0, count), split into thread_count() chunks.
//
// On the BLAS's own OpenMP threads when there are some: MKL's threads spin for a while after
// each product, so a second pool (threads of our own) would fight them for the same cores while
// they spin, whereas the runtime's team picks our chunks up at once. Whatever team size the
// runtime grants, each member takes chunks until none is left, so every chunk runs exactly once.
// Without an OpenMP runtime in the process (OpenBLAS's pthreads build, a BLAS-less test), plain
// threads run the chunks.
template <typename F>
void parallel_for(int count, F body) {
  int threads = std::max(1, std::min(thread_count(), count));
  if (threads == 1) {
    body(0, count);
    return;
  }
  int chunk = (count + threads - 1) / threads;
  if (OmpParallel region = omp_parallel()) {
    struct Shared {
      F* body;
      int count, chunk, chunks;
      std::atomic<int> next{0};
    } shared{&body, count, chunk, (count + chunk - 1) / chunk};
    region(
        [](void* data) {
          auto* s = static_cast<Shared*>(data);
          for (int c; (c = s->next.fetch_add(1)) < s->chunks;)
            (*s->body)(c * s->chunk, std::min(s->count, (c + 1) * s->chunk));
        },
        &shared, static_cast<unsigned>(threads), 0);
    return;
  }
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    int begin = t * chunk, end = std::min(count, begin + chunk);
    if (begin < end) pool.emplace_back(body, begin, end);
  }
  body(0, std::min(count, chunk));
  for (auto& thread : pool) thread.join();
}

// The output's buffer, allocated (eval_cpu must call this before taking any pointer into it).
inline float* allocate(mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  return out.data<float>();
}

// The CPU stream's encoder runs `work` after the inputs are ready and keeps them alive meanwhile.
template <typename F>
void dispatch(mx::Stream stream, const std::vector<mx::array>& inputs, mx::array& out, F work) {
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (auto& input : inputs) encoder.set_input_array(input);
  encoder.set_output_array(out);
  encoder.dispatch(std::move(work));
}

// Row-contiguous float32 copies on the CPU stream (no-ops for arrays that already are).
inline std::vector<mx::array> prepare(std::vector<mx::array> inputs) {
  auto stream = mx::default_stream(mx::Device::cpu);
  for (auto& input : inputs) input = mx::contiguous(mx::astype(input, mx::float32, stream), false, stream);
  return inputs;
}

// The buffer the weights live in: what an operation keys anything it derives from them on (conv.cpp's
// Winograd kernels), since MLX never changes a buffer that someone else still holds.
using WeightsBuffer = std::shared_ptr<mx::array::Data>;

// What a convolution applies to its result in the same pass that writes it:
// out = activation(conv + bias [+ residual]).
enum Activation : int { kLinear = 0, kReLU = 1, kReLU6 = 2 };

template <int kAct>
inline float activate(float v) {
  if constexpr (kAct == kReLU) return std::max(v, 0.0f);
  else if constexpr (kAct == kReLU6) return std::min(std::max(v, 0.0f), 6.0f);
  else return v;
}

// Whether the activation passes the gradient at output y (torch's rules: ReLU where its output is
// positive, ReLU6 strictly inside (0, 6); the output decides exactly where the input would).
template <int kAct>
inline bool passes(float y) {
  if constexpr (kAct == kReLU) return y > 0.0f;
  else if constexpr (kAct == kReLU6) return y > 0.0f && y < 6.0f;
  else return true;
}

// Calls body(std::integral_constant<int, act>) for the runtime activation: the loops are compiled
// once per activation, so none of them branches per element.
template <typename F>
inline void with_activation(int act, F body) {
  if (act == kReLU) body(std::integral_constant<int, kReLU>{});
  else if (act == kReLU6) body(std::integral_constant<int, kReLU6>{});
  else body(std::integral_constant<int, kLinear>{});
}

// o[k] = activation(a[k] + bias[k] + residual[k]), k < count; bias and residual may be null, o may be a.
inline void epilogue(float* o, const float* a, const float* bias, const float* residual, int count, int act) {
  with_activation(act, [&](auto kind) {
    constexpr int kAct = decltype(kind)::value;
    if (bias && residual)
      for (int k = 0; k < count; ++k) o[k] = activate<kAct>(a[k] + bias[k] + residual[k]);
    else if (bias)
      for (int k = 0; k < count; ++k) o[k] = activate<kAct>(a[k] + bias[k]);
    else if (residual)
      for (int k = 0; k < count; ++k) o[k] = activate<kAct>(a[k] + residual[k]);
    else
      for (int k = 0; k < count; ++k) o[k] = activate<kAct>(a[k]);
  });
}

// d[k] = g[k] where the activation passed the gradient at y[k], else 0; y null: a plain copy.
inline void masked_copy(float* __restrict d, const float* __restrict g, const float* __restrict y, int count,
                        int act) {
  if (!y || act == kLinear) {
    std::memcpy(d, g, sizeof(float) * count);
    return;
  }
  with_activation(act, [&](auto kind) {
    constexpr int kAct = decltype(kind)::value;
    for (int k = 0; k < count; ++k) d[k] = passes<kAct>(y[k]) ? g[k] : 0.0f;
  });
}

// The gradient before the activation, g * activation'(y), over `count` elements, split over the threads.
inline void activation_grad(const float* g, const float* y, float* out, size_t count, int act) {
  constexpr size_t kBlock = 1 << 14;
  parallel_for((int)((count + kBlock - 1) / kBlock), [&](int b0, int b1) {
    size_t begin = b0 * kBlock, end = std::min(count, b1 * kBlock);
    masked_copy(out + begin, g + begin, y + begin, (int)(end - begin), act);
  });
}

// The evaluations of an operation with inputs (x, weights, bias[, residual]): the forward, its two
// gradients, and the gradient before its activation where that must exist as an array of its own.
enum class Kind { Forward, InputGrad, WeightGrad, ActivationGrad };

// One MLX primitive per such operation (the convolutions), its gradients being more kinds of the
// same primitive. `Op` supplies the `Geometry` (a plain struct with `act` and `residual` fields),
// `name`, `gpu_alternative`, `shape(kind, g)` and three loops: forward(x, w, w_buffer, bias, residual,
// out, g), input_grad(grad, w, w_buffer, y, dx, g), weight_grad(x, grad, y, dw, g). A non-null y in the
// gradients means the gradient arrives after the activation: the loop masks it by y as it reads it.
template <typename Op>
class WeightedPrimitive : public mx::UnaryPrimitive {
 public:
  using Geometry = typename Op::Geometry;

  WeightedPrimitive(mx::Stream stream, Kind kind, Geometry geometry)
      : mx::UnaryPrimitive(stream), kind_(kind), g_(geometry) {}

  static mx::array make(Kind kind, const Geometry& g, std::vector<mx::array> inputs) {
    auto stream = mx::default_stream(mx::Device::cpu);
    auto shape = Op::shape(kind == Kind::ActivationGrad ? Kind::Forward : kind, g);
    return mx::array(shape, mx::float32, std::make_shared<WeightedPrimitive>(stream, kind, g),
                     prepare(std::move(inputs)));
  }

  // Inputs by kind: Forward (x, w, bias[, residual]); InputGrad (grad, w[, y]); WeightGrad (x, grad[, y]);
  // ActivationGrad (grad, y).
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    std::vector<const float*> in;
    for (auto& input : inputs) in.push_back(input.data<float>());
    float* o = allocate(out);
    bool weights = kind_ == Kind::Forward || kind_ == Kind::InputGrad;
    WeightsBuffer w_buffer = weights ? inputs[1].data_shared_ptr() : nullptr;
    dispatch(stream(), inputs, out, [kind = kind_, g = g_, in, w_buffer, o, size = out.size()]() {
      const float* third = in.size() > 2 ? in[2] : nullptr;
      switch (kind) {
        case Kind::Forward: Op::forward(in[0], in[1], w_buffer, third, in.size() > 3 ? in[3] : nullptr, o, g); break;
        case Kind::InputGrad: Op::input_grad(in[0], in[1], w_buffer, third, o, g); break;
        case Kind::WeightGrad: Op::weight_grad(in[0], in[1], third, o, g); break;
        case Kind::ActivationGrad: activation_grad(in[0], in[1], o, size, g.act); break;
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error(std::string("[") + Op::name + "] CPU only; on the GPU use " + Op::gpu_alternative);
  }

  // Forward only: inputs (x, w, bias[, residual]). Second derivatives are not needed for dreaming or training.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override {
    if (kind_ != Kind::Forward) throw std::runtime_error(std::string("[") + Op::name + "] no second derivative");
    bool act = g_.act != kLinear;
    // The bias's and the residual's gradients are the masked gradient itself: then it is made once,
    // and the convolution's gradients read it; else they mask the gradient as they read it.
    bool shared = act && std::any_of(argnums.begin(), argnums.end(), [](int arg) { return arg >= 2; });
    mx::array grad = shared ? make(Kind::ActivationGrad, g_, {cotangents[0], outputs[0]}) : cotangents[0];
    auto reading = [&](std::vector<mx::array> inputs) {
      if (act && !shared) inputs.push_back(outputs[0]);
      return inputs;
    };
    std::vector<mx::array> result;
    for (int arg : argnums) {
      if (arg == 0) result.push_back(make(Kind::InputGrad, g_, reading({grad, primals[1]})));
      else if (arg == 1) result.push_back(make(Kind::WeightGrad, g_, reading({primals[0], grad})));
      else if (arg == 2) result.push_back(mx::sum(grad, {0, 1, 2}, false, stream()));
      else result.push_back(grad);
    }
    return result;
  }

  const char* name() const override { return Op::name; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const WeightedPrimitive&>(other);
    return kind_ == o.kind_ && std::memcmp(&g_, &o.g_, sizeof(Geometry)) == 0;
  }

 private:
  Kind kind_;
  Geometry g_;
};

mx::array depthwise_conv2d(const mx::array& x, const mx::array& taps, const mx::array& bias, int stride,
                           int top, int left, int out_h, int out_w, int act);
bool has_sgemm();
mx::array conv2d(const mx::array& x, const mx::array& w, const mx::array& bias, int top, int left, int oh, int ow,
                 int act, const std::optional<mx::array>& residual, int stride);
mx::array concat_channels(const std::vector<mx::array>& arrays);
mx::array separable_blurs(const mx::array& padded, const mx::array& taps);
mx::array roll_pad(const mx::array& x, const mx::array& start, int pad);
mx::array normalized_step(const mx::array& state, const mx::array& grad, const mx::array& scale, const mx::array& low,
                          const mx::array& high, bool mean_abs);
mx::array max_pool2d(const mx::array& x, int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w);
mx::array avg_pool2d(const mx::array& x, int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w,
                     bool count_include_pad);

}  // namespace deepdream
