// The model registry: every family stipple::Engine can open, in the order they are tried.
//
// Adding a model family: its model file pair in src/models/ (with its test against diffusers
// reference data), a pipeline (src/pipelines/) when no existing one runs it, and in registry.cc
// one Engine::Model subclass (run a Job), an open() that fills its ModelDescription (tasks and
// defaults), a detect() that reads only small files, and one line in registry().
#pragma once

#include <vector>

#include "engine/model.h"

namespace stipple::engine {

const std::vector<Engine::Family>& registry();

// The name PNG parameters give a model: the folder's or file's name; a training run's
// checkpoint folders are named with their run ("emoji-t2i/checkpoint-5750").
std::string model_name(const std::string& path);

}  // namespace stipple::engine
