#include <unordered_map>

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "ops/ops.h"

namespace stipple::autograd {

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool on) { g_grad_enabled = on; }

std::vector<Tensor> Node::apply(const Tensor& grad_out) {
  STIPPLE_CHECK(fn_ != nullptr, "backward through the graph of '", name_,
                "' a second time: its saved tensors were already freed");
  std::vector<bool> needs(edges_.size());
  for (size_t i = 0; i < edges_.size(); ++i) needs[i] = edges_[i].fn || edges_[i].leaf;
  std::vector<Tensor> grads = fn_(grad_out, needs);
  fn_ = nullptr;
  STIPPLE_ASSERT(grads.size() == edges_.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!needs[i] || !grads[i].defined()) continue;
    if (grads[i].shape() != edges_[i].shape) {
      STIPPLE_CHECK(false, "gradient rule of '", name_, "' returned ", grads[i].describe(),
                    " for input ", i, " of shape ", shape_str(edges_[i].shape));
    }
  }
  return grads;
}

static bool input_requires_grad(const Tensor& t) { return t.defined() && t.requires_grad(); }

bool needs_record(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && input_requires_grad(*t)) return true;
  return false;
}

bool needs_record(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs)
    if (input_requires_grad(t)) return true;
  return false;
}

void record(const char* name, const std::vector<Tensor>& inputs, Tensor& out, BackwardFn fn) {
  if (!needs_record(inputs)) return;
  std::vector<Node::Edge> edges(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!input_requires_grad(t)) continue;
    edges[i].shape = t.shape();
    if (t.grad_fn())
      edges[i].fn = t.grad_fn();
    else
      edges[i].leaf = t.impl_ptr();
  }
  TensorImpl& o = out.impl();
  o.grad_fn = std::make_shared<Node>(name, std::move(edges), std::move(fn));
  o.requires_grad = true;
}

static void accumulate_leaf(TensorImpl& leaf, const Tensor& g) {
  // A leaf's gradient lives on the leaf's device (a rule may have produced it elsewhere).
  Tensor gc = g.to(leaf.storage->device()).to(leaf.dtype).contiguous();
  if (!leaf.grad) {
    // Own the buffer: the incoming gradient may alias a tensor saved elsewhere.
    leaf.grad = (gc.is_same(g) ? gc.clone() : gc).impl_ptr();
  } else {
    leaf.grad = ops::add(Tensor(leaf.grad), gc).impl_ptr();
  }
}

void run_backward(const Tensor& root, const Tensor& grad_output) {
  STIPPLE_CHECK(root.requires_grad(),
                "backward() on a tensor that does not require grad (no parameter reached it)");
  Tensor g0 = grad_output;
  if (!g0.defined()) {
    STIPPLE_CHECK(root.numel() == 1, "backward() without a gradient needs a one-element output, got ",
                  root.describe());
    g0 = Tensor::ones(root.shape()).to(root.device());  // the seed lives where the output does
  }
  STIPPLE_CHECK(g0.shape() == root.shape(), "backward(): gradient ", g0.describe(),
                " does not match the output ", root.describe());
  NoGradGuard no_grad;
  if (root.is_leaf()) {
    accumulate_leaf(root.impl(), g0);
    return;
  }
  // Count, for every node, how many edges lead into it (its consumers), by DFS from the root.
  std::unordered_map<Node*, int> pending;
  std::vector<Node*> stack{root.grad_fn().get()};
  pending[root.grad_fn().get()] = 0;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (const auto& e : n->edges()) {
      if (!e.fn) continue;
      auto it = pending.find(e.fn.get());
      if (it == pending.end()) {
        pending[e.fn.get()] = 1;
        stack.push_back(e.fn.get());
      } else {
        ++it->second;
      }
    }
  }
  // Kahn's order: a node runs once every consumer has passed its gradient down.
  std::unordered_map<Node*, Tensor> grads;
  std::vector<std::shared_ptr<Node>> ready{root.grad_fn()};
  grads[root.grad_fn().get()] = g0;
  while (!ready.empty()) {
    std::shared_ptr<Node> n = ready.back();
    ready.pop_back();
    Tensor g = grads[n.get()];
    grads.erase(n.get());
    // A node that no gradient reached still releases its inputs' pending counts.
    std::vector<Tensor> in_grads =
        g.defined() ? n->apply(g) : std::vector<Tensor>(n->edges().size());
    for (size_t i = 0; i < n->edges().size(); ++i) {
      const auto& e = n->edges()[i];
      const Tensor& gi = in_grads[i];
      if (e.leaf) {
        if (gi.defined()) accumulate_leaf(*e.leaf, gi);
        continue;
      }
      if (!e.fn) continue;
      Tensor& acc = grads[e.fn.get()];
      if (gi.defined()) acc = acc.defined() ? ops::add(acc, gi) : gi;
      if (--pending[e.fn.get()] == 0) ready.push_back(e.fn);
    }
  }
}

}  // namespace stipple::autograd

namespace stipple {
void Tensor::backward(const Tensor& grad_output) const {
  autograd::run_backward(*this, grad_output);
}
}  // namespace stipple
