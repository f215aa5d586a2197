// `stipple serve` over real HTTP on a free loopback port: the A1111 and OpenAI routes answer as
// those clients expect (base64 PNGs carrying the parameters chunk, A1111's info string), a seed
// gives the same image through the API, A1111 and OpenAI routes, and bad requests get a 4xx
// with a JSON error naming the problem while the server keeps serving.
#include <gtest/gtest.h>

#include <httplib.h>

#include <nlohmann/json.hpp>
#include <stipple/stipple.h>
#include <thread>

#include "../apps/server/server.h"

namespace stipple::server {
namespace {

using nlohmann::json;

const std::string kFashion = std::string(STIPPLE_SOURCE_DIR) + "/models/fashion-mnist-dit";

class Serving {
 public:
  explicit Serving(ServerOptions o) {
    o.port = 0;
    o.log_requests = false;
    server_ = std::make_unique<Server>(o);
    thread_ = std::thread([this] { server_->run(); });
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(120, 0);
    for (int i = 0; i < 100 && !client_->Get("/healthz"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ~Serving() {
    server_->stop();
    thread_.join();
  }
  httplib::Client& client() { return *client_; }
  // POSTs `body` (JSON) and returns (status, parsed reply). Each call has its own connection,
  // so calls from several threads run at once.
  std::pair<int, json> post(const std::string& path, const std::string& body) {
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(120, 0);
    auto res = c.Post(path.c_str(), body, "application/json");
    if (!res) return {0, json()};
    return {res->status, json::parse(res->body, nullptr, false)};
  }
  std::pair<int, json> get(const std::string& path) {
    httplib::Client c("127.0.0.1", server_->port());
    auto res = c.Get(path.c_str());
    if (!res) return {0, json()};
    return {res->status, json::parse(res->body, nullptr, false)};
  }

 private:
  std::unique_ptr<Server> server_;
  std::thread thread_;
  std::unique_ptr<httplib::Client> client_;
};

ServerOptions fashion() {
  ServerOptions o;
  o.models = {kFashion};
  return o;
}

TEST(Server, Base64RoundTripAndErrors) {
  for (size_t n = 0; n < 10; ++n) {
    std::vector<uint8_t> v;
    for (size_t i = 0; i < n + 1; ++i) v.push_back(static_cast<uint8_t>(i * 37 + n));
    EXPECT_EQ(base64_decode(base64_encode(v), "x"), v);
  }
  EXPECT_EQ(base64_encode({'M', 'a', 'n'}), "TWFu");
  EXPECT_EQ(base64_encode({'M'}), "TQ==");
  EXPECT_EQ(base64_decode("data:image/png;base64,TWFu", "x"), (std::vector<uint8_t>{'M', 'a', 'n'}));
  EXPECT_THROW(base64_decode("TW*u", "x"), Error);
  EXPECT_THROW(base64_decode("TQ=a", "x"), Error);
  EXPECT_THROW(base64_decode("T", "x"), Error);
}

TEST(Server, A1111Txt2ImgMatchesTheApiAndCarriesItsParameters) {
  Serving s(fashion());
  const auto [status, reply] = s.post(
      "/sdapi/v1/txt2img",
      R"({"prompt": "sneaker", "seed": 3, "steps": 2, "batch_size": 2, "width": 512,
          "height": 512, "sampler_name": "DPM++ 2M", "scheduler": "Karras",
          "some_future_field": 1})");
  ASSERT_EQ(status, 200) << reply.dump();
  ASSERT_EQ(reply["images"].size(), 2u);
  ASSERT_TRUE(reply["info"].is_string());
  const json info = json::parse(reply["info"].get<std::string>());
  EXPECT_EQ(info["seed"], 3);
  EXPECT_EQ(info["all_seeds"], json({3, 4}));
  EXPECT_EQ(info["sampler_name"], "DPM++ 2M Karras");
  EXPECT_EQ(info["steps"], 2);
  EXPECT_EQ(info["width"], 28);
  ASSERT_EQ(info["infotexts"].size(), 2u);
  EXPECT_EQ(reply["parameters"]["some_future_field"], 1);  // the request, echoed
  // 512x512 cannot be honoured by a 28x28 model: said, not dropped.
  EXPECT_NE(info["not_honoured"].dump().find("draws only 28x28"), std::string::npos);
  // The PNG carries A1111's parameters chunk, and equals the API's image for seed 4.
  std::string params;
  const Image png = decode_png(base64_decode(reply["images"][1].get<std::string>(), "png"), &params);
  EXPECT_EQ(params, info["infotexts"][1].get<std::string>());
  const Engine engine = Engine::open(kFashion);
  GenerateRequest r;
  r.class_labels = {"sneaker"};
  r.seed = 4;
  r.steps = 2;
  r.sampler = "dpm++2m_karras";
  EXPECT_EQ(engine.generate(r).images[0].image.pixels, png.pixels);
  // png-info reads it back.
  const auto [s2, pnginfo] =
      s.post("/sdapi/v1/png-info", json{{"image", reply["images"][1]}}.dump());
  EXPECT_EQ(s2, 200);
  EXPECT_EQ(pnginfo["info"], params);
}

TEST(Server, OpenAIGenerationsAndModels) {
  Serving s(fashion());
  const auto [status, reply] = s.post(
      "/v1/images/generations",
      R"({"model": "fashion-mnist-dit", "prompt": "bag", "n": 2, "seed": 4, "steps": 2,
          "sampler": "dpm++2m_karras"})");
  ASSERT_EQ(status, 200) << reply.dump();
  ASSERT_EQ(reply["data"].size(), 2u);
  EXPECT_TRUE(reply["created"].is_number());
  const Image first = decode_png(base64_decode(reply["data"][0]["b64_json"], "png"));
  const Engine engine = Engine::open(kFashion);
  GenerateRequest r;
  r.class_labels = {"bag"};
  r.seed = 4;
  r.steps = 2;
  EXPECT_EQ(engine.generate(r).images[0].image.pixels, first.pixels);
  const auto [s2, models] = s.get("/v1/models");
  EXPECT_EQ(s2, 200);
  EXPECT_EQ(models["data"][0]["id"], "fashion-mnist-dit");
  // An unknown model: 404 in OpenAI's error shape, listing the models there are.
  const auto [s3, missing] = s.post("/v1/images/generations", R"({"model": "dall-e-3", "prompt": "x"})");
  EXPECT_EQ(s3, 404);
  EXPECT_NE(missing["error"]["message"].get<std::string>().find("this server has: fashion-mnist-dit"),
            std::string::npos);
}

TEST(Server, BadRequestsGetAJsonErrorAndTheServerKeepsServing) {
  ServerOptions o = fashion();
  o.max_body_bytes = 1 << 20;
  Serving s(o);
  struct Case {
    const char* path;
    std::string body;
    int status;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"/sdapi/v1/txt2img", "{\"prompt\": \"sneaker\",", 400, "malformed JSON"},
      {"/sdapi/v1/txt2img", "[1, 2]", 400, "must be a JSON object"},
      {"/sdapi/v1/txt2img", R"({"prompt": 7})", 400, "prompt must be a string"},
      {"/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": "many"})", 400, "steps must be an integer"},
      {"/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": 100000})", 400, "steps must be in"},
      {"/sdapi/v1/txt2img", R"({"prompt": "bag", "batch_size": 1000})", 400, "batch_size x n_iter"},
      {"/sdapi/v1/txt2img", R"({"prompt": "bag", "sampler_name": "nope"})", 400, "unknown sampler"},
      {"/sdapi/v1/txt2img", R"({"prompt": "bag", "cfg_scale": 1e308})", 400, "cfg_scale"},
      {"/sdapi/v1/txt2img", R"({"prompt": ""})", 400, "give the class as the prompt"},
      {"/sdapi/v1/txt2img", R"({"prompt": "spaceship"})", 400, "unknown Fashion-MNIST class"},
      {"/sdapi/v1/img2img", R"({"prompt": "bag", "init_images": ["%%%"]})", 400, "not base64"},
      {"/sdapi/v1/img2img", R"({"prompt": "bag", "init_images": ["aGVsbG8="]})", 400,
       "is not a PNG file"},
      {"/sdapi/v1/img2img", R"({"prompt": "bag"})", 400, "init_images must be a list"},
      {"/sdapi/v1/options", R"({"sd_model_checkpoint": "other"})", 404, "unknown model"},
      {"/v1/images/generations", R"({"prompt": "bag", "n": 0})", 400, "n must be in"},
      {"/v1/images/generations", R"({"prompt": "bag", "size": "huge"})", 400, "size must be"},
      {"/v1/images/generations", R"({"n": 1})", 400, "prompt is required"},
      {"/sdapi/v1/txt2img", std::string(2 << 20, ' '), 413, "too large"},
  };
  for (const Case& c : cases) {
    auto res = s.client().Post(c.path, c.body, "application/json");
    ASSERT_TRUE(res) << c.path << " " << c.body.substr(0, 80);
    EXPECT_EQ(res->status, c.status) << c.body.substr(0, 80) << " -> " << res->body;
    EXPECT_NE(res->body.find(c.says), std::string::npos) << c.body.substr(0, 80) << " -> " << res->body;
    EXPECT_TRUE(json::parse(res->body, nullptr, false).is_object()) << res->body;
  }
  EXPECT_EQ(s.get("/no/such/route").first, 404);
  // Still serving.
  EXPECT_EQ(s.get("/sdapi/v1/samplers").first, 200);
  const auto [status, reply] = s.post("/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": 1})");
  EXPECT_EQ(status, 200) << reply.dump();
}

TEST(Server, ListsProgressOptionsAndMemory) {
  Serving s(fashion());
  const auto [s1, samplers] = s.get("/sdapi/v1/samplers");
  EXPECT_EQ(s1, 200);
  bool euler_a = false;
  for (const json& x : samplers) euler_a = euler_a || x["name"] == "Euler a";
  EXPECT_TRUE(euler_a);
  const json model = s.get("/sdapi/v1/sd-models").second[0];
  EXPECT_EQ(model["model_name"], "fashion-mnist-dit");
  EXPECT_EQ(model["stipple"]["class_names"][7], "sneaker");
  EXPECT_EQ(model["stipple"]["default_steps"], 20);
  // The web page: served whole, and it talks only to this server's routes.
  auto page = s.client().Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("/sdapi/v1/txt2img"), std::string::npos);
  EXPECT_EQ(page->body.find("http://"), std::string::npos);
  EXPECT_EQ(page->body.find("https://"), std::string::npos);
  EXPECT_EQ(s.get("/sdapi/v1/options").second["sd_model_checkpoint"], "fashion-mnist-dit");
  const json progress = s.get("/sdapi/v1/progress").second;
  EXPECT_EQ(progress["progress"], 0.0);
  EXPECT_TRUE(progress["state"].contains("sampling_steps"));
  EXPECT_GT(s.get("/sdapi/v1/memory").second["ram"]["total"].get<double>(), 0.0);
}

TEST(Server, ProgressMovesAndInterruptStopsAGeneration) {
  Serving s(fashion());
  std::pair<int, json> result;
  std::thread job([&] {
    result = s.post("/sdapi/v1/txt2img", R"({"prompt": "coat", "steps": 150, "batch_size": 16})");
  });
  int seen = 0;
  for (int i = 0; i < 500 && seen == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    seen = s.get("/sdapi/v1/progress").second["state"]["sampling_step"].get<int>();
  }
  EXPECT_GT(seen, 0);
  EXPECT_EQ(s.post("/sdapi/v1/interrupt", "").first, 200);
  job.join();
  ASSERT_EQ(result.first, 200) << result.second.dump();
  const json info = json::parse(result.second["info"].get<std::string>());
  EXPECT_EQ(info["interrupted"], true);
  EXPECT_TRUE(result.second["images"].empty());
}

TEST(Server, ApiKeyIsRequiredWhenSet) {
  ServerOptions o = fashion();
  o.api_key = "sekrit";
  Serving s(o);
  EXPECT_EQ(s.get("/sdapi/v1/samplers").first, 401);
  EXPECT_EQ(s.get("/healthz").first, 200);
  httplib::Headers auth = {{"Authorization", "Bearer sekrit"}};
  auto res = s.client().Get("/v1/models", auth);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

}  // namespace
}  // namespace stipple::server
