// Shared by the native kernels: the loop splitter and the headers every primitive needs.
#pragma once

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
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

// The three evaluations of an operation with inputs (x, weights, bias): the forward and its two gradients.
enum class Kind { Forward, InputGrad, WeightGrad };

// One MLX primitive per such operation (the convolutions), its gradients being two more kinds of
// the same primitive. `Op` supplies the `Geometry` (a plain struct), `name`, `gpu_alternative`,
// `shape(kind, g)` and the three loops: forward(x, w, w_buffer, bias, out, g), input_grad(grad, w, w_buffer,
// dx, g), weight_grad(x, grad, dw, g).
template <typename Op>
class WeightedPrimitive : public mx::UnaryPrimitive {
 public:
  using Geometry = typename Op::Geometry;

  WeightedPrimitive(mx::Stream stream, Kind kind, Geometry geometry)
      : mx::UnaryPrimitive(stream), kind_(kind), g_(geometry) {}

  static mx::array make(Kind kind, const Geometry& g, std::vector<mx::array> inputs) {
    auto stream = mx::default_stream(mx::Device::cpu);
    return mx::array(Op::shape(kind, g), mx::float32, std::make_shared<WeightedPrimitive>(stream, kind, g),
                     prepare(std::move(inputs)));
  }

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const float* a = inputs[0].data<float>();
    const float* b = inputs[1].data<float>();
    const float* bias = inputs.size() > 2 ? inputs[2].data<float>() : nullptr;
    float* o = allocate(out);
    WeightsBuffer w_buffer = kind_ == Kind::WeightGrad ? nullptr : inputs[1].data_shared_ptr();
    dispatch(stream(), inputs, out, [kind = kind_, g = g_, a, b, w_buffer, bias, o]() {
      if (kind == Kind::Forward) Op::forward(a, b, w_buffer, bias, o, g);
      else if (kind == Kind::InputGrad) Op::input_grad(a, b, w_buffer, o, g);
      else Op::weight_grad(a, b, o, g);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error(std::string("[") + Op::name + "] CPU only; on the GPU use " + Op::gpu_alternative);
  }

  // Forward only: inputs (x, w, bias). Second derivatives are not needed for dreaming or training.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    if (kind_ != Kind::Forward) throw std::runtime_error(std::string("[") + Op::name + "] no second derivative");
    const auto& grad = cotangents[0];
    std::vector<mx::array> result;
    for (int arg : argnums) {
      if (arg == 0) result.push_back(make(Kind::InputGrad, g_, {grad, primals[1]}));
      else if (arg == 1) result.push_back(make(Kind::WeightGrad, g_, {primals[0], grad}));
      else result.push_back(mx::sum(grad, {0, 1, 2}, false, stream()));
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
                           int top, int left, int out_h, int out_w);
bool has_sgemm();
mx::array conv2d(const mx::array& x, const mx::array& w, const mx::array& bias, int top, int left, int oh, int ow);
mx::array max_pool2d(const mx::array& x, int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w);
mx::array avg_pool2d(const mx::array& x, int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w,
                     bool count_include_pad);

}  // namespace deepdream
