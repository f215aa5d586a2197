// `stipple serve` under load and at its edges: models loaded lazily and evicted least recently
// used first, a shutdown that lets the running job finish within its grace, clients that
// disconnect mid-generation or read slowly, a flood of requests (only 200 or 429, counted in
// /metrics), and SIGTERM on the command as users run it.
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
#include <fstream>
#include <thread>

#include "../apps/server/server.h"
#include "support/serving.h"

namespace stipple::server {
namespace {

using nlohmann::json;

const std::string kSdTiny = std::string(STIPPLE_SHARED_DIR) + "/conformance/sd_tiny";

TEST(Server, ModelsLoadLazilyAndTheLeastRecentlyUsedIsUnloaded) {
  if (!std::filesystem::exists(kSdTiny)) GTEST_SKIP() << "no " << kSdTiny;
  ServerOptions o;
  o.models = {kFashion, kSdTiny};
  // Room for one of them: the fashion DiT needs about 34 MB (its weights as f32), the tiny SD
  // fewer, but more than the 2 MB the DiT leaves.
  o.memory_budget_mb = 36;
  Serving s(o);
  auto state = [&](int i) { return s.get("/readyz").second["models"][i]["state"]; };
  EXPECT_EQ(state(0), "loaded");
  EXPECT_EQ(state(1), "unloaded");
  const auto [s1, sd] = s.post(
      "/sdapi/v1/txt2img",
      R"({"prompt": "a cat", "steps": 2, "override_settings": {"sd_model_checkpoint": "sd_tiny"}})");
  ASSERT_EQ(s1, 200) << sd.dump();
  EXPECT_EQ(state(1), "loaded");
  EXPECT_EQ(state(0), "unloaded");
  // Back to the first: it loads again and still draws the same image.
  const auto [s2, bag] =
      s.post("/v1/images/generations", R"({"prompt": "bag", "seed": 4, "steps": 2})");
  ASSERT_EQ(s2, 200) << bag.dump();
  EXPECT_EQ(decode_png(base64_decode(bag["data"][0]["b64_json"], "png")).pixels,
            api_pixels("bag", 4, 2));
  EXPECT_EQ(state(0), "loaded");
  EXPECT_EQ(state(1), "unloaded");
  // A folder of models serves each model in it (models/ holds a classifier too: not served).
  ServerOptions folder;
  folder.models = {std::string(STIPPLE_SOURCE_DIR) + "/models"};
  Serving all(folder);
  const std::string listed = all.get("/v1/models").second["data"].dump();
  EXPECT_NE(listed.find("\"fashion-mnist-dit\""), std::string::npos) << listed;
  EXPECT_EQ(listed.find("classifier"), std::string::npos) << listed;
  ServerOptions none;
  none.models = {std::string(STIPPLE_SOURCE_DIR) + "/docs"};
  EXPECT_THROW(Server{none}, Error);
  // sd-models describes both, loaded or not.
  const json models = s.get("/sdapi/v1/sd-models").second;
  EXPECT_EQ(models[1]["stipple"]["family"], "SD 1.x");
  EXPECT_EQ(models[1]["stipple"]["loaded"], false);
}

TEST(Server, ShutdownLetsTheRunningJobFinishWithinTheGrace) {
  std::pair<int, json> result;
  auto s = std::make_unique<Serving>(fashion());
  std::thread job([&] {
    result = s->post("/sdapi/v1/txt2img", R"({"prompt": "coat", "seed": 1, "steps": 60})");
  });
  for (int i = 0; i < 3000 && s->get("/sdapi/v1/progress").second["state"]["sampling_step"] == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  s->server().shutdown(60);  // returns once the job is done
  job.join();
  ASSERT_EQ(result.first, 200) << result.second.dump();
  EXPECT_EQ(json::parse(result.second["info"].get<std::string>())["interrupted"], false);
  EXPECT_EQ(result.second["images"].size(), 1u);
  // With no grace the running job is cancelled.
  s = std::make_unique<Serving>(fashion());
  std::thread job2([&] {
    result = s->post("/sdapi/v1/txt2img", R"({"prompt": "coat", "steps": 150, "batch_size": 16})");
  });
  for (int i = 0; i < 3000 && s->get("/sdapi/v1/progress").second["state"]["sampling_step"] == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  s->server().shutdown(0);
  job2.join();
  ASSERT_EQ(result.first, 200) << result.second.dump();
  EXPECT_EQ(json::parse(result.second["info"].get<std::string>())["interrupted"], true);
  s.reset();
}

TEST(Server, AClientThatDisconnectsMidGenerationLeavesNothingBehind) {
  Serving s(fashion());
  {
    httplib::Client c("127.0.0.1", s.port());
    c.set_read_timeout(0, 200000);  // gives up (and closes) 0.2 s into a ~1 s generation
    EXPECT_FALSE(c.Post("/sdapi/v1/txt2img", R"({"prompt": "coat", "steps": 60})",
                        "application/json"));
  }
  // The job runs to its end; the server answers meanwhile, and holds nothing afterwards.
  EXPECT_EQ(s.get("/healthz").first, 200);
  json jobs;
  for (int i = 0; i < 12000; ++i) {  // up to 2 min: sanitizer builds on a loaded machine are slow
    jobs = s.get("/v1/jobs").second["data"];
    if (jobs.size() == 1 && jobs[0]["state"] == "succeeded") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0]["state"], "succeeded");
  EXPECT_EQ(s.get("/sdapi/v1/progress").second["state"]["job_count"], 0);
  EXPECT_EQ(s.post("/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": 1})").first, 200);
}

TEST(Server, ASlowClientIsCutOffWhileOthersAreServed) {
  ServerOptions o = fashion();
  o.read_timeout_seconds = 1;
  Serving s(o);
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(s.port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string head =
      "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: 1000\r\n\r\n{\"prompt\": ";
  ASSERT_EQ(::send(fd, head.data(), head.size(), 0), static_cast<ssize_t>(head.size()));
  EXPECT_EQ(s.get("/sdapi/v1/samplers").first, 200);  // served while that body never comes
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  // Cut off after the read timeout: an error answer (then the connection closes, at the latest
  // when the keep-alive wait ends).
  const auto start = std::chrono::steady_clock::now();
  char buf[4096];
  std::string got;
  double first_byte = -1;
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {
    if (first_byte < 0)
      first_byte = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(n, 0) << "the server should close the connection";
  EXPECT_EQ(got.rfind("HTTP/1.1 4", 0), 0u) << got;
  EXPECT_GE(first_byte, 0.5);
  EXPECT_LT(first_byte, 3.0);
  ::close(fd);
  EXPECT_EQ(s.get("/healthz").first, 200);
}

TEST(Server, AFloodGetsOnly200Or429AndMetricsCountIt) {
  ServerOptions o = fashion();
  o.queue = 16;
  Serving s(o);
  auto resident = [&] { return s.get("/sdapi/v1/memory").second["ram"]["process_resident"].get<double>(); };
  ASSERT_EQ(s.post("/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": 20})").first, 200);
  // Two floods: the first also sets up what any burst of client threads leaves in this test
  // process (their malloc arenas and cached stacks), so the memory compared is the server's,
  // across the second flood: it must not grow with the requests answered.
  constexpr int kRequests = 100;
  int ok = 0, busy = 0;
  auto flood = [&] {
    std::vector<int> status(kRequests, 0);
    std::vector<std::string> retry_after(kRequests);
    std::vector<std::thread> clients;
    for (int i = 0; i < kRequests; ++i)
      clients.emplace_back([&, i] {
        httplib::Client c("127.0.0.1", s.port());
        // The 17 accepted requests run one after another; under ASan on two loaded cores 20-step
        // images took over 120 s for the last of them. The queue is the point, not the images:
        // 4 steps each, and a generous wait.
        c.set_read_timeout(600, 0);
        auto res = c.Post("/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": 4, "seed": 1})",
                          "application/json");
        if (!res) {  // a connection error
          retry_after[i] = httplib::to_string(res.error());
          return;
        }
        status[i] = res->status;
        retry_after[i] = res->get_header_value("Retry-After");
      });
    for (std::thread& t : clients) t.join();
    int flood_ok = 0, flood_busy = 0;
    for (int i = 0; i < kRequests; ++i) {
      EXPECT_TRUE(status[i] == 200 || status[i] == 429)
          << "request " << i << ": " << status[i] << " " << retry_after[i];
      flood_ok += status[i] == 200;
      if (status[i] == 429) {
        ++flood_busy;
        EXPECT_FALSE(retry_after[i].empty());
      }
    }
    EXPECT_GE(flood_ok, 17);  // the queue and the running one, at least
    EXPECT_GT(flood_busy, 0);
    ok += flood_ok;
    busy += flood_busy;
  };
  flood();
  const double before = resident();
  flood();
  const double after = resident();
  // Measured +1% to +5% here (2-core Zen 5, training beside it): the bound is for growth with the
  // requests answered, above what the client threads themselves leave behind.
  EXPECT_LT(after, before * 1.15) << "resident memory " << before << " -> " << after;
  auto m = s.client().Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("stipple_http_requests_total{route=\"POST /sdapi/v1/txt2img\",status=\"200\"} " +
                         std::to_string(ok + 1)),
            std::string::npos) << m->body;
  EXPECT_NE(m->body.find("stipple_http_requests_total{route=\"POST /sdapi/v1/txt2img\",status=\"429\"} " +
                         std::to_string(busy)),
            std::string::npos) << m->body;
  EXPECT_NE(m->body.find("stipple_queue_length 0"), std::string::npos);
  std::printf("flood: 2 x %d requests, %d answered 200, %d answered 429; resident across the second %.1f -> %.1f MB\n",
              kRequests, ok, busy, before / 1e6, after / 1e6);
}

TEST(Server, SigtermStopsTheCommandAfterItsJobWithExitZero) {
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  const std::string cli = STIPPLE_CLI;
  std::vector<std::string> args = {cli, "serve", "--model", kFashion, "--port", "0", "--quiet",
                                   "--grace", "60"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, cli.c_str(), &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  // "stipple serve: http://127.0.0.1:PORT ..."
  std::string line;
  char c;
  while (line.find('\n') == std::string::npos && ::read(out[0], &c, 1) == 1) line += c;
  const size_t colon = line.find("127.0.0.1:");
  ASSERT_NE(colon, std::string::npos) << line;
  const int port = std::stoi(line.substr(colon + 10));
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(120, 0);
  for (int i = 0; i < 3000; ++i) {
    auto res = client.Get("/readyz");
    if (res && res->status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  int status = 0;
  size_t images = 0;
  std::thread job([&] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    auto res = c.Post("/sdapi/v1/txt2img", R"({"prompt": "coat", "steps": 80})", "application/json");
    if (!res) return;
    status = res->status;
    images = json::parse(res->body)["images"].size();
  });
  for (int i = 0; i < 3000; ++i) {
    auto res = client.Get("/sdapi/v1/progress");
    if (res && json::parse(res->body)["state"]["sampling_step"].get<int>() > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  job.join();
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ::close(out[0]);
  EXPECT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
  EXPECT_EQ(status, 200);  // the running job finished within the grace
  EXPECT_EQ(images, 1u);
}

}  // namespace
}  // namespace stipple::server
