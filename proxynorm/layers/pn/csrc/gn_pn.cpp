// GroupNorm + proxy-normalized ReLU/identity in one autograd node, forward and backward in C++.
//
// Labatie et al., NeurIPS 2021, Eq. (7); docs/METHOD.md §2. The same computation and hand-derived
// gradients as _ProxyNormActFunction in pn/fused.py (whose docstring derives them), for
// the case that dominates PN's eager cost at small batches: the per-layer work that does not depend
// on the batch. Here the proxy statistics of the C x n values and their gradients are closed
// forms over prefix sums of the sorted quantiles (O(C log n), double precision), the ReLU mask and
// the channel sums of the gradient one branch-free pass, and the rest PyTorch's native GroupNorm
// kernels, so a call costs a few dispatches instead of ~40 Python-level operators.
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
#include <mutex>
#include <type_traits>
#include <optional>
#include <vector>

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// The layouts the kernel works in: 4-D channels_last as given, everything else contiguous (a 5-D
// channels_last_3d input is copied).
at::MemoryFormat layout(const Tensor& x) {
  return x.dim() == 4 && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

std::vector<int64_t> channel_shape(const Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return shape;
}

// A (C,) tensor of any floating dtype as doubles (zeros for an absent optional one).
std::vector<double> to_vec(const Tensor& t) {
  const Tensor tc = t.detach().contiguous();
  std::vector<double> v(tc.numel());
  AT_DISPATCH_FLOATING_TYPES(tc.scalar_type(), "to_vec", [&] {
    const scalar_t* src = tc.data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(src[i]);
  });
  return v;
}

std::vector<double> to_vec(const std::optional<Tensor>& t, int64_t C) {
  return t.has_value() && t->defined() ? to_vec(*t) : std::vector<double>(C, 0.0);
}

// A (C,) tensor with ``options`` (rounded once from double).
Tensor from_vec(const std::vector<double>& v, const at::TensorOptions& options) {
  Tensor t = torch::empty({static_cast<int64_t>(v.size())}, options);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "from_vec", [&] {
    scalar_t* dst = t.data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) dst[i] = static_cast<scalar_t>(v[i]);
  });
  return t;
}

// γ, β, γ~, β~ in double, with u~ = A q + B: A = γ (1 + γ~), B = β + γ β~.
struct Params {
  std::vector<double> w, b, pw, pb;
  Params(const Tensor& weight, const Tensor& bias, const std::optional<Tensor>& proxy_weight,
         const std::optional<Tensor>& proxy_bias)
      : w(to_vec(weight)), b(to_vec(bias)), pw(to_vec(proxy_weight, weight.numel())),
        pb(to_vec(proxy_bias, weight.numel())) {}
  int64_t C() const { return static_cast<int64_t>(w.size()); }
  double A(int64_t c) const { return w[c] * (1.0 + pw[c]); }
  double B(int64_t c) const { return b[c] + w[c] * pb[c]; }
};

// The quantiles in ascending order with prefix sums of q and q^2. phi = ReLU is zero below
// its kink and linear above it, and u~ = A q + B is monotone in q, so the proxy's sums over the
// active quantiles (u~_i > 0) are differences of prefix sums: O(log n) per channel instead of
// O(n), forward and backward. The sums do not depend on the quantiles' order (sorted if needed).
struct Quantiles {
  std::vector<double> q, p1, p2;  // sorted q; p1[k] = sum_{i<k} q_i, p2[k] = sum_{i<k} q_i^2
  explicit Quantiles(const Tensor& qt) : q(to_vec(qt)) {
    if (!std::is_sorted(q.begin(), q.end())) std::sort(q.begin(), q.end());
    p1.assign(q.size() + 1, 0.0);
    p2.assign(q.size() + 1, 0.0);
    for (size_t i = 0; i < q.size(); ++i) {
      p1[i + 1] = p1[i] + q[i];
      p2[i + 1] = p2[i] + q[i] * q[i];
    }
  }
  int64_t n() const { return static_cast<int64_t>(q.size()); }
};

// Over the quantiles where phi'(u~) = 1 (all of them for identity; u~ > 0 exactly, as the
// Python path's mask, for ReLU): their count and the sums of q and q^2.
struct Active {
  double cnt, s1, s2;
};

Active active(const Quantiles& qs, double A, double B, bool relu) {
  const int64_t n = qs.n();
  int64_t lo = 0, hi = n;
  if (relu) {
    const auto pos = [&](double v) { return A * v + B > 0.0; };  // monotone in v
    if (A > 0.0)
      lo = std::partition_point(qs.q.begin(), qs.q.end(), [&](double v) { return !pos(v); }) -
           qs.q.begin();
    else if (A < 0.0)
      hi = std::partition_point(qs.q.begin(), qs.q.end(), pos) - qs.q.begin();
    else if (!(B > 0.0))
      hi = 0;
  }
  return {static_cast<double>(hi - lo), qs.p1[hi] - qs.p1[lo], qs.p2[hi] - qs.p2[lo]};
}

// m and r (double, per channel) of the proxy, the population variance in a centered form
// (c = B - m): n var = sum_active (A q + c)^2 + (n - cnt) m^2
//                    = A^2 s2 + 2 A c s1 + c^2 cnt + (n - cnt) m^2.
struct Stats {
  std::vector<double> m, r;
  std::vector<Active> active;  // per channel, for the backward's closed form too
};

Stats proxy_stats(const Params& p, const Quantiles& qs, bool relu, bool scale, double peps) {
  const int64_t C = p.C();
  const double n = static_cast<double>(qs.n());
  Stats st{std::vector<double>(C), std::vector<double>(C), std::vector<Active>(C)};
  for (int64_t c = 0; c < C; ++c) {
    const double A = p.A(c), B = p.B(c);
    if (std::isnan(A) || std::isnan(B)) {  // as phi(NaN) = NaN on the Python path
      st.m[c] = st.r[c] = std::nan("");
      continue;
    }
    const Active a = st.active[c] = active(qs, A, B, relu);
    const double mean = (A * a.s1 + B * a.cnt) / n, cc = B - mean;
    const double var =
        (A * A * a.s2 + 2.0 * A * cc * a.s1 + cc * cc * a.cnt + (n - a.cnt) * mean * mean) / n;
    st.m[c] = mean;
    st.r[c] = scale ? 1.0 / std::sqrt(std::max(var, 0.0) + peps) : 1.0;
  }
  return st;
}

// PyTorch's native GroupNorm; float32 statistics that overflowed (|x| >~ 1e19 on the contiguous
// CPU kernel) are recomputed in float64, as kernels.group_norm does.
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

// One pass over g: go = g where out > lo = -m r (ReLU's mask: u > 0 exactly there,
// since out was clamped at lo and r > 0; identity: go = g) and the sum of g per channel (double).
// x, out and the returned go are dense in x's memory format; g is made so.
std::pair<Tensor, std::vector<double>> masked_grad(const Tensor& g_in, const Tensor& out,
                                                   const Tensor& lo_t, bool relu) {
  const auto fmt = layout(out);
  const Tensor g = g_in.contiguous(fmt);
  const int64_t N = out.size(0), C = out.size(1), HW = out.numel() / (N * C);
  Tensor go = relu ? torch::empty_like(out) : g;
  std::vector<double> gsum(C, 0.0);
  double* gs = gsum.data();
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "masked_grad", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* gop = go.data_ptr<scalar_t>();
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
    } else {  // rows of C values, worked in flat blocks of k whole rows (span = k C ~ 256
      // values) so that the loops are long enough to vectorize for small C: the per-channel
      // threshold repeated k times, per-lane sums in scalar_t folded into doubles every
      // kFold blocks; each chunk of rows sums into its own buffer, and the buffers are added in
      // row order (the same result whichever thread ran which chunk)
      const int64_t k = std::max<int64_t>(1, 256 / C), span = k * C;
      constexpr int64_t kFold = 64;
      std::vector<scalar_t> lo_rep(span);
      for (int64_t j = 0; j < span; ++j) lo_rep[j] = lo[j % C];
      std::mutex merge;
      std::vector<std::pair<int64_t, std::vector<double>>> parts;
      at::parallel_for(0, N * HW, 256, [&](int64_t r0, int64_t r1) {
        std::vector<double> part(C, 0.0);
        std::vector<scalar_t> lanes(span, scalar_t(0));
        scalar_t* __restrict__ acc = lanes.data();
        const auto fold = [&] {
          for (int64_t j = 0; j < span; ++j) {
            part[j % C] += acc[j];
            acc[j] = scalar_t(0);
          }
        };
        int64_t row = r0, blocks = 0;
        for (; row + k <= r1; row += k) {
          const scalar_t* __restrict__ gi = gp + row * C;
          for (int64_t j = 0; j < span; ++j) acc[j] += gi[j];
          if (relu)
            select_where_above<scalar_t, true>(gi, op + row * C, lo_rep.data(), gop + row * C,
                                               span);
          if (++blocks == kFold) {
            fold();
            blocks = 0;
          }
        }
        for (; row < r1; ++row) {  // the last rows, fewer than k: lane c is channel c
          const scalar_t* __restrict__ gi = gp + row * C;
          for (int64_t c = 0; c < C; ++c) acc[c] += gi[c];
          if (relu)
            select_where_above<scalar_t, true>(gi, op + row * C, lo_rep.data(), gop + row * C, C);
        }
        fold();
        std::lock_guard<std::mutex> guard(merge);
        parts.emplace_back(r0, std::move(part));
      });
      std::sort(parts.begin(), parts.end());
      for (const auto& part : parts)
        for (int64_t c = 0; c < C; ++c) gs[c] += part.second[c];
    }
  });
  return {go, gsum};
}

struct GroupNormProxyAct : public torch::autograd::Function<GroupNormProxyAct> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias, const std::optional<Tensor>& proxy_weight,
                        const std::optional<Tensor>& proxy_bias, const Tensor& quantiles,
                        bool relu, double proxy_eps, bool scale, int64_t groups, double eps) {
    const Tensor xc = x.contiguous(layout(x));
    const Params p(weight, bias, proxy_weight, proxy_bias);
    const Stats st = proxy_stats(p, Quantiles(quantiles), relu, scale, proxy_eps);
    const int64_t C = p.C();
    // out = max(w r y + (b - m) r, lo), lo = -m r: the affine of the native GroupNorm, a clamp
    std::vector<double> wr(C), shift(C), lo(C);
    for (int64_t c = 0; c < C; ++c) {
      wr[c] = p.w[c] * st.r[c];
      lo[c] = -st.m[c] * st.r[c];
      shift[c] = p.b[c] * st.r[c] + lo[c];
    }
    const Tensor wr_t = from_vec(wr, x.options()), lo_t = from_vec(lo, x.options());
    auto [out, mean, rstd] = group_norm(xc, wr_t, from_vec(shift, x.options()), groups, eps);
    if (relu) out.clamp_min_(lo_t.view(channel_shape(x)));
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["proxy_eps"] = proxy_eps;
    const Tensor none;
    ctx->save_for_backward({xc, weight, bias, proxy_weight.value_or(none),
                            proxy_bias.value_or(none), quantiles, wr_t, lo_t, out, mean, rstd});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),  // on in backward exactly under create_graph=True
                "proxynorm's C++ GN+PN kernel has no double backward (create_graph=True); "
                "switch it off (proxynorm.use_cpp_kernel(False)) for higher-order gradients");
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &wr = saved[6], &lo = saved[7], &out = saved[8];
    const bool has_pw = saved[3].defined(), has_pb = saved[4].defined();
    const Params p(saved[1], saved[2], has_pw ? std::optional<Tensor>(saved[3]) : std::nullopt,
                   has_pb ? std::optional<Tensor>(saved[4]) : std::nullopt);
    const bool relu = ctx->saved_data["relu"].toBool(), scale = ctx->saved_data["scale"].toBool();
    const Quantiles qs(saved[5]);
    // m, r and the active quantiles recomputed (O(C log n)) exactly as forward did
    const Stats st = proxy_stats(p, qs, relu, scale, ctx->saved_data["proxy_eps"].toDouble());
    const int64_t N = x.size(0), C = x.size(1), HW = x.numel() / (N * C);
    const double n = static_cast<double>(qs.n());

    auto [go, gsum] = masked_grad(grads[0], out, lo, relu);  // go = g phi'(u); sum of g
    // A channels_last CPU input without its gradient requested crashes PyTorch's kernel
    // (kernels.cl_crash): ask for it then, and drop it.
    const bool need_x = ctx->needs_input_grad(0);
    const bool cl = x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                    !x.is_contiguous();
    auto [gx, gw_t, gb_t] = at::native_group_norm_backward(
        go, x, saved[9], saved[10], wr, N, C, HW, ctx->saved_data["groups"].toInt(),
        {need_x || cl, true, true});
    if (!need_x) gx = Tensor();
    const std::vector<double> gwy = to_vec(gw_t), gby = to_vec(gb_t);  // sum go y, sum go

    std::vector<double> grad_w(C), grad_b(C), grad_pw(C), grad_pb(C);
    for (int64_t c = 0; c < C; ++c) {
      const double rc = st.r[c], mc = st.m[c], w = p.w[c];
      // dL/dr = sum g (phi(u) - m) = w sum go y + b sum go - m sum g (phi homogeneous)
      const double grad_r = w * gwy[c] + p.b[c] * gby[c] - mc * gsum[c];
      const double grad_m = -rc * gsum[c];
      const double coef = scale ? -rc * rc * rc * grad_r : 0.0;  // 2 dL/dvar
      const double A = p.A(c), B = p.B(c), cc = B - mc;
      // du~_i = phi'(u~_i) (dL/dm + 2 dL/dvar (z~_i - m)) / n, z~_i = u~_i where phi' = 1;
      // dL/dA = sum du~_i q_i, dL/dB = sum du~_i, in closed form over the active quantiles.
      const Active& a = st.active[c];
      const double gA = (grad_m * a.s1 + coef * (A * a.s2 + cc * a.s1)) / n;
      const double gB = (grad_m * a.cnt + coef * (A * a.s1 + cc * a.cnt)) / n;
      grad_w[c] = rc * gwy[c] + gA * (1.0 + p.pw[c]) + gB * p.pb[c];
      grad_b[c] = rc * gby[c] + gB;
      grad_pw[c] = w * gA;
      grad_pb[c] = w * gB;
    }
    auto grad = [&](const std::vector<double>& v, int64_t i, bool present) {
      return present && ctx->needs_input_grad(i) ? from_vec(v, saved[i].options()) : Tensor();
    };
    return {gx,
            grad(grad_w, 1, true),
            grad(grad_b, 2, true),
            grad(grad_pw, 3, has_pw),
            grad(grad_pb, 4, has_pb),
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
