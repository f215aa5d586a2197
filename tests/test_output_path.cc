// Output paths from users: numbered patterns without printf, and writes that only ever replace
// regular files.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/output_path.h"
#include "io/png.h"
#include "io/read_file.h"
#include "io/safetensors.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;

TEST(OutputPath, FillsOneIntegerConversionAsPrintfWould) {
  EXPECT_TRUE(io::has_number_conversion("out/img_%03d.png"));
  EXPECT_EQ(io::numbered_path("out/img_%03d.png", 7), "out/img_007.png");
  EXPECT_EQ(io::numbered_path("img_%d.png", 12), "img_12.png");
  EXPECT_EQ(io::numbered_path("img_%3d.png", 5), "img_  5.png");
  EXPECT_EQ(io::numbered_path("img_%02d.png", 123), "img_123.png");
  EXPECT_EQ(io::numbered_path("100%%_%d.png", 1), "100%_1.png");
  EXPECT_FALSE(io::has_number_conversion("plain.png"));
  EXPECT_FALSE(io::has_number_conversion("50%%.png"));
  EXPECT_EQ(io::numbered_path("50%%.png", 3), "50%.png");
}

TEST(OutputPath, RefusesEveryOtherConversion) {
  for (const char* bad : {"a_%d_%s.png", "a_%s.png", "a_%x.png", "%n", "a_%d_%d.png", "a%",
                          "a_%-3d.png", "a_%99d.png", "a_%ld.png", "%p%p%p"}) {
    try {
      io::has_number_conversion(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--out"), std::string::npos) << e.what();
    }
    EXPECT_THROW(io::numbered_path(bad, 0), Error) << bad;
  }
}

TEST(AtomicFile, ReplacesOnlyRegularFiles) {
  const fs::path dir = fs::path(::testing::TempDir()) / "atomic_nonregular";
  fs::create_directories(dir);
  const std::string fifo = (dir / "fifo").string();
  fs::remove(fifo);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  try {
    io::write_file_atomic(fifo, "x");
    ADD_FAILURE() << "wrote over a FIFO";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("it is a FIFO"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_fifo(fifo));
  EXPECT_THROW(io::write_file_atomic("/dev/null", "x"), Error);
  EXPECT_THROW(io::write_file_atomic(dir.string(), "x"), Error);
  // No temporary file is left behind, and regular files are still replaced.
  const std::string file = (dir / "file.txt").string();
  io::write_file_atomic(file, "one");
  io::write_file_atomic(file, "two");
  std::ifstream in(file);
  std::string text;
  in >> text;
  EXPECT_EQ(text, "two");
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) entries += e.path().filename() != "" ? 1 : 0;
  EXPECT_EQ(entries, 2);  // fifo and file.txt
}

// Reading a FIFO (or a folder) named as a config, image, weights or tokenizer file is an error
// at once, never a read that blocks forever.
TEST(ReadFile, NonRegularFilesAreRefusedWithoutBlocking) {
  const fs::path dir = fs::path(::testing::TempDir()) / "read_fifo";
  fs::create_directories(dir);
  const std::string fifo = (dir / "weights.safetensors").string();
  fs::remove(fifo);
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THROW(io::read_json_file(fifo), Error);
  EXPECT_THROW(io::read_png(fifo), Error);
  EXPECT_THROW(io::SafetensorsFile::open(fifo), Error);
  EXPECT_THROW(io::read_file_bounded(fifo), Error);
  try {
    io::read_file_bounded(dir.string(), "config file");
    ADD_FAILURE() << "read a folder";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a folder, not a regular config file"),
              std::string::npos)
        << e.what();
  }
  const std::string big = (dir / "big.json").string();
  std::ofstream(big) << std::string(2048, ' ');
  EXPECT_THROW(io::read_file_bounded(big, "JSON file", 1024), Error);
  EXPECT_EQ(io::read_file_bounded(big, "JSON file", 4096).size(), 2048u);
}

// Temporaries of a process killed mid-write go; a live process's stay; other names stay.
TEST(AtomicFile, CreateOutputDirNamesTheFolderAndTheReason) {
  const fs::path dir = fs::path(::testing::TempDir()) / "output_dir";
  fs::remove_all(dir);
  io::create_output_dir((dir / "a" / "b").string());
  EXPECT_TRUE(fs::is_directory(dir / "a" / "b"));
  io::create_output_dir((dir / "a").string());  // an existing folder is fine
  io::write_file_atomic((dir / "file").string(), "x");
  for (const fs::path& bad : {dir / "file", dir / "file" / "below"}) {
    try {
      io::create_output_dir(bad.string());
      ADD_FAILURE() << "no error for " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kIo);
      EXPECT_NE(std::string(e.what()).find("cannot create the output folder " + bad.string()),
                std::string::npos)
          << e.what();
    }
  }
  fs::remove_all(dir);
}

TEST(AtomicFile, RemovesStaleTemporaries) {
  const fs::path dir = fs::path(::testing::TempDir()) / "atomic_stale";
  fs::remove_all(dir);
  fs::create_directories(dir / "checkpoint-5");
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ::waitpid(child, nullptr, 0);  // a pid that no longer runs
  auto touch = [&](const fs::path& p) { std::ofstream(p) << "x"; };
  touch(dir / str_cat("log.csv.tmp.", child, ".3"));
  touch(dir / "checkpoint-5" / str_cat("model.safetensors.tmp.", child, ".0"));
  touch(dir / str_cat("mine.json.tmp.", ::getpid(), ".1"));
  touch(dir / "notes.tmp.txt");
  EXPECT_EQ(io::remove_stale_temporaries(dir.string()), 2);
  EXPECT_FALSE(fs::exists(dir / str_cat("log.csv.tmp.", child, ".3")));
  EXPECT_TRUE(fs::exists(dir / str_cat("mine.json.tmp.", ::getpid(), ".1")));
  EXPECT_TRUE(fs::exists(dir / "notes.tmp.txt"));
  EXPECT_EQ(io::remove_stale_temporaries((dir / "missing").string()), 0);
}

}  // namespace
}  // namespace stipple
