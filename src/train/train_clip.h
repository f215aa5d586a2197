// Training a small CLIP (Radford et al. 2021) on the emoji images and their captions:
// `stipple train-clip`. The text tower becomes the text-to-image model's text encoder; both
// towers score generated images in `stipple eval` (retrieval, Frechet distance) and serve image
// variations later.
//
// One step:
//   images, captions = the next shuffled minibatch; each caption is the CLDR label, with the
//                      vendor's style word (", twemoji style" / ", noto style") with probability
//                      style_prob; each image shifted by up to max_shift pixels (white fill)
//   t = normalize(text_projection(text_model(ids).pooled))         [B, P]
//   v = normalize(visual_projection(vision_model(images).pooled))  [B, P]
//   logits = exp(logit_scale) v t^T                                 [B, B]
//   loss = (CE(logits, T) + CE(logits^T, T)) / 2 with soft targets T: every pair with the same
//          caption is a positive (the two vendors draw the same emoji; its plain caption is one
//          text), rows normalised.
//
// On disk (out_dir): tokenizer/ (the OpenAI vocabulary cut to the captions' symbols, see
// text/clip_tokenizer_subset.h), text_encoder/ (CLIPTextModelWithProjection), image_encoder/
// (CLIPVisionModelWithProjection), training_state.safetensors, log.csv, metrics.json.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/clip_text.h"
#include "models/clip_vision.h"
#include "text/clip_tokenizer.h"
#include "train/emoji_data.h"
#include "train/distributed.h"

namespace stipple::train {

struct ClipTrainConfig {
  std::string data_dir;        // empty: EmojiData::default_dir()
  std::string base_tokenizer;  // a CLIP tokenizer folder (OpenAI's vocabulary); required
  int64_t width = 128;         // both towers
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t projection_dim = 128;
  int64_t max_length = 32;  // text positions
  int64_t patch = 8;        // 64x64 images -> 64 patches
  int64_t steps = 2000;
  int batch_size = 128;
  float lr = 5e-4f;
  int64_t warmup = 100;
  float weight_decay = 0.1f;
  float style_prob = 0.5f;
  int max_shift = 3;
  int64_t checkpoint_every = 100;
  int64_t log_every = 10;
  uint64_t seed = 0;
  int64_t limit_images = 0;  // > 0: the first N training images only (tests)
  std::string out_dir;

  nlohmann::json to_json() const;
  static ClipTrainConfig from_json(const nlohmann::json& j, const std::string& where);
  void validate() const;
};

// A trained CLIP: tokenizer and both towers, with normalised embeddings.
class Clip {
 public:
  // folder/tokenizer, folder/text_encoder, folder/image_encoder.
  static Clip from_pretrained(const std::string& folder);
  // [N, P], unit rows; no gradients.
  Tensor encode_text(const std::vector<std::string>& texts, int64_t batch = 256) const;
  Tensor encode_images(const Tensor& images, int64_t batch = 128) const;  // [N, 3, 64, 64]

  std::shared_ptr<text::ClipTokenizer> tokenizer;
  std::shared_ptr<models::CLIPTextModel> text;
  std::shared_ptr<models::CLIPVisionModelWithProjection> vision;
  int64_t max_length = 32;
};

struct ClipMetrics {
  // Image -> caption retrieval among every distinct CLDR label (3,786 with the tones).
  double train_top1 = 0, train_top5 = 0;      // on up to 1,000 training images
  double heldout_top1 = 0, heldout_top5 = 0;  // on the 200 held-out images
  double heldout_emoji = 0, heldout_tone = 0;  // the top caption's base emoji / tone right
  int64_t candidates = 0;
};

struct ClipProgress {
  int64_t step = 0, total = 0;
  float loss = 0, accuracy = 0;  // smoothed; accuracy = in-batch image->text top-1
};

// Trains (or continues from out_dir when `resume`), then writes the towers and the metrics. With
// `comm`, data-parallel over its ranks (train/distributed.h): each rank encodes its shard of the
// batch, the embeddings are gathered so every rank computes the whole batch's contrastive loss,
// and only this rank's rows carry gradients (their sum over ranks is the whole gradient; the
// temperature's gradient is taken on rank 0 alone). Rank 0 alone writes and evaluates (the other
// ranks return empty metrics).
ClipMetrics train_clip(const ClipTrainConfig& config, bool resume,
                       const std::function<void(const ClipProgress&)>& progress = {},
                       const std::function<void(const std::string&)>& message = {},
                       const std::function<bool()>& should_stop = {},
                       Communicator* comm = nullptr);

// Image -> text retrieval of unit image embeddings [N, P] among unit text embeddings [L, P]: for
// each image, how many texts score above its own (truth[i]; 0 = its own is the nearest), and the
// nearest text.
struct Retrieval {
  std::vector<int64_t> rank, best;
  double top(int64_t k) const;  // the share of images whose own text is among the k nearest
};
Retrieval retrieve(const Tensor& images, const Tensor& texts, const std::vector<int64_t>& truth);

// Of the nearest labels (`best`, positions in `labels`), the share with the right base emoji, the
// right skin tones, and both, against each image's own entry.
struct EmojiMatch {
  double emoji = 0, tone = 0, both = 0;
};
EmojiMatch match_emoji(const std::vector<int64_t>& best, const EmojiLabels& labels,
                       const std::vector<const EmojiEntry*>& truth);

// Retrieval of the emoji images by a CLIP folder (see ClipMetrics).
ClipMetrics evaluate_clip(const Clip& clip, const std::string& data_dir);

}  // namespace stipple::train
