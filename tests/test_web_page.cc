// The web page `stipple serve` hands out, in a real browser: headless Chromium driven over
// WebDriver (Debian's chromium-driver) generates, shows progress, cancels and sends the API key.
// Skipped where Chromium is not installed.
#include <gtest/gtest.h>

#include <httplib.h>

#include <nlohmann/json.hpp>
#include <stipple/stipple.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "support/serving.h"

namespace stipple::server {
namespace {

using nlohmann::json;

// A free loopback port (bound and released; the tiny race is harmless in a test).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// A WebDriver session in headless Chromium (chromedriver from Debian's chromium-driver).
class Browser {
 public:
  static constexpr const char* kDriver = "/usr/bin/chromedriver";
  static constexpr const char* kChromium = "/usr/bin/chromium";
  static bool available() {
    return std::filesystem::exists(kDriver) && std::filesystem::exists(kChromium);
  }
  Browser() : port_(free_port()), http_("127.0.0.1", port_) {
    std::vector<std::string> args = {kDriver, "--port=" + std::to_string(port_), "--silent"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, kDriver, nullptr, nullptr, argv.data(), environ) != 0) pid_ = 0;
    http_.set_read_timeout(60, 0);
    for (int i = 0; i < 1500; ++i) {  // up to 30 s on a loaded machine
      auto res = http_.Get("/status");
      if (res && res->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const json caps = {
        {"capabilities",
         {{"alwaysMatch",
           {{"browserName", "chrome"},
            {"goog:chromeOptions",
             {{"binary", kChromium},
              {"args", {"--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1100,900"}}}}}}}}};
    session_ = call("POST", "/session", caps)["sessionId"];
  }
  ~Browser() {
    if (!session_.empty()) http_.Delete(("/session/" + session_).c_str());
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  // One WebDriver command; its "value".
  json call(const std::string& method, const std::string& path, const json& body = json::object()) {
    auto res = method == "GET" ? http_.Get(path.c_str())
                               : http_.Post(path.c_str(), body.dump(), "application/json");
    if (!res) throw Error("WebDriver: no answer to " + method + " " + path);
    const json j = json::parse(res->body, nullptr, false);
    if (res->status != 200) throw Error("WebDriver: " + path + ": " + res->body.substr(0, 400));
    return j.value("value", json());
  }
  json session(const std::string& method, const std::string& path, const json& body = json::object()) {
    return call(method, "/session/" + session_ + path, body);
  }
  void go(const std::string& url) { session("POST", "/url", {{"url", url}}); }
  json run(const std::string& script) {
    return session("POST", "/execute/sync", {{"script", script}, {"args", json::array()}});
  }
  void click(const std::string& css) {
    const json e = session("POST", "/element", {{"using", "css selector"}, {"value", css}});
    session("POST", "/element/" + e.begin().value().get<std::string>() + "/click");
  }
  // Polls `script` until it returns true (or `seconds` pass).
  bool until(const std::string& script, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      if (run(script) == true) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  std::vector<uint8_t> screenshot() {
    return base64_decode(session("GET", "/screenshot").get<std::string>(), "screenshot");
  }

 private:
  int port_;
  pid_t pid_ = 0;
  httplib::Client http_;
  std::string session_;
};

// The page's status and error lines, for a failure's message.
std::string page_state(Browser& b) {
  return "status: \"" +
         b.run("return document.getElementById('status').textContent").get<std::string>() +
         "\", error: \"" +
         b.run("return document.getElementById('error').textContent").get<std::string>() + "\"";
}

TEST(Server, TheWebPageGeneratesShowsProgressAndCancelsInChromium) {
  if (!Browser::available())
    GTEST_SKIP() << "no headless Chromium (scripts/setup.sh --test installs chromium and "
                    "chromium-driver)";
  ServerOptions o = fashion();
  o.preview_every = 1;
  Serving s(o);
  Browser b;
  b.go("http://127.0.0.1:" + std::to_string(s.port()) + "/");
  // The form fills itself from the server: a class picker for the class-to-image model.
  ASSERT_TRUE(b.until("return document.getElementById('class').options.length === 10", 60))
      << page_state(b);
  EXPECT_EQ(b.run("return getComputedStyle(document.getElementById('prompt-label')).display"),
            "none");
  EXPECT_EQ(b.run("return getComputedStyle(document.getElementById('class-label')).display"),
            "grid");
  EXPECT_EQ(b.run("return document.getElementById('steps').value"), "30");  // the folder's default
  // Generate: 2 images of 100 steps; progress moves, a live preview shows, the images arrive.
  b.run("document.getElementById('class').value = 'sneaker';"
        "document.getElementById('steps').value = '100';"
        "document.getElementById('count').value = '2';"
        "document.getElementById('seed').value = '5';"
        "window.widths = []; window.statuses = []; window.previews = 0;"
        "setInterval(() => {"
        "  window.widths.push(document.querySelector('#bar div').style.width);"
        "  const s = document.getElementById('status').textContent;"
        "  if (window.statuses[window.statuses.length - 1] !== s) window.statuses.push(s);"
        "  if (!document.getElementById('preview').hidden) ++window.previews;"
        "}, 20);");
  b.click("#generate");
  // What the page showed on the way is recorded by the page itself (every 20 ms) and read once
  // the images are in: polling over WebDriver could miss a short generation's middle on a
  // loaded machine.
  ASSERT_TRUE(b.until("return document.querySelectorAll('#gallery img').length === 2", 90))
      << page_state(b);
  EXPECT_GT(b.run("return window.previews").get<int>(), 0) << "no live preview was shown";
  EXPECT_TRUE(b.run("return window.statuses.some((s) => /^step \\d+ of 200/.test(s))") == true)
      << "statuses seen: " << b.run("return window.statuses").dump();
  const json widths = b.run("return window.widths.filter((w) => w && w !== '0%' && w !== '100%')");
  EXPECT_GT(widths.size(), 0u) << "the bar never showed partial progress";
  EXPECT_NE(b.run("return document.getElementById('status').textContent").get<std::string>().find("done: 2 images"),
            std::string::npos);
  EXPECT_NE(b.run("return document.querySelector('#gallery figcaption').textContent").get<std::string>().find("Seed: 5"),
            std::string::npos);
  const std::string shot = std::filesystem::current_path().string() + "/web-page.png";
  const std::vector<uint8_t> png = b.screenshot();
  save_png(shot, decode_png(png));
  std::printf("screenshot: %s\n", shot.c_str());
  // Cancel: a long generation stops, no image is added, the page says so.
  b.run("document.getElementById('steps').value = '150';"
        "document.getElementById('count').value = '16';");
  b.click("#generate");
  ASSERT_TRUE(b.until("return /step [1-9]/"
                      ".test(document.getElementById('status').textContent)", 60))
      << page_state(b);
  b.click("#cancel");
  ASSERT_TRUE(b.until("return document.getElementById('status').textContent === 'cancelled'", 60))
      << page_state(b);
  EXPECT_EQ(b.run("return document.querySelectorAll('#gallery img').length"), 2);
  EXPECT_EQ(b.run("return document.getElementById('generate').disabled"), false);
}

TEST(Server, TheWebPageSendsTheApiKeyInChromium) {
  if (!Browser::available())
    GTEST_SKIP() << "no headless Chromium (scripts/setup.sh --test installs chromium and "
                    "chromium-driver)";
  ServerOptions o = fashion();
  o.api_key = "sekrit";
  o.preview_every = 1;
  Serving s(o);
  Browser b;
  b.go("http://127.0.0.1:" + std::to_string(s.port()) + "/");
  // Without the key the page says why it cannot list the models; with it, it can.
  ASSERT_TRUE(b.until("return /Authorization/"
                      ".test(document.getElementById('error').textContent)", 60))
      << page_state(b);
  b.run("const k = document.getElementById('key'); k.value = 'sekrit';"
        "k.dispatchEvent(new Event('change'));");
  ASSERT_TRUE(b.until("return document.getElementById('class').options.length === 10", 60))
      << page_state(b);
  b.run("document.getElementById('steps').value = '60';");
  b.click("#generate");
  ASSERT_TRUE(b.until("return document.querySelectorAll('#gallery img').length === 1", 90))
      << page_state(b);
  EXPECT_EQ(b.run("return document.getElementById('error').textContent"), "");
}

}  // namespace
}  // namespace stipple::server
