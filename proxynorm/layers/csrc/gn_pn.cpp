// GroupNorm + proxy-normalized ReLU/identity in one autograd node, forward and backward in C++.
//
// Labatie et al., NeurIPS 2021, Eq. (7); SPEC.md §2. The same computation and hand-derived
// gradients as _ProxyNormActFunction in fused_proxy_norm.py (whose docstring derives them), for
// the case that dominates PN's eager cost at small batches: the per-layer work that does not depend
// on the batch. Here the proxy statistics (C x n values) are one loop per channel in double
// precision, forward and backward, and the input-sized passes are PyTorch's native kernels, so a
// call costs a few dispatches instead of ~40 Python-level operators.
//
//   u~_i = A q_i + B,  A = w (1 + pw),  B = b + w pb,  z~_i = phi(u~_i)
//   m = mean z~,  r = 1 / sqrt(var z~ + proxy_eps)  (r = 1 without scale)
//   out = phi(w r y + b r) - m r,  y = GroupNorm(x);  for ReLU: max(w r y + (b - m) r, -m r)
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <optional>
#include <vector>

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

std::vector<int64_t> channel_shape(const Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return shape;
}

Tensor as_double(const std::optional<Tensor>& t, int64_t C) {
  return t.has_value() && t->defined() ? t->detach().to(torch::kDouble).contiguous()
                                       : torch::zeros({C}, torch::kDouble);
}

struct Params {
  Tensor w, b, pw, pb, q;  // double, contiguous
};

Params params(const Tensor& w, const Tensor& b, const std::optional<Tensor>& pw,
              const std::optional<Tensor>& pb, const Tensor& q) {
  const int64_t C = w.numel();
  return {w.detach().to(torch::kDouble).contiguous(), b.detach().to(torch::kDouble).contiguous(),
          as_double(pw, C), as_double(pb, C), q.detach().to(torch::kDouble).contiguous()};
}

// m, r (double, (C,)) of the proxy: two passes per channel (population variance).
std::pair<Tensor, Tensor> proxy_stats(const Params& p, bool relu, bool scale, double peps) {
  const int64_t C = p.w.numel(), n = p.q.numel();
  Tensor m = torch::empty({C}, torch::kDouble), r = torch::empty({C}, torch::kDouble);
  const double *w = p.w.data_ptr<double>(), *b = p.b.data_ptr<double>();
  const double *pw = p.pw.data_ptr<double>(), *pb = p.pb.data_ptr<double>();
  const double* q = p.q.data_ptr<double>();
  double *mp = m.data_ptr<double>(), *rp = r.data_ptr<double>();
  for (int64_t c = 0; c < C; ++c) {
    const double A = w[c] * (1.0 + pw[c]), B = b[c] + w[c] * pb[c];
    double s = 0.0;
    const double floor = relu ? 0.0 : -INFINITY;  // phi(u) = max(u, floor): no branch
    for (int64_t i = 0; i < n; ++i) s += std::max(A * q[i] + B, floor);
    const double mean = s / n;
    double v = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = std::max(A * q[i] + B, floor) - mean;
      v += d * d;
    }
    mp[c] = mean;
    rp[c] = scale ? 1.0 / std::sqrt(v / n + peps) : 1.0;
  }
  return {m, r};
}

// PyTorch's native GroupNorm; float32 statistics that overflowed (|x| >~ 1e19 on the contiguous
// CPU kernel) are recomputed in float64, as fused_proxy_norm.group_norm does.
std::tuple<Tensor, Tensor, Tensor> group_norm(const Tensor& x, const Tensor& w, const Tensor& b,
                                              int64_t groups, double eps) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.numel() / (N * C);
  auto res = at::native_group_norm(x, w, b, N, C, HW, groups, eps);
  const Tensor& rstd = std::get<2>(res);
  if (x.scalar_type() == torch::kFloat && rstd.numel() && !(rstd.min().item<float>() > 0.0f)) {
    auto d = at::native_group_norm(x.to(torch::kDouble), w.to(torch::kDouble),
                                   b.to(torch::kDouble), N, C, HW, groups, eps);
    return {std::get<0>(d).to(torch::kFloat), std::get<1>(d).to(torch::kFloat),
            std::get<2>(d).to(torch::kFloat)};
  }
  return res;
}

// dst[i] = src[i] where ref[i] > lo[i or 0], else 0 (also for a NaN src, as threshold_backward).
// Bit masks, not a branch or a ternary: compiled for baseline x86-64 (no -march), a branch
// mispredicts on half the values and the loop runs ~30x slower; this one vectorizes.
template <typename T, bool PerElement>
inline void select_where_above(const T* __restrict__ src, const T* __restrict__ ref,
                               const T* __restrict__ lo, T* __restrict__ dst, int64_t len) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  for (int64_t i = 0; i < len; ++i) {
    U bits;
    std::memcpy(&bits, &src[i], sizeof(T));
    bits &= U(0) - U(ref[i] > lo[PerElement ? i : 0]);
    std::memcpy(&dst[i], &bits, sizeof(T));
  }
}

// One pass over g (contiguous x): go = g where out > -m r (ReLU's mask: u > 0 exactly there, since out is
// clamped at -m r and r > 0; identity: go = g) and gsum = sum of g per channel (in double).
// x, out and the returned go are dense in x's memory format; g is made so. In channels_last the
// channel sums are ATen's reduction (a second, vectorized pass).
std::pair<Tensor, Tensor> masked_grad(const Tensor& g_in, const Tensor& out, const Tensor& mr,
                                      bool relu) {
  const auto fmt = out.suggest_memory_format();
  const Tensor g = g_in.contiguous(fmt);
  const int64_t N = out.size(0), C = out.size(1), HW = out.numel() / (N * C);
  Tensor go = relu ? torch::empty_like(out) : g;
  Tensor gsum = torch::zeros({C}, torch::kDouble);
  double* gs = gsum.data_ptr<double>();
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast && out.dim() == 4;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "masked_grad", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* gop = go.data_ptr<scalar_t>();
    const Tensor lo_t = mr.neg().contiguous();
    const scalar_t* lo = lo_t.data_ptr<scalar_t>();
    if (!channels_last) {  // planes of HW values, one channel each
      const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(N * HW, 1));
      at::parallel_for(0, C, grain, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent lanes: vectorizable
          const scalar_t l = lo[c];
          for (int64_t n = 0; n < N; ++n) {
            const int64_t base = (n * C + c) * HW;
            const scalar_t* gi = gp + base;
            int64_t i = 0;
            for (; i + 8 <= HW; i += 8)
              for (int j = 0; j < 8; ++j) acc[j] += gi[i + j];
            for (; i < HW; ++i) acc[0] += gi[i];
            if (relu) select_where_above<scalar_t, false>(gi, op + base, &l, gop + base, HW);
          }
          gs[c] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        }
      });
    } else {  // rows of C values: the mask here, the channel sums by ATen's reduction
      if (relu)
        at::parallel_for(0, N * HW, 256, [&](int64_t r0, int64_t r1) {
          for (int64_t row = r0; row < r1; ++row)
            select_where_above<scalar_t, true>(gp + row * C, op + row * C, lo, gop + row * C, C);
        });
    }
  });
  if (channels_last) gsum = g.sum({0, 2, 3}).to(torch::kDouble);
  return {go, gsum};
}

struct GroupNormProxyAct : public torch::autograd::Function<GroupNormProxyAct> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, const std::optional<Tensor>& proxy_weight,
                        const std::optional<Tensor>& proxy_bias, const Tensor& quantiles,
                        bool relu, double proxy_eps, bool scale, int64_t groups, double eps) {
    const auto opts = x.options();
    const Tensor xc = x.contiguous(x.suggest_memory_format());
    const Params p = params(weight, bias, proxy_weight, proxy_bias, quantiles);
    auto [m, r] = proxy_stats(p, relu, scale, proxy_eps);
    const Tensor mt = m.to(opts), rt = r.to(opts), wt = weight.detach().to(opts);
    const Tensor bt = bias.detach().to(opts), mr = mt * rt;
    auto [out, mean, rstd] = group_norm(xc, wt * rt, bt * rt - mr, groups, eps);
    if (relu) out.clamp_min_(mr.neg().view(channel_shape(x)));
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_pw"] = proxy_weight.has_value() && proxy_weight->defined();
    ctx->saved_data["has_pb"] = proxy_bias.has_value() && proxy_bias->defined();
    ctx->save_for_backward({xc, p.w, p.b, p.pw, p.pb, p.q, m, r, out, mean, rstd});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &out = saved[8], &mean = saved[9], &rstd = saved[10];
    const Params p{saved[1], saved[2], saved[3], saved[4], saved[5]};
    const Tensor &m = saved[6], &r = saved[7];
    const bool relu = ctx->saved_data["relu"].toBool(), scale = ctx->saved_data["scale"].toBool();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const auto opts = x.options();
    const int64_t N = x.size(0), C = x.size(1), HW = x.numel() / (N * C), n = p.q.numel();

    const Tensor rt = r.to(opts);
    // m r exactly as forward computed it (the clamp value): the mask compares against it
    auto [go, gsum] = masked_grad(grads[0], out, m.to(opts) * rt, relu);  // go = g phi'(u), sum of g
    auto [gx, gw_y, gb_y] = at::native_group_norm_backward(
        go, x, mean, rstd, p.w.to(opts) * rt, N, C, HW, groups,
        {ctx->needs_input_grad(0), true, true});
    const Tensor gw = gw_y.to(torch::kDouble).contiguous(), gb = gb_y.to(torch::kDouble).contiguous();

    Tensor grad_w = torch::empty({C}, torch::kDouble), grad_b = torch::empty({C}, torch::kDouble);
    Tensor grad_pw = torch::empty({C}, torch::kDouble), grad_pb = torch::empty({C}, torch::kDouble);
    const double *w = p.w.data_ptr<double>(), *b = p.b.data_ptr<double>();
    const double *pw = p.pw.data_ptr<double>(), *pb = p.pb.data_ptr<double>();
    const double *q = p.q.data_ptr<double>(), *mp = m.data_ptr<double>(), *rp = r.data_ptr<double>();
    const double *gs = gsum.data_ptr<double>(), *gwp = gw.data_ptr<double>(), *gbp = gb.data_ptr<double>();
    double *ow = grad_w.data_ptr<double>(), *ob = grad_b.data_ptr<double>();
    double *opw = grad_pw.data_ptr<double>(), *opb = grad_pb.data_ptr<double>();
    for (int64_t c = 0; c < C; ++c) {
      const double rc = rp[c], mc = mp[c];
      // dL/dr = sum g (phi(u) - m) = w sum go y + b sum go - m sum g (phi homogeneous)
      const double grad_r = w[c] * gwp[c] + b[c] * gbp[c] - mc * gs[c];
      const double grad_m = -rc * gs[c];
      const double coef = scale ? -rc * rc * rc * grad_r : 0.0;  // 2 dL/dvar
      const double A = w[c] * (1.0 + pw[c]), B = b[c] + w[c] * pb[c];
      double gA = 0.0, gB = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const double u = A * q[i] + B;
        const double on = relu ? static_cast<double>(u > 0.0) : 1.0;  // phi'(u~)
        const double du = on * (grad_m + coef * (u - mc)) / n;  // z~ = u~ where phi' = 1
        gA += du * q[i];
        gB += du;
      }
      ow[c] = rc * gwp[c] + gA * (1.0 + pw[c]) + gB * pb[c];
      ob[c] = rc * gbp[c] + gB;
      opw[c] = w[c] * gA;
      opb[c] = w[c] * gB;
    }
    const bool has_pw = ctx->saved_data["has_pw"].toBool(), has_pb = ctx->saved_data["has_pb"].toBool();
    auto cast = [&](const Tensor& t, int64_t i) {
      return ctx->needs_input_grad(i) ? t.to(opts) : Tensor();
    };
    return {gx,
            cast(grad_w, 1),
            cast(grad_b, 2),
            has_pw ? cast(grad_pw, 3) : Tensor(),
            has_pb ? cast(grad_pb, 4) : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor group_norm_proxy_act(const Tensor& x, const Tensor& weight, const Tensor& bias,
                            const std::optional<Tensor>& proxy_weight,
                            const std::optional<Tensor>& proxy_bias, const Tensor& quantiles,
                            bool relu, double proxy_eps, bool scale, int64_t groups, double eps) {
  return GroupNormProxyAct::apply(x, weight, bias, proxy_weight, proxy_bias, quantiles, relu,
                                  proxy_eps, scale, groups, eps);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("group_norm_proxy_act", &group_norm_proxy_act,
             "GroupNorm + proxy-normalized ReLU/identity (Eq. 7), one autograd node");
}
