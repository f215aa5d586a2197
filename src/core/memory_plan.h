// The activation memory of a computation that repeats with the same shapes (a denoiser, once per
// sampling step) laid out once, from the lifetimes the first run shows.
#pragma once

#include <cstddef>
#include <memory>

namespace stipple {

// The first run under a MemoryPlan (a Scope) records the size of every storage block of 1 MiB or
// more the running thread allocates, and when each is freed. Of those freed before the run ends,
// it lays out a plan: an offset for each in one arena, two blocks sharing bytes only where their
// lifetimes do not meet (greedy by size, largest first, at the lowest offset that fits: TFLite's
// arena planner), so the arena is about as large as the peak of those blocks together. Each later
// run serves its i-th such allocation at the i-th offset of the arena, mapped once: no block
// fresh from the system, none taken from or given back to the cache of freed blocks.
//
// Safe when a later run differs from the first: an allocation whose size is not the recorded one,
// or whose place overlaps a block of the arena still in use, is served as usual
// (Storage::allocate). Blocks from the arena may outlive the plan; the arena goes when the plan
// and the last of them are gone. Thread-safe across plans; one plan's runs go one at a time.
class MemoryPlan {
 public:
  MemoryPlan();
  ~MemoryPlan();
  MemoryPlan(const MemoryPlan&) = delete;
  MemoryPlan& operator=(const MemoryPlan&) = delete;

  // One run, on the thread that makes it: records the first time, places later. A Scope opened
  // while another is open on the same thread does nothing.
  class Scope {
   public:
    explicit Scope(MemoryPlan& plan);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    bool active_ = false;
  };

  // The arena's size (0 until the first run has ended), the blocks the plan places, and the
  // allocations served from the arena so far.
  size_t arena_bytes() const;
  size_t planned_blocks() const;
  size_t placed_blocks() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace stipple
