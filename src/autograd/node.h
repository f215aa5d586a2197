// The autograd graph: reverse mode, recorded as ops run (define-by-run, as in PyTorch).
// Each differentiable op's output remembers a Node: its inputs' edges and the op's gradient rule,
// a closure that maps the output's gradient to one gradient per input. backward() walks the
// nodes in reverse topological order, sums gradients that meet, and accumulates into the leaves'
// grad(). Every op has exactly one output, which keeps nodes and the engine small.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stipple::autograd {

// Gradient rule: given dL/d(output) and which inputs need a gradient, returns one tensor per input
// (undefined for inputs that need none), each with its input's shape.
using BackwardFn =
    std::function<std::vector<Tensor>(const Tensor& grad_out, const std::vector<bool>& needs)>;

class Node {
 public:
  struct Edge {
    std::shared_ptr<Node> fn;          // the input was produced by an op
    std::shared_ptr<TensorImpl> leaf;  // or it is a leaf that requires grad
    Shape shape;                       // the input's shape, to check the rule's result
  };

  Node(std::string name, std::vector<Edge> edges, BackwardFn fn)
      : name_(std::move(name)), edges_(std::move(edges)), fn_(std::move(fn)) {}

  const std::string& name() const { return name_; }
  const std::vector<Edge>& edges() const { return edges_; }
  // Runs the gradient rule once; the closure (and the tensors it saved) is freed afterwards.
  std::vector<Tensor> apply(const Tensor& grad_out);

 private:
  std::string name_;
  std::vector<Edge> edges_;
  BackwardFn fn_;
};

// True when grad mode is on and some input requires grad: the op must call record().
bool needs_record(std::initializer_list<const Tensor*> inputs);
bool needs_record(const std::vector<Tensor>& inputs);

// Attaches a Node to `out` (which then requires grad) if needs_record(inputs).
void record(const char* name, const std::vector<Tensor>& inputs, Tensor& out, BackwardFn fn);

// Runs backward from `root`; see Tensor::backward.
void run_backward(const Tensor& root, const Tensor& grad_output);

}  // namespace stipple::autograd
