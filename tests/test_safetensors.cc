// Tests for io/atomic_file and io/safetensors: atomic writes, round trips, every malformed-header
// case the reader must refuse with a clear error, and reading the real files in ../shared.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;
using io::SafetensorsFile;

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           str_cat("stipple_io_", ::getpid(), "_", info->test_suite_name(), "_", info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  std::string write_raw(const std::string& name, const std::string& bytes) const {
    const std::string p = path(name);
    std::ofstream(p, std::ios::binary).write(bytes.data(), bytes.size());
    return p;
  }

  // An 8-byte little-endian length, the header text, then the data bytes.
  std::string write_st(const std::string& name, const std::string& header,
                       const std::string& data) const {
    uint64_t n = header.size();
    std::string bytes(reinterpret_cast<const char*>(&n), 8);
    return write_raw(name, bytes + header + data);
  }

  // Files in the folder other than `keep` (left-over temporaries).
  std::vector<std::string> strays(const std::string& keep) const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir_)) {
      if (e.path().filename() != keep) out.push_back(e.path().filename().string());
    }
    return out;
  }

  fs::path dir_;
};

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Asserts that opening `path` throws a stipple::Error whose message names the file and contains
// every one of `parts`.
void expect_open_error(const std::string& path, std::initializer_list<const char*> parts) {
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "open(" << path << ") did not throw";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    for (const char* p : parts) {
      EXPECT_NE(msg.find(p), std::string::npos) << "expected '" << p << "' in: " << msg;
    }
  }
}

std::string f32_bytes(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), std::data(v), s.size());
  return s;
}

// ---------------- atomic_file ----------------

using AtomicFileTest = TempDir;

TEST_F(AtomicFileTest, WritesAndReplacesWithoutLeavingTemporaries) {
  const std::string p = path("out.bin");
  io::write_file_atomic(p, std::string_view("first"));
  EXPECT_EQ(read_all(p), "first");
  io::write_file_atomic(p, [](io::AtomicFile& f) {
    f.write("sec", 3);
    f.write(std::string_view("ond"));
  });
  EXPECT_EQ(read_all(p), "second");
  EXPECT_TRUE(strays("out.bin").empty());
}

TEST_F(AtomicFileTest, TemporaryIsInTheSameFolderAndNamedByPid) {
  const std::string p = path("x.png");
  io::AtomicFile f(p);
  EXPECT_EQ(fs::path(f.temp_path()).parent_path(), fs::path(p).parent_path());
  EXPECT_EQ(f.temp_path().rfind(str_cat(p, ".tmp.", ::getpid()), 0), 0u) << f.temp_path();
  EXPECT_TRUE(fs::exists(f.temp_path()));
  EXPECT_FALSE(fs::exists(p));  // nothing at the target until commit
  f.write("abc", 3);
  f.commit();
  EXPECT_EQ(read_all(p), "abc");
  EXPECT_FALSE(fs::exists(f.temp_path()));
}

TEST_F(AtomicFileTest, FailureKeepsTheOldFileAndRemovesTheTemporary) {
  const std::string p = path("ckpt.bin");
  io::write_file_atomic(p, std::string_view("old contents"));
  EXPECT_THROW(io::write_file_atomic(p,
                                     [](io::AtomicFile& f) {
                                       f.write("half-writ", 9);
                                       throw Error("simulated failure");
                                     }),
               Error);
  EXPECT_EQ(read_all(p), "old contents");
  EXPECT_TRUE(strays("ckpt.bin").empty());
  {
    io::AtomicFile abandoned(p);
    abandoned.write("never committed", 15);
  }
  EXPECT_EQ(read_all(p), "old contents");
  EXPECT_TRUE(strays("ckpt.bin").empty());
}

TEST_F(AtomicFileTest, MissingFolderIsAClearError) {
  const std::string p = path("no/such/folder/out.bin");
  try {
    io::write_file_atomic(p, std::string_view("x"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST_F(AtomicFileTest, RenameOntoAFolderFailsCleanly) {
  fs::create_directories(path("taken"));
  fs::create_directories(path("taken/child"));  // non-empty: rename of a file over it fails
  EXPECT_THROW(io::write_file_atomic(path("taken"), std::string_view("x")), Error);
  EXPECT_TRUE(strays("taken").empty());
}

// ---------------- safetensors: round trips ----------------

using SafetensorsRoundTrip = TempDir;

TEST_F(SafetensorsRoundTrip, AllDtypesMetadataAndLayout) {
  std::map<std::string, Tensor> in;
  in["a.f32"] = Tensor::from_vector({1.5f, -2.0f, 3.25f, 0.0f, 1e-7f, -1e30f}, {2, 3});
  in["b.i64"] = Tensor::from_vector_i64({-5, 0, 1LL << 40}, {3});
  in["c.f64"] = Tensor::from_vector_f64({M_PI, -1e-300}, {2, 1});
  Tensor h = Tensor::empty({3}, DType::kF16);
  Tensor bf = Tensor::empty({1, 3}, DType::kBF16);
  const float hv[3] = {0.5f, -65504.0f, 1.0f / 3.0f};
  for (int i = 0; i < 3; ++i) {
    h.data<uint16_t>()[i] = f32_to_f16(hv[i]);
    bf.data<uint16_t>()[i] = f32_to_bf16(hv[i] * 7.0f);
  }
  in["d.f16"] = h;
  in["e.bf16"] = bf;
  in["f.scalar"] = Tensor::from_vector({42.0f}, {});
  in["g.empty"] = Tensor::empty({0, 4});
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "é ünïcode"}};
  const std::string p = path("rt.safetensors");
  io::save_safetensors(p, in, meta);
  EXPECT_TRUE(strays("rt.safetensors").empty());

  // The header length is a multiple of 8 and __metadata__ comes first.
  const std::string raw = read_all(p);
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw.substr(8, 16), "{\"__metadata__\":");

  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.metadata(), meta);
  std::vector<std::string> names;
  for (const auto& [k, v] : in) names.push_back(k);
  EXPECT_EQ(f.names(), names);
  EXPECT_EQ(f.entry("d.f16").dtype, "F16");
  EXPECT_EQ(f.entry("e.bf16").dtype, "BF16");
  for (const auto& [k, t] : in) {
    SCOPED_TRACE(k);
    Tensor r = f.tensor(k);
    EXPECT_EQ(r.dtype(), t.dtype());
    EXPECT_EQ(r.shape(), t.shape());
    EXPECT_TRUE(r.is_contiguous());
    const size_t nb = t.numel() * dtype_size(t.dtype());
    if (nb > 0) {
      EXPECT_EQ(std::memcmp(r.raw_data(), t.raw_data(), nb), 0);
    }
    // Each tensor is aligned to its element size inside the mapping (zero-copy).
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.raw_data()) % dtype_size(t.dtype()), 0u);
  }
  EXPECT_EQ(f.tensor("d.f16").data<uint16_t>()[1], f32_to_f16(-65504.0f));
}

TEST_F(SafetensorsRoundTrip, TensorsOutliveTheFileAndViewTheMapping) {
  const std::string p = path("v.safetensors");
  io::save_safetensors(p, {{"w", Tensor::from_vector({1, 2, 3, 4}, {2, 2})}});
  Tensor w, w2;
  {
    SafetensorsFile f = SafetensorsFile::open(p);
    w = f.tensor("w");
    w2 = f.tensor("w");
  }
  // Zero-copy: both views share the mapped bytes, and the storage holds the mapping open.
  EXPECT_EQ(w.raw_data(), w2.raw_data());
  EXPECT_EQ(w.storage()->nbytes(), 16u);
  EXPECT_EQ(w.data<float>()[3], 4.0f);
  // Writing through a view changes neither the file nor a fresh open.
  w.data<float>()[0] = 99.0f;
  EXPECT_EQ(SafetensorsFile::open(p).tensor("w").data<float>()[0], 1.0f);
}

TEST_F(SafetensorsRoundTrip, EmptyMapAndLoadHelper) {
  const std::string p = path("empty.safetensors");
  io::save_safetensors(p, {});
  EXPECT_EQ(read_all(p).size(), 16u);  // length + "{}" padded to 8
  EXPECT_TRUE(io::load_safetensors(p).empty());
}

TEST_F(SafetensorsRoundTrip, NonContiguousInputIsWrittenInLogicalOrder) {
  Tensor t = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}).transpose(0, 1);  // [3, 2]
  const std::string p = path("t.safetensors");
  io::save_safetensors(p, {{"t", t}});
  Tensor r = SafetensorsFile::open(p).tensor("t");
  EXPECT_EQ(r.shape(), (Shape{3, 2}));
  const float* d = r.data<float>();
  EXPECT_EQ(std::vector<float>(d, d + 6), (std::vector<float>{1, 4, 2, 5, 3, 6}));
}

TEST_F(SafetensorsRoundTrip, BadNamesAndFoldersAreErrors) {
  Tensor t = Tensor::zeros({1});
  EXPECT_THROW(io::save_safetensors(path("a"), {{"", t}}), Error);
  EXPECT_THROW(io::save_safetensors(path("a"), {{"__metadata__", t}}), Error);
  EXPECT_THROW(io::save_safetensors(path("a"), {{"x", Tensor()}}), Error);
  EXPECT_THROW(io::save_safetensors(path("a"), {{"bad\xff", t}}), Error);
  EXPECT_THROW(io::save_safetensors(path("missing/a"), {{"x", t}}), Error);
  EXPECT_TRUE(strays("").empty());
}

// ---------------- safetensors: other dtypes ----------------

using SafetensorsDtypes = TempDir;

TEST_F(SafetensorsDtypes, SmallIntegersWidenToI64) {
  std::string data;
  const int32_t i32[3] = {-7, 0, 2147483647};
  data.append(reinterpret_cast<const char*>(i32), 12);
  data += std::string("\x00\xff\x07", 3);  // U8
  data += std::string("\x00\x01", 2);      // BOOL
  data += std::string("\x80", 1);          // I8
  const std::string p = write_st("ints.safetensors",
                                 R"({"a":{"dtype":"I32","shape":[3],"data_offsets":[0,12]},)"
                                 R"("b":{"dtype":"U8","shape":[3],"data_offsets":[12,15]},)"
                                 R"("c":{"dtype":"BOOL","shape":[2],"data_offsets":[15,17]},)"
                                 R"("d":{"dtype":"I8","shape":[1,1],"data_offsets":[17,18]}})",
                                 data);
  SafetensorsFile f = SafetensorsFile::open(p);
  auto vals = [&](const std::string& n) {
    Tensor t = f.tensor(n);
    EXPECT_EQ(t.dtype(), DType::kI64);
    return std::vector<int64_t>(t.data<int64_t>(), t.data<int64_t>() + t.numel());
  };
  EXPECT_EQ(vals("a"), (std::vector<int64_t>{-7, 0, 2147483647}));
  EXPECT_EQ(vals("b"), (std::vector<int64_t>{0, 255, 7}));
  EXPECT_EQ(vals("c"), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(vals("d"), (std::vector<int64_t>{-128}));
  EXPECT_EQ(f.dtype("a"), DType::kI64);
}

TEST_F(SafetensorsDtypes, UnsupportedDtypeIsListedButRefusedByName) {
  const std::string p = write_st("f8.safetensors",
                                 R"({"ok":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                 R"("q":{"dtype":"F8_E4M3","shape":[2,2],"data_offsets":[4,8]}})",
                                 f32_bytes({5.0f}) + "abcd");
  SafetensorsFile f = SafetensorsFile::open(p);
  EXPECT_EQ(f.entry("q").dtype, "F8_E4M3");
  EXPECT_EQ(f.shape("q"), (Shape{2, 2}));
  EXPECT_EQ(f.tensor("ok").data<float>()[0], 5.0f);
  try {
    f.tensor("q");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported dtype F8_E4M3 for tensor 'q'"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(f.tensors(), Error);
  EXPECT_THROW(f.tensor("nope"), Error);
}

TEST_F(SafetensorsDtypes, UnalignedDataIsCopied) {
  // A 1-byte U8 first puts the F32 at data offset 1: still readable, through a copy.
  const std::string p = write_st("unaligned.safetensors",
                                 R"({"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                 R"("w":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})",
                                 std::string("\x01", 1) + f32_bytes({2.5f, -1.0f}));
  Tensor w = SafetensorsFile::open(p).tensor("w");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.raw_data()) % 4, 0u);
  EXPECT_EQ(w.data<float>()[0], 2.5f);
  EXPECT_EQ(w.data<float>()[1], -1.0f);
}

TEST_F(SafetensorsDtypes, HeaderPaddedWithSpacesOrNulsAndExtraFieldsAccepted) {
  const std::string h = R"({"w":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":1}})";
  SafetensorsFile a = SafetensorsFile::open(write_st("a", h + "     ", f32_bytes({1.0f})));
  SafetensorsFile b =
      SafetensorsFile::open(write_st("b", h + std::string(3, '\0'), f32_bytes({1.0f})));
  EXPECT_EQ(a.tensor("w").data<float>()[0], 1.0f);
  EXPECT_EQ(b.tensor("w").shape(), Shape{});
}

// ---------------- safetensors: malformed files ----------------

using SafetensorsMalformed = TempDir;

TEST_F(SafetensorsMalformed, MissingFileAndFolder) {
  expect_open_error(path("does_not_exist.safetensors"), {"cannot open"});
  fs::create_directories(path("folder"));
  expect_open_error(path("folder"), {"not a regular file"});
}

TEST_F(SafetensorsMalformed, ShorterThanEightBytes) {
  expect_open_error(write_raw("empty", ""), {"0 bytes long", "8-byte header length"});
  expect_open_error(write_raw("five", "12345"), {"5 bytes long"});
}

TEST_F(SafetensorsMalformed, HeaderLengthPastTheEnd) {
  uint64_t n = 100;
  std::string bytes(reinterpret_cast<const char*>(&n), 8);
  expect_open_error(write_raw("short", bytes + "{}"), {"header length 100", "past the end"});
  expect_open_error(write_raw("bare", bytes), {"header length 100", "past the end"});
}

TEST_F(SafetensorsMalformed, HeaderLengthAbsurd) {
  for (uint64_t n : {uint64_t{1} << 62, ~uint64_t{0}, uint64_t{100'000'001}}) {
    std::string bytes(reinterpret_cast<const char*>(&n), 8);
    expect_open_error(write_raw("huge", bytes + "{}      "), {"header length", "limit"});
  }
}

TEST_F(SafetensorsMalformed, InvalidJson) {
  expect_open_error(write_st("j1", "{\"w\": {", ""), {"not valid JSON"});
  expect_open_error(write_st("j2", "garbage!", ""), {"not valid JSON"});
  expect_open_error(write_st("j3", "", ""), {"not valid JSON"});
  expect_open_error(write_st("j4", "{\"a\":1}{}", ""), {"not valid JSON"});
}

TEST_F(SafetensorsMalformed, HeaderNotAnObject) {
  expect_open_error(write_st("arr", "[1, 2, 3]", ""), {"array, not an object"});
  expect_open_error(write_st("num", "42      ", ""), {"not an object"});
  expect_open_error(write_st("entry", R"({"w": [1, 2]})", ""), {"'w'", "not an object"});
  expect_open_error(write_st("meta", R"({"__metadata__": "x"})", ""), {"__metadata__"});
}

TEST_F(SafetensorsMalformed, MissingFields) {
  expect_open_error(write_st("nodt", R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "1234"),
                    {"'w'", "missing \"dtype\""});
  expect_open_error(write_st("nosh", R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "1234"),
                    {"'w'", "missing \"shape\""});
  expect_open_error(write_st("nooff", R"({"w":{"dtype":"F32","shape":[1]}})", "1234"),
                    {"'w'", "missing \"data_offsets\""});
  expect_open_error(
      write_st("dtnum", R"({"w":{"dtype":3,"shape":[1],"data_offsets":[0,4]}})", "1234"),
      {"'w'", "\"dtype\" is not a string"});
  expect_open_error(
      write_st("shobj", R"({"w":{"dtype":"F32","shape":{},"data_offsets":[0,4]}})", "1234"),
      {"'w'", "\"shape\" is not an array"});
}

TEST_F(SafetensorsMalformed, UnknownDtype) {
  expect_open_error(
      write_st("dt", R"({"w":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}})", "1234"),
      {"'w'", "unknown dtype \"F17\""});
}

TEST_F(SafetensorsMalformed, BadShapes) {
  for (const char* shape : {"[-1]", "[2.5]", "[\"3\"]", "[null]", "[1e3]"}) {
    SCOPED_TRACE(shape);
    expect_open_error(
        write_st("s",
                 str_cat(R"({"w":{"dtype":"F32","shape":)", shape, R"(,"data_offsets":[0,4]}})"),
                 "1234"),
        {"'w'", "not a non-negative integer"});
  }
  // numel * 4 bytes overflows 64 bits.
  expect_open_error(write_st("ovf",
                             R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],)"
                             R"("data_offsets":[0,4]}})",
                             "1234"),
                    {"'w'", "overflows"});
  // An empty tensor whose other sizes overflow the strides (a signed overflow in
  // Tensor::from_storage that UBSan reports under fuzz/fuzz_safetensors.cc; the input is
  // fuzz/corpus/safetensors/crash-empty_tensor_stride_overflow) is refused at open().
  for (const char* shape : {"[0,4611686018427387904,4611686018427387904]",
                            "[4611686018427387904,0,4]", "[3,0,3074457345618258603]"}) {
    SCOPED_TRACE(shape);
    expect_open_error(
        write_st("empty_ovf",
                 str_cat(R"({"w":{"dtype":"F32","shape":)", shape, R"(,"data_offsets":[0,0]}})"),
                 ""),
        {"'w'", "overflows", "non-zero sizes"});
  }
  // Empty tensors whose strides fit still open.
  const std::string ok = write_st(
      "empty_ok", R"({"w":{"dtype":"F32","shape":[0,1073741824,1073741824],"data_offsets":[0,0]}})",
      "");
  EXPECT_EQ(SafetensorsFile::open(ok).tensor("w").shape(), (Shape{0, 1073741824, 1073741824}));
}

TEST_F(SafetensorsMalformed, BadOffsets) {
  const std::string data = f32_bytes({1, 2});
  expect_open_error(
      write_st("range", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data),
      {"'w'", "past the end of the data region"});
  expect_open_error(
      write_st("rev", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", data),
      {"'w'", "reversed"});
  expect_open_error(
      write_st("neg", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", data),
      {"'w'", "not two non-negative integers"});
  expect_open_error(
      write_st("three", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", data),
      {"'w'", "not two non-negative integers"});
  expect_open_error(
      write_st("float", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})", data),
      {"'w'", "not two non-negative integers"});
  expect_open_error(write_st("overlap",
                             R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                             data),
                    {"'a'", "'b'", "overlap"});
}

TEST_F(SafetensorsMalformed, ByteCountMismatch) {
  expect_open_error(write_st("count", R"({"w":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})",
                             std::string(8, '\0')),
                    {"'w'", "needs 6 bytes", "hold 8"});
}

TEST_F(SafetensorsMalformed, BytesNotCoveredByAnyTensor) {
  // A gap between tensors.
  expect_open_error(write_st("gap",
                             R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                             std::string(12, '\0')),
                    {"bytes [4, 8)", "belong to no tensor"});
  // Trailing bytes after the last tensor.
  expect_open_error(write_st("tail", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                             std::string(6, '\0')),
                    {"end at byte 4", "holds 6"});
}

TEST_F(SafetensorsMalformed, DuplicateNames) {
  expect_open_error(write_st("dup",
                             R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                             std::string(8, '\0')),
                    {"'w'", "more than once"});
}

TEST_F(SafetensorsMalformed, TruncatedRealFileFailsAtOpen) {
  const std::string p = path("t.safetensors");
  io::save_safetensors(p, {{"a", Tensor::zeros({64})}, {"b", Tensor::zeros({3, 3})}});
  const std::string full = read_all(p);
  // Every truncation point gives an error, never a crash.
  for (size_t cut = 0; cut < full.size(); cut += 7) {
    SCOPED_TRACE(cut);
    const std::string q = write_raw("cut", full.substr(0, cut));
    EXPECT_THROW(SafetensorsFile::open(q), Error);
  }
}

// ---------------- safetensors: bytes in memory (from_bytes, the parser the fuzzer drives) ------

TEST_F(SafetensorsMalformed, FromBytesParsesAsOpenDoesAndNamesTheSource) {
  const std::string p = path("m.safetensors");
  io::save_safetensors(p, {{"a", Tensor::from_vector({1, 2, 3}, {3})}}, {{"k", "v"}});
  const std::string bytes = read_all(p);
  const SafetensorsFile f = SafetensorsFile::from_bytes(bytes, "upload #3");
  EXPECT_EQ(f.path(), "upload #3");
  EXPECT_EQ(f.names(), std::vector<std::string>{"a"});
  EXPECT_EQ(f.metadata().at("k"), "v");
  Tensor a = f.tensor("a");
  EXPECT_EQ(a.to_vector(), (std::vector<float>{1, 2, 3}));
  // Every truncation fails with the same kind of error as open(), naming the source.
  for (size_t cut = 0; cut < bytes.size(); cut += 5) {
    SCOPED_TRACE(cut);
    try {
      SafetensorsFile::from_bytes(bytes.substr(0, cut), "upload #3");
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("upload #3: ", 0), 0u) << e.what();
    }
  }
}

// A header with 100,000 entries (a real SDXL file has ~2,500): parsed in one linear pass, with a
// duplicate among them still found. The quadratic parse this replaces took minutes at this size.
TEST_F(SafetensorsMalformed, ManyEntriesParseAndADuplicateAmongThemIsFound) {
  const int n = 100000;
  std::string header = "{";
  for (int i = 0; i < n; ++i)
    header += str_cat(i ? "," : "", "\"t", i, "\":{\"dtype\":\"F32\",\"shape\":[1],"
                      "\"data_offsets\":[", 4 * i, ",", 4 * i + 4, "]}");
  auto file = [&](const std::string& h) {
    std::string bytes(8, '\0');
    const uint64_t len = h.size();
    std::memcpy(bytes.data(), &len, 8);
    return bytes + h + std::string(4 * static_cast<size_t>(n), '\0');
  };
  const SafetensorsFile f = SafetensorsFile::from_bytes(file(header + "}"), "many");
  EXPECT_EQ(f.size(), static_cast<size_t>(n));
  try {
    SafetensorsFile::from_bytes(
        file(header + ",\"t7\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"),
        "many");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the name 't7' appears more than once"),
              std::string::npos)
        << e.what();
  }
}

// ---------------- the real files in ../shared/conformance ----------------

// Checks `path` against an independent reading of its raw bytes: every name, dtype, shape and the
// exact data bytes; returns the parsed header.
nlohmann::json check_against_raw_bytes(const std::string& path) {
  const std::string raw = read_all(path);
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  nlohmann::json h = nlohmann::json::parse(raw.substr(8, n));
  const char* data = raw.data() + 8 + n;
  SafetensorsFile f = SafetensorsFile::open(path);
  size_t count = 0;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      for (auto m = it->begin(); m != it->end(); ++m) {
        EXPECT_EQ(f.metadata().at(m.key()), m->get<std::string>());
      }
      continue;
    }
    ++count;
    SCOPED_TRACE(it.key());
    const io::SafetensorsEntry& e = f.entry(it.key());
    EXPECT_EQ(e.dtype, (*it)["dtype"].get<std::string>());
    EXPECT_EQ(e.shape, (*it)["shape"].get<Shape>());
    Tensor t = f.tensor(it.key());
    EXPECT_EQ(t.shape(), e.shape);
    const uint64_t b = (*it)["data_offsets"][0], end = (*it)["data_offsets"][1];
    EXPECT_EQ(static_cast<uint64_t>(t.numel() * dtype_size(t.dtype())), end - b);
    if (end > b) {
      EXPECT_EQ(std::memcmp(t.raw_data(), data + b, end - b), 0);
    }
  }
  EXPECT_EQ(f.size(), count);
  return h;
}

TEST(SafetensorsShared, SdTinyUnet) {
  const std::string dir = STIPPLE_SHARED_DIR "/conformance/sd_tiny/unet";
  if (!fs::exists(dir)) GTEST_SKIP() << "no ../shared/conformance";
  check_against_raw_bytes(dir + "/diffusion_pytorch_model.safetensors");
  SafetensorsFile f = SafetensorsFile::open(dir + "/diffusion_pytorch_model.safetensors");
  // Shapes the config implies: conv_in is [block_out_channels[0], in_channels, 3, 3].
  std::ifstream cfg_in(dir + "/config.json");
  const nlohmann::json cfg = nlohmann::json::parse(cfg_in);
  const int64_t c0 = cfg["block_out_channels"][0], cin = cfg["in_channels"];
  const int64_t cout = cfg["out_channels"];
  EXPECT_EQ(f.shape("conv_in.weight"), (Shape{c0, cin, 3, 3}));
  EXPECT_EQ(f.shape("conv_out.weight"), (Shape{cout, c0, 3, 3}));
  EXPECT_EQ(f.shape("time_embedding.linear_1.weight"), (Shape{4 * c0, c0}));
  EXPECT_EQ(f.dtype("conv_in.weight"), DType::kF32);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  // Random-initialised float weights: finite, not all zero.
  Tensor w = f.tensor("down_blocks.0.resnets.0.conv1.weight");
  double sumsq = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(w.data<float>()[i]));
    sumsq += w.data<float>()[i] * w.data<float>()[i];
  }
  EXPECT_GT(sumsq, 0.0);
}

TEST(SafetensorsShared, SdTinyUnetIo) {
  const std::string p = STIPPLE_SHARED_DIR "/conformance/sd_tiny/reference/unet_io.safetensors";
  if (!fs::exists(p)) GTEST_SKIP() << "no ../shared/conformance";
  check_against_raw_bytes(p);
  SafetensorsFile f = SafetensorsFile::open(p);
  // README: timestep_a is a 0-d I64 tensor 500; timestep_b is F32 [B].
  Tensor ta = f.tensor("timestep_a");
  EXPECT_EQ(ta.dtype(), DType::kI64);
  EXPECT_EQ(ta.dim(), 0);
  EXPECT_EQ(ta.data<int64_t>()[0], 500);
  const Shape sample = f.shape("sample");
  ASSERT_EQ(sample.size(), 4u);
  EXPECT_EQ(f.dtype("timestep_b"), DType::kF32);
  EXPECT_EQ(f.shape("timestep_b"), Shape{sample[0]});
  EXPECT_EQ(f.shape("out_a"), sample);
  EXPECT_EQ(f.shape("out_b"), sample);
}

TEST(SafetensorsShared, TextEncoderPositionIds) {
  const std::string dir = STIPPLE_SHARED_DIR "/conformance/sd_tiny/text_encoder";
  if (!fs::exists(dir)) GTEST_SKIP() << "no ../shared/conformance";
  check_against_raw_bytes(dir + "/model.safetensors");
  SafetensorsFile f = SafetensorsFile::open(dir + "/model.safetensors");
  std::ifstream cfg_in(dir + "/config.json");
  const nlohmann::json cfg = nlohmann::json::parse(cfg_in);
  const int64_t v = cfg["vocab_size"], d = cfg["hidden_size"];
  EXPECT_EQ(f.shape("text_model.embeddings.token_embedding.weight"), (Shape{v, d}));
}

TEST(SafetensorsShared, TorchRngCasesMatchCasesJson) {
  const std::string dir = STIPPLE_SHARED_DIR "/conformance/rng";
  if (!fs::exists(dir)) GTEST_SKIP() << "no ../shared/conformance";
  check_against_raw_bytes(dir + "/torch_cpu_rng.safetensors");
  SafetensorsFile f = SafetensorsFile::open(dir + "/torch_cpu_rng.safetensors");
  std::ifstream cases_in(dir + "/cases.json");
  const nlohmann::json cases = nlohmann::json::parse(cases_in)["cases"];
  ASSERT_FALSE(cases.empty());
  // Each case is one tensor `name` (op, shape, dtype) or a sequence of draws `name_<draw>` (f32).
  size_t expected = 0;
  for (const auto& c : cases) {
    std::vector<std::pair<std::string, Shape>> draws;
    if (c.contains("draws")) {
      for (const auto& d : c["draws"]) {
        draws.emplace_back(str_cat(c["name"].get<std::string>(), "_", d[0].get<std::string>()),
                           d[1].get<Shape>());
      }
    } else {
      draws.emplace_back(c["name"].get<std::string>(), c["shape"].get<Shape>());
    }
    const bool f64 = c.value("dtype", "float32") == "float64";
    const bool uniform = c["op"].get<std::string>().rfind("rand ", 0) == 0;
    for (const auto& [name, shape] : draws) {
      SCOPED_TRACE(name);
      ++expected;
      ASSERT_TRUE(f.contains(name));
      EXPECT_EQ(f.shape(name), shape);
      EXPECT_EQ(f.dtype(name), f64 ? DType::kF64 : DType::kF32);
      Tensor t = f.tensor(name);
      // randn draws are finite and moderate; rand draws lie in [0, 1).
      for (int64_t i = 0; i < t.numel(); ++i) {
        const double x = f64 ? t.data<double>()[i] : t.data<float>()[i];
        ASSERT_TRUE(std::isfinite(x));
        if (uniform) {
          ASSERT_GE(x, 0.0);
          ASSERT_LT(x, 1.0);
        } else {
          ASSERT_LT(std::abs(x), 8.0);
        }
      }
    }
  }
  EXPECT_EQ(f.size(), expected);
}

TEST(SafetensorsShared, EveryConformanceFileOpens) {
  const std::string dir = STIPPLE_SHARED_DIR "/conformance";
  if (!fs::exists(dir)) GTEST_SKIP() << "no ../shared/conformance";
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    SCOPED_TRACE(e.path().string());
    SafetensorsFile f = SafetensorsFile::open(e.path().string());
    EXPECT_GT(f.size(), 0u);
    EXPECT_EQ(f.tensors().size(), f.size());
    ++files;
  }
  EXPECT_GT(files, 10);
}

}  // namespace
}  // namespace stipple
