// Shared by the native kernels: the loop splitter and the headers every primitive needs.
#pragma once

#include <algorithm>
#include <limits>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

namespace deepdream {

namespace mx = mlx::core;

// Run body(begin, end) over [0, count), split across the cores.
template <typename F>
void parallel_for(int count, F body) {
  int threads = std::max(1, std::min<int>(std::thread::hardware_concurrency(), count));
  if (threads == 1) {
    body(0, count);
    return;
  }
  std::vector<std::thread> pool;
  int chunk = (count + threads - 1) / threads;
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

mx::array depthwise_conv2d(const mx::array& x, const mx::array& taps, const mx::array& bias, int stride,
                           int top, int left, int out_h, int out_w);
bool has_sgemm();
mx::array conv2d(const mx::array& x, const mx::array& w, const mx::array& bias, int top, int left, int oh, int ow);
mx::array max_pool2d(const mx::array& x, int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w);
mx::array avg_pool2d(const mx::array& x, int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w,
                     bool count_include_pad);

}  // namespace deepdream
