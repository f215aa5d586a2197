// PyTorch checkpoints read without running their pickles (see torch_checkpoint.h).
#include "io/torch_checkpoint.h"

#include "io/int_widen.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/storage.h"
#include "io/zip_reader.h"

namespace stipple::io {

namespace {

constexpr uint64_t kMaxPickleBytes = uint64_t{1} << 30;
constexpr int kMaxDims = 16;
constexpr int kMaxNesting = 64;

struct Mapping {
  void* addr = nullptr;
  size_t length = 0;
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, length);
  }
};

// ---- values the pickle machine builds ----

enum class Kind { kNone, kBool, kInt, kFloat, kStr, kBytes, kTuple, kList, kDict, kGlobal,
                  kStorage, kTensor, kInert, kMark };

struct Value;
using Ref = std::shared_ptr<Value>;
struct Value {
  Kind kind = Kind::kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;           // str, bytes, global "module.name", storage dtype
  std::vector<Ref> items;  // tuple, list; dict as key, value, key, value, ...
  std::string key;         // storage: its data/<key> entry
  int64_t numel = 0;       // storage: elements
  int elem_bytes = 0;      // storage: bytes per element
  Tensor tensor;
};

Ref new_value(Kind k) {
  auto v = std::make_shared<Value>();
  v->kind = k;
  return v;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kStr: return "str";
    case Kind::kBytes: return "bytes";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kGlobal: return "global";
    case Kind::kStorage: return "storage";
    case Kind::kTensor: return "tensor";
    case Kind::kInert: return "object";
    case Kind::kMark: return "mark";
  }
  return "?";
}

// Storage class -> (safetensors dtype name, element bytes).
bool storage_dtype(const std::string& global, std::string* dtype, int* bytes) {
  static const std::map<std::string, std::pair<std::string, int>> kTypes = {
      {"torch.FloatStorage", {"F32", 4}},   {"torch.HalfStorage", {"F16", 2}},
      {"torch.BFloat16Storage", {"BF16", 2}}, {"torch.DoubleStorage", {"F64", 8}},
      {"torch.LongStorage", {"I64", 8}},    {"torch.IntStorage", {"I32", 4}},
      {"torch.ShortStorage", {"I16", 2}},   {"torch.CharStorage", {"I8", 1}},
      {"torch.ByteStorage", {"U8", 1}},     {"torch.BoolStorage", {"BOOL", 1}}};
  auto it = kTypes.find(global);
  if (it == kTypes.end()) return false;
  *dtype = it->second.first;
  *bytes = it->second.second;
  return true;
}

// Globals that only describe training metadata: kept as inert values, never called.
bool inert_global(const std::string& g) {
  return g == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" ||
         g == "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint" ||
         g == "numpy.core.multiarray.scalar" || g == "numpy._core.multiarray.scalar" ||
         g == "numpy.dtype" || g == "numpy.core.multiarray._reconstruct" ||
         g == "numpy.ndarray" || g == "torch.device" || g == "argparse.Namespace";
}

bool known_global(const std::string& g) {
  std::string d;
  int b;
  return g == "collections.OrderedDict" || g == "torch._utils._rebuild_tensor_v2" ||
         g == "torch._utils._rebuild_tensor" || g == "torch._utils._rebuild_parameter" ||
         g == "torch._utils._rebuild_parameter_with_state" || g == "_codecs.encode" ||
         g == "builtins.set" || g == "__builtin__.set" || g == "torch.Size" ||
         storage_dtype(g, &d, &b) || inert_global(g);
}

// ---- the checkpoint: archive, storages, pickle machine ----

class Reader {
 public:
  Reader(std::shared_ptr<void> keepalive, const uint8_t* data, uint64_t size, std::string name)
      : keepalive_(std::move(keepalive)), data_(data), name_(std::move(name)),
        zip_(ZipDirectory::parse(data, size, name_)) {}
  // A pickle can make containers hold themselves (through its memo); emptying every value it
  // built breaks such cycles, so nothing outlives the reader.
  ~Reader() {
    for (const Ref& v : arena_) v->items.clear();
  }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  std::map<std::string, Tensor> read() {
    // The pickle: the one entry named <root>/data.pkl.
    const ZipEntry* pkl = nullptr;
    for (const auto& [n, e] : zip_.entries()) {
      const size_t slash = n.find('/');
      if (slash != std::string::npos && n.substr(slash + 1) == "data.pkl" &&
          n.find('/', slash + 1) == std::string::npos) {
        if (pkl != nullptr) throw fail("holds two pickles (", pkl->name, ", ", n, ")");
        pkl = &e;
        root_ = n.substr(0, slash + 1);
      }
    }
    if (pkl == nullptr)
      throw fail("a ZIP archive without <name>/data.pkl: not a PyTorch checkpoint");
    if (const ZipEntry* order = zip_.find(root_ + "byteorder")) {
      const uint64_t at = zip_.data_offset(*order);
      const std::string text(reinterpret_cast<const char*>(data_ + at), order->compressed_size);
      if (text != "little") throw fail("stores its tensors ", text, "-endian; stipple reads little-endian");
    }
    if (pkl->compressed_size > kMaxPickleBytes)
      throw fail("its pickle is ", pkl->compressed_size, " bytes, over the 1 GiB limit");
    const uint64_t at = zip_.data_offset(*pkl);
    pos_ = data_ + at;
    end_ = pos_ + pkl->compressed_size;
    const Ref top = run();
    Ref weights = top;
    if (top->kind == Kind::kDict) {
      for (size_t k = 0; k + 1 < top->items.size(); k += 2) {
        if (top->items[k]->kind == Kind::kStr && top->items[k]->s == "state_dict" &&
            top->items[k + 1]->kind == Kind::kDict) {
          weights = top->items[k + 1];
        }
      }
    } else if (top->kind != Kind::kTensor) {
      throw fail("holds a pickled ", kind_name(top->kind), ", not a dict of tensors");
    }
    std::map<std::string, Tensor> out;
    flatten(weights, "", 0, out);
    return out;
  }

 private:
  template <typename... Parts>
  Error fail(const Parts&... parts) const {
    return Error(str_cat(name_, ": ", parts...));
  }

  // ---- the pickle machine ----
  // Every value is made here and kept in arena_ (see ~Reader).
  Ref make(Kind k) {
    Ref v = new_value(k);
    arena_.push_back(v);
    return v;
  }
  Ref make_int(int64_t i) {
    Ref v = make(Kind::kInt);
    v->i = i;
    return v;
  }
  Ref make_str(Kind k, std::string s) {
    Ref v = make(k);
    v->s = std::move(s);
    return v;
  }

  void need(uint64_t n) const {
    if (static_cast<uint64_t>(end_ - pos_) < n)
      throw fail("the pickle ends in the middle of an instruction (truncated or corrupt)");
  }
  uint64_t take_uint(int bytes) {
    need(bytes);
    uint64_t v = 0;
    for (int k = 0; k < bytes; ++k) v |= static_cast<uint64_t>(pos_[k]) << (8 * k);
    pos_ += bytes;
    return v;
  }
  std::string take_bytes(uint64_t n) {
    need(n);
    std::string s(reinterpret_cast<const char*>(pos_), n);
    pos_ += n;
    return s;
  }
  std::string take_line() {
    const uint8_t* nl = static_cast<const uint8_t*>(std::memchr(pos_, '\n', end_ - pos_));
    if (nl == nullptr) throw fail("the pickle ends inside a GLOBAL name");
    std::string s(reinterpret_cast<const char*>(pos_), nl - pos_);
    pos_ = nl + 1;
    return s;
  }
  Ref pop() {
    if (stack_.empty()) throw fail("the pickle pops an empty stack (corrupt)");
    Ref v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Ref& top() {
    if (stack_.empty()) throw fail("the pickle reads an empty stack (corrupt)");
    return stack_.back();
  }
  // Everything above the last mark, removing the mark.
  std::vector<Ref> pop_mark() {
    if (marks_.empty()) throw fail("the pickle closes a mark it never opened (corrupt)");
    const size_t m = marks_.back();
    marks_.pop_back();
    if (m > stack_.size()) throw fail("the pickle's stack is shorter than its mark (corrupt)");
    std::vector<Ref> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  Ref tuple(std::vector<Ref> items) {
    Ref t = make(Kind::kTuple);
    t->items = std::move(items);
    return t;
  }
  Ref memo_get(uint64_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) throw fail("the pickle reads memo entry ", k, ", which it never stored");
    return it->second;
  }
  void set_items(Ref& dict, const std::vector<Ref>& kv) {
    if (dict->kind == Kind::kInert) return;
    if (dict->kind != Kind::kDict) throw fail("the pickle sets items on a ", kind_name(dict->kind));
    for (const Ref& v : kv) dict->items.push_back(v);
  }
  Ref global(const std::string& module, const std::string& name) {
    const std::string g = module + "." + name;
    if (!known_global(g))
      throw fail("refuses the pickled global ", g,
                 ": it is not part of a state dict, and a pickle that names it can run code "
                 "when Python loads it (stipple never runs pickles). Convert the file to "
                 "safetensors in an environment you trust");
    return make_str(Kind::kGlobal, g);
  }

  Ref call(const Ref& fn, const Ref& args) {
    if (fn->kind == Kind::kInert) return make(Kind::kInert);
    if (fn->kind != Kind::kGlobal) throw fail("the pickle calls a ", kind_name(fn->kind));
    const std::string& g = fn->s;
    const std::vector<Ref>& a = args->items;
    if (args->kind != Kind::kTuple) throw fail("the pickle calls ", g, " without an argument tuple");
    if (inert_global(g)) return make(Kind::kInert);
    if (g == "collections.OrderedDict") {
      Ref d = make(Kind::kDict);
      if (!a.empty() && a[0]->kind == Kind::kList) {
        for (const Ref& pair : a[0]->items)
          if (pair->kind == Kind::kTuple && pair->items.size() == 2) {
            d->items.push_back(pair->items[0]);
            d->items.push_back(pair->items[1]);
          }
      }
      return d;
    }
    if (g == "torch._utils._rebuild_tensor_v2" || g == "torch._utils._rebuild_tensor") {
      if (a.size() < 4) throw fail(g, " takes (storage, offset, size, stride, ...)");
      return rebuild_tensor(a[0], a[1], a[2], a[3]);
    }
    if (g == "torch._utils._rebuild_parameter" ||
        g == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || a[0]->kind != Kind::kTensor) throw fail(g, " needs a tensor");
      return a[0];
    }
    if (g == "_codecs.encode") {
      // Protocol 2 pickles bytes as encode(str, "latin1"): each code point is one byte.
      if (a.empty() || a[0]->kind != Kind::kStr) throw fail("_codecs.encode needs a string");
      std::string out;
      const std::string& s = a[0]->s;
      for (size_t k = 0; k < s.size(); ++k) {
        const uint8_t c = static_cast<uint8_t>(s[k]);
        if (c < 0x80) {
          out.push_back(static_cast<char>(c));
        } else if ((c & 0xE0) == 0xC0 && k + 1 < s.size()) {
          out.push_back(static_cast<char>(((c & 0x1F) << 6) | (s[k + 1] & 0x3F)));
          ++k;
        } else {
          throw fail("_codecs.encode: a character outside latin-1");
        }
      }
      return make_str(Kind::kBytes, out);
    }
    if (g == "builtins.set" || g == "__builtin__.set") {
      Ref l = make(Kind::kList);
      if (!a.empty()) l->items = a[0]->items;
      return l;
    }
    if (g == "torch.Size") return a.empty() ? tuple({}) : a[0];
    throw fail("the pickle calls ", g, ", which is not a function");
  }

  int64_t as_int(const Ref& v, const char* what) const {
    if (v->kind != Kind::kInt && v->kind != Kind::kBool)
      throw fail("a tensor's ", what, " is a ", kind_name(v->kind), ", not an integer");
    return v->i;
  }

  Ref storage_from_persistent_id(const Ref& pid) {
    // ('storage', <storage class>, key, location, numel)
    if (pid->kind != Kind::kTuple || pid->items.size() < 5 || pid->items[0]->kind != Kind::kStr ||
        pid->items[0]->s != "storage" || pid->items[1]->kind != Kind::kGlobal ||
        pid->items[2]->kind != Kind::kStr)
      throw fail("a persistent id that is not ('storage', type, key, location, numel)");
    Ref st = make(Kind::kStorage);
    int& bytes = st->elem_bytes;
    if (!storage_dtype(pid->items[1]->s, &st->s, &bytes))
      throw fail("storage type ", pid->items[1]->s, " is not supported");
    st->key = pid->items[2]->s;
    st->numel = as_int(pid->items[4], "storage size");
    if (st->numel < 0) throw fail("a storage of ", st->numel, " elements");
    const ZipEntry* e = zip_.find(root_ + "data/" + st->key);
    if (e == nullptr) throw fail("storage ", st->key, " is missing from the archive (data/", st->key, ")");
    if (static_cast<uint64_t>(st->numel) > e->compressed_size / bytes)
      throw fail("storage ", st->key, " claims ", st->numel, " elements of ", bytes,
                 " bytes but holds ", e->compressed_size, " bytes");
    st->i = static_cast<int64_t>(zip_.data_offset(*e));  // where its bytes start
    return st;
  }

  std::vector<int64_t> int_tuple(const Ref& v, const char* what) const {
    if (v->kind != Kind::kTuple && v->kind != Kind::kList)
      throw fail("a tensor's ", what, " is a ", kind_name(v->kind), ", not a tuple");
    if (v->items.size() > kMaxDims) throw fail("a tensor with ", v->items.size(), " dimensions");
    std::vector<int64_t> out;
    for (const Ref& x : v->items) out.push_back(as_int(x, what));
    return out;
  }

  Ref rebuild_tensor(const Ref& storage, const Ref& offset_v, const Ref& size_v,
                     const Ref& stride_v) {
    if (storage->kind != Kind::kStorage) throw fail("a tensor over a ", kind_name(storage->kind));
    const int64_t offset = as_int(offset_v, "storage offset");
    const std::vector<int64_t> size = int_tuple(size_v, "size");
    const std::vector<int64_t> stride = int_tuple(stride_v, "stride");
    if (size.size() != stride.size()) throw fail("a tensor's size and stride differ in length");
    const int bytes = storage->elem_bytes;
    if (offset < 0) throw fail("a tensor at storage offset ", offset);
    int64_t numel = 1, last = offset;
    for (size_t d = 0; d < size.size(); ++d) {
      if (size[d] < 0 || stride[d] < 0) throw fail("a tensor with a negative size or stride");
      if (size[d] > 0 && numel > (int64_t{1} << 62) / size[d])
        throw fail("a tensor of more than 2^62 elements");
      numel *= size[d];
    }
    // A broadcast (stride 0) view can claim more elements than its storage holds; copying it
    // would allocate without bound, and state dicts never hold one.
    if (numel > storage->numel)
      throw fail("a tensor of size ", shape_str(size), " (", numel, " elements) over storage ",
                 storage->key, ", which holds ", storage->numel, ": a broadcast view");
    if (numel > 0) {
      for (size_t d = 0; d < size.size(); ++d) {
        if (stride[d] > 0 && (size[d] - 1) > ((int64_t{1} << 62) - last) / stride[d])
          throw fail("a tensor's strides run past 2^62");
        last += (size[d] - 1) * stride[d];
      }
      if (last >= storage->numel)
        throw fail("a tensor of size ", shape_str(size), " reaches element ", last,
                   " of storage ", storage->key, ", which holds ", storage->numel);
    }
    const uint8_t* base = data_ + storage->i;
    // Contiguous (row-major, ignoring dimensions of size 1): view the file's bytes.
    bool contiguous = true;
    int64_t expect = 1;
    for (size_t d = size.size(); d-- > 0;) {
      if (size[d] != 1 && stride[d] != expect) contiguous = false;
      expect *= size[d];
    }
    const Shape shape(size.begin(), size.end());
    DType direct = DType::kF32;
    const bool is_direct = dt_direct(storage->s, &direct);
    Ref t = make(Kind::kTensor);
    const uint8_t* first = base + offset * bytes;
    if (is_direct && contiguous && reinterpret_cast<uintptr_t>(first) % bytes == 0) {
      auto st = Storage::wrap(const_cast<uint8_t*>(first), static_cast<size_t>(numel * bytes),
                              keepalive_);
      t->tensor = Tensor::from_storage(std::move(st), 0, shape, direct);
      return t;
    }
    // Copy, element by element in row-major order, widening small integers to I64.
    const DType out_type = is_direct ? direct : DType::kI64;
    Tensor out = Tensor::empty(shape, out_type);
    uint8_t* dst = numel > 0 ? static_cast<uint8_t*>(out.raw_data()) : nullptr;
    std::vector<int64_t> index(size.size(), 0);
    for (int64_t n = 0; n < numel; ++n) {
      int64_t at = offset;
      for (size_t d = 0; d < size.size(); ++d) at += index[d] * stride[d];
      const uint8_t* src = base + at * bytes;
      if (is_direct) {
        std::memcpy(dst + n * bytes, src, bytes);
      } else {
        int64_t v = 0;
        const bool widened = widen_to_i64(src, storage->s, &v, 1);
        STIPPLE_ASSERT(widened);  // the storage types admitted only these
        std::memcpy(dst + n * 8, &v, 8);
      }
      for (size_t d = size.size(); d-- > 0;) {
        if (++index[d] < size[d]) break;
        index[d] = 0;
      }
    }
    t->tensor = out;
    return t;
  }

  static bool dt_direct(const std::string& s, DType* t) {
    if (s == "F32") *t = DType::kF32;
    else if (s == "F16") *t = DType::kF16;
    else if (s == "BF16") *t = DType::kBF16;
    else if (s == "F64") *t = DType::kF64;
    else if (s == "I64") *t = DType::kI64;
    else return false;
    return true;
  }

  Ref run() {
    for (;;) {
      need(1);
      const uint8_t op = *pos_++;
      switch (op) {
        case 0x80: {  // PROTO
          const uint64_t v = take_uint(1);
          if (v > 5) throw fail("pickle protocol ", v, " (stipple reads 2 to 5)");
          break;
        }
        case 0x95: take_uint(8); break;  // FRAME: a length hint
        case '}': stack_.push_back(make(Kind::kDict)); break;
        case ']': stack_.push_back(make(Kind::kList)); break;
        case ')': stack_.push_back(tuple({})); break;
        case 0x8f: stack_.push_back(make(Kind::kList)); break;  // EMPTY_SET
        case '(': marks_.push_back(stack_.size()); break;
        case 'X': stack_.push_back(make_str(Kind::kStr, take_bytes(take_uint(4)))); break;
        case 0x8c: stack_.push_back(make_str(Kind::kStr, take_bytes(take_uint(1)))); break;
        case 0x8d: stack_.push_back(make_str(Kind::kStr, take_bytes(take_uint(8)))); break;
        case 'T': stack_.push_back(make_str(Kind::kStr, take_bytes(take_uint(4)))); break;
        case 'U': stack_.push_back(make_str(Kind::kStr, take_bytes(take_uint(1)))); break;
        case 'B': stack_.push_back(make_str(Kind::kBytes, take_bytes(take_uint(4)))); break;
        case 'C': stack_.push_back(make_str(Kind::kBytes, take_bytes(take_uint(1)))); break;
        case 0x8e: stack_.push_back(make_str(Kind::kBytes, take_bytes(take_uint(8)))); break;
        case 'J': stack_.push_back(make_int(static_cast<int32_t>(take_uint(4)))); break;
        case 'K': stack_.push_back(make_int(static_cast<int64_t>(take_uint(1)))); break;
        case 'M': stack_.push_back(make_int(static_cast<int64_t>(take_uint(2)))); break;
        case 0x8a:    // LONG1
        case 0x8b: {  // LONG4
          const uint64_t n = take_uint(op == 0x8a ? 1 : 4);
          if (n > 8) throw fail("an integer of ", n, " bytes (stipple reads up to 64 bits)");
          const uint64_t raw = n == 0 ? 0 : take_uint(static_cast<int>(n));
          int64_t v = static_cast<int64_t>(raw);
          if (n > 0 && n < 8 && (raw >> (8 * n - 1)) & 1) v -= int64_t{1} << (8 * n);  // sign
          stack_.push_back(make_int(v));
          break;
        }
        case 'G': {  // BINFLOAT, big-endian
          need(8);
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | pos_[k];
          pos_ += 8;
          Ref v = make(Kind::kFloat);
          std::memcpy(&v->f, &bits, 8);
          stack_.push_back(v);
          break;
        }
        case 'N': stack_.push_back(make(Kind::kNone)); break;
        case 0x88:
        case 0x89: {
          Ref v = make(Kind::kBool);
          v->i = op == 0x88;
          stack_.push_back(v);
          break;
        }
        case 't': stack_.push_back(tuple(pop_mark())); break;
        case 0x85: { Ref a = pop(); stack_.push_back(tuple({a})); break; }
        case 0x86: { Ref b = pop(), a = pop(); stack_.push_back(tuple({a, b})); break; }
        case 0x87: { Ref c = pop(), b = pop(), a = pop(); stack_.push_back(tuple({a, b, c})); break; }
        case 'l': { Ref l = make(Kind::kList); l->items = pop_mark(); stack_.push_back(l); break; }
        case 0x91: { Ref l = make(Kind::kList); l->items = pop_mark(); stack_.push_back(l); break; }
        case 'a': {
          Ref v = pop();
          Ref& l = top();
          if (l->kind != Kind::kList) throw fail("the pickle appends to a ", kind_name(l->kind));
          l->items.push_back(v);
          break;
        }
        case 'e':
        case 0x90: {  // APPENDS, ADDITEMS
          std::vector<Ref> items = pop_mark();
          Ref& l = top();
          if (l->kind != Kind::kList) throw fail("the pickle appends to a ", kind_name(l->kind));
          for (Ref& v : items) l->items.push_back(std::move(v));
          break;
        }
        case 'd': {
          std::vector<Ref> kv = pop_mark();
          if (kv.size() % 2) throw fail("a dict with an odd number of keys and values");
          Ref d = make(Kind::kDict);
          d->items = std::move(kv);
          stack_.push_back(d);
          break;
        }
        case 's': {
          Ref v = pop(), k = pop();
          set_items(top(), {k, v});
          break;
        }
        case 'u': {
          std::vector<Ref> kv = pop_mark();
          if (kv.size() % 2) throw fail("SETITEMS with an odd number of keys and values");
          set_items(top(), kv);
          break;
        }
        case 'q': memo_[take_uint(1)] = top(); break;
        case 'r': memo_[take_uint(4)] = top(); break;
        case 0x94: memo_[memo_.size()] = top(); break;  // MEMOIZE
        case 'h': stack_.push_back(memo_get(take_uint(1))); break;
        case 'j': stack_.push_back(memo_get(take_uint(4))); break;
        case 'c': {
          const std::string module = take_line();
          const std::string name = take_line();
          stack_.push_back(global(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          Ref name = pop(), module = pop();
          if (name->kind != Kind::kStr || module->kind != Kind::kStr)
            throw fail("STACK_GLOBAL without a module and name");
          stack_.push_back(global(module->s, name->s));
          break;
        }
        case 'R': {
          Ref args = pop(), fn = pop();
          stack_.push_back(call(fn, args));
          break;
        }
        case 0x81: {  // NEWOBJ
          Ref args = pop(), cls = pop();
          stack_.push_back(call(cls, args));
          break;
        }
        case 0x92: {  // NEWOBJ_EX
          pop();  // kwargs
          Ref args = pop(), cls = pop();
          stack_.push_back(call(cls, args));
          break;
        }
        case 'b': pop(); top(); break;  // BUILD: object state (e.g. a state dict's _metadata)
        case 'Q': stack_.push_back(storage_from_persistent_id(pop())); break;
        case '0': pop(); break;
        case '2': stack_.push_back(top()); break;
        case '1': pop_mark(); break;
        case '.': {
          Ref v = pop();
          return v;
        }
        default:
          throw fail("pickle opcode 0x", hex(op), " is not one a state dict uses (corrupt, or "
                     "an object stipple does not read)");
      }
    }
  }

  static std::string hex(uint8_t b) {
    const char* d = "0123456789abcdef";
    return std::string{d[b >> 4], d[b & 15]};
  }

  // Shared sub-dicts could make the walk exponential: it visits at most kMaxVisits values.
  static constexpr int64_t kMaxVisits = int64_t{1} << 22;
  void flatten(const Ref& v, const std::string& prefix, int depth,
               std::map<std::string, Tensor>& out) {
    if (depth > kMaxNesting) throw fail("dicts nested more than ", kMaxNesting, " deep");
    if (++visits_ > kMaxVisits) throw fail("more than ", kMaxVisits, " values to walk");
    if (v->kind == Kind::kTensor) {
      out[prefix.empty() ? "tensor" : prefix] = v->tensor;
      return;
    }
    if (v->kind != Kind::kDict) return;
    for (size_t k = 0; k + 1 < v->items.size(); k += 2) {
      const Ref& key = v->items[k];
      std::string name;
      if (key->kind == Kind::kStr) name = key->s;
      else if (key->kind == Kind::kInt) name = std::to_string(key->i);
      else continue;
      flatten(v->items[k + 1], prefix.empty() ? name : prefix + "." + name, depth + 1, out);
    }
  }

  std::shared_ptr<void> keepalive_;
  const uint8_t* data_;
  std::string name_;
  ZipDirectory zip_;
  std::string root_;
  const uint8_t* pos_ = nullptr;
  const uint8_t* end_ = nullptr;
  std::vector<Ref> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Ref> memo_;
  std::vector<Ref> arena_;
  int64_t visits_ = 0;
};

SafetensorsFile read_checkpoint(std::shared_ptr<void> keepalive, const uint8_t* data,
                                uint64_t size, const std::string& name) {
  if (!ZipDirectory::looks_like_zip(data, size)) {
    if (size >= 2 && data[0] == 0x80)
      throw Error(str_cat(name, ": a PyTorch file in the legacy format (before PyTorch 1.6), "
                                "which stipple does not read; re-save it with a newer PyTorch "
                                "or convert it to safetensors"));
    throw Error(str_cat(name, ": not a PyTorch checkpoint (no ZIP archive)"));
  }
  Reader reader(std::move(keepalive), data, size, name);
  return SafetensorsFile::from_tensors(reader.read(), name);
}

}  // namespace

bool looks_like_torch_checkpoint(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  uint8_t head[4] = {0, 0, 0, 0};
  const ssize_t n = ::read(fd, head, 4);
  ::close(fd);
  return n == 4 && ZipDirectory::looks_like_zip(head, 4);
}

SafetensorsFile open_torch_checkpoint(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    throw Error(str_cat(path, ": cannot open the checkpoint: ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
    ::close(fd);
    throw Error(str_cat(path, ": not a regular, non-empty file"));
  }
  auto mapping = std::make_shared<Mapping>();
  void* addr = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (addr == MAP_FAILED) throw Error(str_cat(path, ": cannot map the file: ", std::strerror(err)));
  mapping->addr = addr;
  mapping->length = static_cast<size_t>(st.st_size);
  return read_checkpoint(mapping, static_cast<const uint8_t*>(addr),
                         static_cast<uint64_t>(st.st_size), path);
}

SafetensorsFile torch_checkpoint_from_bytes(std::string bytes, const std::string& name) {
  auto owned = std::make_shared<std::string>(std::move(bytes));
  return read_checkpoint(owned, reinterpret_cast<const uint8_t*>(owned->data()), owned->size(),
                         name);
}

SafetensorsFile open_weights_file(const std::string& path) {
  if (looks_like_torch_checkpoint(path)) return open_torch_checkpoint(path);
  return SafetensorsFile::open(path);
}

}  // namespace stipple::io
