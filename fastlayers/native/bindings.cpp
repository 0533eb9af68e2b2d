// The Python module fastlayers.native._native: one function per kernel (see fastlayers/native/__init__.py).
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include "conv.h"

namespace nb = nanobind;

NB_MODULE(_native, m) {
  m.doc() = "Native CPU kernels for DeepDream-MLX (MLX primitives; see fastlayers/native/__init__.py)";
  m.attr("ACTIVATIONS") = nb::make_tuple("linear", "relu", "relu6");   // the kernels' `act`, by index
  m.def("depthwise_conv2d", &deepdream::depthwise_conv2d, nb::arg("x"), nb::arg("taps"), nb::arg("bias"),
        nb::arg("stride"), nb::arg("top"), nb::arg("left"), nb::arg("out_h"), nb::arg("out_w"), nb::arg("act") = 0,
        "Depthwise convolution of x (N, H, W, C) with taps (kh, kw, C) plus bias (C,), zero-padded, then the "
        "activation ACTIVATIONS[act].");
  m.def("conv2d", &deepdream::conv2d, nb::arg("x"), nb::arg("w"), nb::arg("bias"), nb::arg("top"), nb::arg("left"),
        nb::arg("out_h"), nb::arg("out_w"), nb::arg("act") = 0, nb::arg("residual") = nb::none(),
        nb::arg("stride") = 1,
        "Convolution of x (N, H, W, C_in) with w (C_out, kh, kw, C_in) plus bias (and residual, shaped like the "
        "output), zero-padded, then the activation ACTIVATIONS[act].");
  m.def("has_sgemm", &deepdream::has_sgemm, "Whether the process has a cblas_sgemm for conv2d.");
  m.def(
      "set_threads", [](int n) { deepdream::thread_setting = n; }, nb::arg("n"),
      "How many threads the kernels split their work over (fastlayers.threads.count()).");
  m.def("thread_count", &deepdream::thread_count, "How many threads the kernels split their work over.");
  m.def(
      "parallel_runtime", [] { return deepdream::omp_parallel() ? "openmp" : "threads"; },
      "What runs the kernels' parallel loops now: the process's OpenMP runtime (the BLAS's team), or plain threads.");
  m.def(
      "conv2d_uses_winograd",
      [](int c_in, int c_out, int kh, int kw, int out_h, int out_w) {
        return deepdream::winograd_applies({1, out_h, out_w, c_in, out_h, out_w, c_out, kh, kw, 0, 0, 0, 0, 1});
      },
      nb::arg("c_in"), nb::arg("c_out"), nb::arg("kh"), nb::arg("kw"), nb::arg("out_h"), nb::arg("out_w"),
      "Whether conv2d runs this shape with Winograd's F(4x4, 3x3) (winograd.cpp) rather than shifted products.");
  m.def("winograd_cached_kernels", &deepdream::winograd_cached_kernels,
        "How many transformed 3x3 kernels are cached (one per weight array still alive that conv2d used).");
  m.def("concat_channels", &deepdream::concat_channels, nb::arg("arrays"),
        "The arrays' last dimension (NHWC channels) side by side; its gradient splits (both copies on all threads).");
  m.def("separable_blurs", &deepdream::separable_blurs, nb::arg("padded"), nb::arg("taps"),
        "The mean of B separable blurs (taps (B, k)) of an image padded by (k - 1) / 2 on every side (no gradient).");
  m.def("roll_pad", &deepdream::roll_pad, nb::arg("x"), nb::arg("start"), nb::arg("pad"),
        "x (N, H, W, C) rolled so that pixel start = (row, column) comes first, then reflect-padded by pad on "
        "every side (the roll's gradient is the opposite roll; the padding has none).");
  m.def("normalized_step", &deepdream::normalized_step, nb::arg("state"), nb::arg("grad"), nb::arg("scale"),
        nb::arg("low"), nb::arg("high"), nb::arg("mean_abs"),
        "clip(state + scale * normalised grad, low, high) per channel; grad normalised by its mean and standard "
        "deviation, or (mean_abs) by its mean absolute value (no gradient).");
  m.def("max_pool2d", &deepdream::max_pool2d, nb::arg("x"), nb::arg("kh"), nb::arg("kw"), nb::arg("sh"),
        nb::arg("sw"), nb::arg("ph"), nb::arg("pw"), nb::arg("out_h"), nb::arg("out_w"),
        "torch's max_pool2d on x (N, H, W, C): -inf padding, the first maximum wins ties.");
  m.def("avg_pool2d", &deepdream::avg_pool2d, nb::arg("x"), nb::arg("kh"), nb::arg("kw"), nb::arg("sh"),
        nb::arg("sw"), nb::arg("ph"), nb::arg("pw"), nb::arg("out_h"), nb::arg("out_w"),
        nb::arg("count_include_pad"), "torch's avg_pool2d on x (N, H, W, C), with torch's divisor.");
}
