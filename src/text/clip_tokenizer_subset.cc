// The subset tokenizer writer (see clip_tokenizer_subset.h).
#include "text/clip_tokenizer_subset.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "text/clip_tokenizer.h"

namespace stipple::text {

namespace fs = std::filesystem;
using nlohmann::json;

TokenizerSubsetInfo write_tokenizer_subset(const std::string& base_dir,
                                           const std::vector<std::string>& texts,
                                           int64_t max_length, const std::string& out_dir) {
  STIPPLE_CHECK(max_length >= 3 && max_length <= 4096,
                "tokenizer subset: max length must be in [3, 4096], got ", max_length);
  const ClipTokenizer base = ClipTokenizer::from_folder(base_dir);
  const fs::path root(base_dir);
  // vocab.json in id order; merges.txt lines as the tokenizer reads them.
  const json vocab = io::read_json_file((root / "vocab.json").string());
  std::vector<std::pair<int64_t, std::string>> by_id;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    by_id.emplace_back(it.value().get<int64_t>(), it.key());
  std::sort(by_id.begin(), by_id.end());
  std::ifstream mf(root / "merges.txt");
  STIPPLE_CHECK(mf, "tokenizer subset: cannot read ", (root / "merges.txt").string());
  std::vector<std::pair<std::string, std::string>> merges;
  std::string line;
  std::getline(mf, line);  // #version
  while (std::getline(mf, line) && static_cast<int64_t>(merges.size()) <
                                       static_cast<int64_t>(base.num_merges())) {
    std::istringstream f(line);
    std::string a, b;
    if (f >> a >> b) merges.emplace_back(a, b);
  }
  std::unordered_map<std::string, std::pair<std::string, std::string>> made_by;
  for (const auto& m : merges) made_by.emplace(m.first + m.second, m);

  // 1. the kept symbols: the alphabet, the texts' symbols and their merge trees
  std::set<std::string> keep;
  for (const auto& [id, sym] : by_id)
    if (!made_by.count(sym)) keep.insert(sym);
  std::vector<std::string> todo;
  for (const std::string& t : texts)
    for (const std::string& s : base.bpe_tokens(t)) todo.push_back(s);
  while (!todo.empty()) {
    const std::string s = todo.back();
    todo.pop_back();
    if (!keep.insert(s).second) continue;
    const auto it = made_by.find(s);
    if (it != made_by.end()) {
      todo.push_back(it->second.first);
      todo.push_back(it->second.second);
    }
  }
  // 2. the files
  fs::create_directories(out_dir);
  json sub = json::object();
  int64_t next = 0;
  for (const auto& [id, sym] : by_id)
    if (keep.count(sym)) sub[sym] = next++;
  std::string merges_text = "#version: 0.2\n";
  int64_t kept_merges = 0;
  for (const auto& [a, b] : merges)
    if (keep.count(a + b)) merges_text += a + " " + b + "\n", ++kept_merges;
  io::write_file_atomic(out_dir + "/vocab.json", sub.dump() + "\n");
  io::write_file_atomic(out_dir + "/merges.txt", merges_text);
  json cfg = fs::exists(root / "tokenizer_config.json")
                 ? io::read_json_file((root / "tokenizer_config.json").string())
                 : json::object();
  cfg["model_max_length"] = max_length;
  cfg["tokenizer_class"] = "CLIPTokenizer";
  cfg.erase("name_or_path");
  cfg.erase("special_tokens_map_file");
  cfg.erase("added_tokens_decoder");  // ids changed; the special tokens are in vocab.json
  io::write_file_atomic(out_dir + "/tokenizer_config.json", cfg.dump(2) + "\n");
  json special = fs::exists(root / "special_tokens_map.json")
                     ? io::read_json_file((root / "special_tokens_map.json").string())
                     : json{{"bos_token", base.bos_token()},
                            {"eos_token", base.eos_token()},
                            {"unk_token", base.unk_token()},
                            {"pad_token", base.pad_token()}};
  io::write_file_atomic(out_dir + "/special_tokens_map.json", special.dump(2) + "\n");
  return {next, kept_merges};
}

}  // namespace stipple::text
