// `stipple serve` over real HTTP on a free loopback port: the A1111 and OpenAI routes answer as
// those clients expect (base64 PNGs carrying the parameters chunk, A1111's info string), a seed
// gives the same image through the API, A1111 and OpenAI routes, and bad requests get a 4xx
// with a JSON error naming the problem while the server keeps serving.
// The web page in a browser is test_web_page.cc; A1111's extras (upscaling)
// test_server_extras.cc; load, shutdown and misbehaving clients test_server_operations.cc.
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

#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "../apps/server/server.h"
#include "support/serving.h"

namespace stipple::server {
namespace {

using nlohmann::json;

const std::string kSdTiny = std::string(STIPPLE_SHARED_DIR) + "/conformance/sd_tiny";
const std::string kSdTinyInpaint = std::string(STIPPLE_SHARED_DIR) + "/conformance/sd_tiny_inpaint";


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
  r.sampler = "dpm++2m_karras";
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
      {"/sdapi/v1/txt2img", R"({"prompt": "bag", "guidance_interval": [3]})", 400,
       "guidance_interval: expected [low, high]"},
      {"/sdapi/v1/txt2img", R"({"prompt": "bag", "guidance_interval": [3, 1]})", 400,
       "guidance interval [3, 1]"},
      {"/sdapi/v1/txt2img", R"({"prompt": "bag", "autoguidance": "no"})", 400,
       "autoguidance must be true or false"},
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
  EXPECT_EQ(model["stipple"]["default_steps"], 30);
  EXPECT_EQ(model["stipple"]["default_guidance_interval"], json({0.0, 2.5}));
  EXPECT_EQ(model["stipple"]["guide_model"], "");  // no autoguidance model in its folder
  // The interval a request names (stipple's field; "inf": no upper end) is the one used.
  const auto [s2, every] = s.post(
      "/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": 1, "guidance_interval": [0, "inf"]})");
  ASSERT_EQ(s2, 200) << every.dump();
  EXPECT_EQ(every["info"].get<std::string>().find("Guidance interval"), std::string::npos);
  const auto [s3, own] = s.post("/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": 1})");
  ASSERT_EQ(s3, 200) << own.dump();
  EXPECT_NE(own["info"].get<std::string>().find("Guidance interval: 0 to 2.5"), std::string::npos);
  // The web page: served whole, and it talks only to this server's routes.
  auto page = s.client().Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_EQ(page->body.find("http://"), std::string::npos);
  EXPECT_EQ(page->body.find("https://"), std::string::npos);
  EXPECT_NE(page->body.find("/v1/jobs"), std::string::npos);
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
  for (int i = 0; i < 3000 && seen == 0; ++i) {
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

TEST(Server, JobsRunQueueCancelAndAreForgottenOnlyWhenOld) {
  Serving s(fashion());
  // A long job runs; a second waits behind it with its queue position.
  const auto [s1, long_job] =
      s.post("/v1/jobs", R"({"class_label": "coat", "steps": 150, "batch_size": 16})");
  ASSERT_EQ(s1, 202) << long_job.dump();
  const std::string long_id = long_job["id"];
  const auto [s2, quick] = s.post("/v1/jobs", R"({"class_label": 8, "seed": 5, "steps": 2})");
  ASSERT_EQ(s2, 202) << quick.dump();
  const std::string quick_id = quick["id"];
  for (int i = 0; i < 3000 && s.get("/v1/jobs/" + long_id).second["state"] != "running"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const json queued = s.get("/v1/jobs/" + quick_id).second;
  EXPECT_EQ(queued["state"], "queued");
  EXPECT_EQ(queued["queue_position"], 1);
  // DELETE cancels the running job within a step; the queued one then runs.
  const auto [s3, deleted] = s.del("/v1/jobs/" + long_id);
  EXPECT_EQ(s3, 200) << deleted.dump();
  EXPECT_EQ(s.wait_job(long_id)["state"], "cancelled");
  const json done = s.wait_job(quick_id);
  ASSERT_EQ(done["state"], "succeeded") << done.dump();
  ASSERT_EQ(done["result"]["images"].size(), 1u);
  EXPECT_EQ(done["result"]["images"][0]["seed"], 5);
  const Image img = decode_png(base64_decode(done["result"]["images"][0]["b64_json"], "png"));
  EXPECT_EQ(img.pixels, api_pixels("bag", 5, 2));  // class 8 is "bag"
  // Listed, unknown ids are 404, and a job that fails says why.
  EXPECT_GE(s.get("/v1/jobs").second["data"].size(), 2u);
  EXPECT_EQ(s.get("/v1/jobs/job-0123456789abcdef").first, 404);
  EXPECT_EQ(s.del("/v1/jobs/job-0123456789abcdef").first, 404);
  const auto [s4, bad] = s.post("/v1/jobs", R"({"class_label": "bag", "sampler_name": "nope"})");
  ASSERT_EQ(s4, 202);
  const json failed = s.wait_job(bad["id"]);
  EXPECT_EQ(failed["state"], "failed");
  EXPECT_EQ(failed["error"]["status"], 400);
  EXPECT_NE(failed["error"]["message"].get<std::string>().find("unknown sampler"),
            std::string::npos);
  // A field the server checks itself is refused before anything is queued.
  EXPECT_EQ(s.post("/v1/jobs", R"({"class_label": "bag", "steps": -3})").first, 400);
  EXPECT_EQ(s.post("/v1/jobs", R"({"class_label": "bag", "n_iter": 0})").first, 400);
}

TEST(Server, JobEventsStreamProgressWithPreviewsUntilDone) {
  ServerOptions o = fashion();
  o.preview_every = 2;
  Serving s(o);
  const auto [status, job] = s.post("/v1/jobs", R"({"prompt": "dress", "seed": 1, "steps": 60})");
  ASSERT_EQ(status, 202) << job.dump();
  httplib::Client c("127.0.0.1", s.port());
  c.set_read_timeout(60, 0);
  std::string stream;
  auto res = c.Get(("/v1/jobs/" + job["id"].get<std::string>() + "/events").c_str(),
                   [&](const char* data, size_t n) {
                     stream.append(data, n);
                     return true;
                   });
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  // Events in order; the steps never go back; previews decode to the drawn size; the last is done.
  int last_step = -1, previews = 0;
  std::string last_event;
  for (size_t at = 0; (at = stream.find("event: ", at)) != std::string::npos;) {
    const size_t eol = stream.find('\n', at);
    last_event = stream.substr(at + 7, eol - at - 7);
    const size_t data = stream.find("data: ", eol);
    const size_t end = stream.find("\n\n", data);
    const json e = json::parse(stream.substr(data + 6, end - data - 6));
    EXPECT_GE(e["step"].get<int>(), last_step);
    last_step = e["step"];
    if (e.contains("preview")) {
      const Image p = decode_png(base64_decode(e["preview"], "preview"));
      EXPECT_EQ(p.width, 28);
      ++previews;
    }
    at = end;
  }
  EXPECT_EQ(last_event, "done");
  EXPECT_EQ(last_step, 60);
  EXPECT_GE(previews, 1);
}

TEST(Server, A1111PreviewSkipAndIterations) {
  ServerOptions o = fashion();
  o.preview_every = 1;
  Serving s(o);
  // n_iter 2 of a long generation; skip the first iteration once a preview shows.
  std::pair<int, json> result;
  std::thread job([&] {
    result = s.post("/sdapi/v1/txt2img",
                    R"({"prompt": "shirt", "seed": 10, "steps": 150, "n_iter": 2})");
  });
  json image = nullptr;
  for (int i = 0; i < 3000 && image.is_null(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    image = s.get("/sdapi/v1/progress").second["current_image"];
  }
  ASSERT_TRUE(image.is_string());
  EXPECT_EQ(decode_png(base64_decode(image, "current_image")).width, 28);
  EXPECT_TRUE(s.get("/sdapi/v1/progress?skip_current_image=true").second["current_image"].is_null());
  EXPECT_EQ(s.post("/sdapi/v1/skip", "").first, 200);
  job.join();
  ASSERT_EQ(result.first, 200) << result.second.dump();
  const json info = json::parse(result.second["info"].get<std::string>());
  EXPECT_EQ(info["skipped"], true);
  ASSERT_EQ(info["all_seeds"].size(), 1u);  // the second iteration's image only
  EXPECT_EQ(info["all_seeds"][0], 11);
  // Without a skip, n_iter x batch_size images with consecutive seeds, as A1111 draws them.
  const auto [status, two] = s.post(
      "/sdapi/v1/txt2img", R"({"prompt": "shirt", "seed": 10, "steps": 2, "n_iter": 2, "batch_size": 2})");
  ASSERT_EQ(status, 200) << two.dump();
  EXPECT_EQ(json::parse(two["info"].get<std::string>())["all_seeds"], json({10, 11, 12, 13}));
  const Image third = decode_png(base64_decode(two["images"][2].get<std::string>(), "png"));
  EXPECT_EQ(third.pixels, api_pixels("shirt", 12, 2));
}

// A1111's refiner_checkpoint names a served SDXL refiner that finishes an SDXL base's image from
// refiner_switch_at on: the same image as the engine opened with that refiner.
TEST(Server, A1111RefinerCheckpointFinishesAnSdxlImage) {
  const std::string data = std::string(STIPPLE_SOURCE_DIR) + "/tests/data/";
  ServerOptions o;
  o.models = {data + "sdxl_tiny", data + "sdxl_refiner_tiny", kFashion};
  Serving s(o);
  const std::string body =
      R"({"prompt": "a red circle", "steps": 10, "width": 96, "height": 64, "seed": 3,
          "sampler_name": "Euler", "refiner_checkpoint": "sdxl_refiner_tiny",
          "refiner_switch_at": 0.7})";
  const auto [status, reply] = s.post("/sdapi/v1/txt2img", body);
  ASSERT_EQ(status, 200) << reply.dump();
  const std::string info = reply["info"].get<std::string>();
  EXPECT_NE(info.find("Refiner: sdxl_refiner_tiny, Refiner switch at: 0.7"), std::string::npos)
      << info;
  OpenOptions open;
  open.refiner = data + "sdxl_refiner_tiny";
  const Engine e = Engine::open(data + "sdxl_tiny", open);
  GenerateRequest r;
  r.prompt = "a red circle";
  r.steps = 10;
  r.width = 96;
  r.height = 64;
  r.seed = 3;
  r.sampler = "Euler";
  r.refiner_switch_at = 0.7;
  const Image want = e.generate(r).images.at(0).image;
  EXPECT_EQ(decode_png(base64_decode(reply["images"][0].get<std::string>(), "png")).pixels,
            want.pixels);
  // The pair is not a model of its own.
  EXPECT_EQ(s.get("/sdapi/v1/sd-models").second.size(), 3u);
  // A refiner that is not one, a base that cannot take one, a name the server does not have.
  const auto not_refiner = s.post("/sdapi/v1/txt2img",
      R"({"prompt": "x", "steps": 2, "refiner_checkpoint": "sdxl_tiny"})");
  EXPECT_EQ(not_refiner.first, 400) << not_refiner.second.dump();
  EXPECT_NE(not_refiner.second.dump().find("sdxl_tiny is SDXL, not an SDXL refiner"),
            std::string::npos) << not_refiner.second.dump();
  const auto not_sdxl = s.post("/sdapi/v1/txt2img",
      R"({"prompt": "bag", "steps": 2, "model": "fashion-mnist-dit", "refiner_checkpoint": "sdxl_refiner_tiny"})");
  EXPECT_EQ(not_sdxl.first, 400) << not_sdxl.second.dump();
  EXPECT_NE(not_sdxl.second.dump().find("a refiner finishes SDXL base models"), std::string::npos)
      << not_sdxl.second.dump();
  const auto unknown = s.post("/sdapi/v1/txt2img",
      R"({"prompt": "x", "steps": 2, "refiner_checkpoint": "nope"})");
  EXPECT_EQ(unknown.first, 404) << unknown.second.dump();
  // "None" (what the web UI sends when no refiner is picked) is no refiner.
  EXPECT_EQ(s.post("/sdapi/v1/txt2img", R"({"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                             "refiner_checkpoint": "None"})").first, 200);
}

TEST(Server, LorasAreListedAsA1111ListsThem) {
  const std::string dir = testing::TempDir() + "stipple-server-loras";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string data = std::string(STIPPLE_SOURCE_DIR) + "/tests/data/lora/";
  std::filesystem::copy_file(data + "sd_kohya.safetensors", dir + "/style.safetensors");
  std::filesystem::copy_file(data + "sd_peft.safetensors", dir + "/b-peft.safetensors");
  { std::ofstream(dir + "/broken.safetensors") << "not a safetensors file"; }
  { std::ofstream(dir + "/notes.txt") << "not a LoRA"; }
  ServerOptions o = fashion();
  {
    Serving none(o);  // no --lora-dir: none listed
    EXPECT_EQ(none.get("/sdapi/v1/loras").second, json::array());
  }
  o.lora_dir = dir;
  Serving s(o);
  const auto [status, list] = s.get("/sdapi/v1/loras");
  ASSERT_EQ(status, 200) << list.dump();
  ASSERT_EQ(list.size(), 3u) << list.dump();
  EXPECT_EQ(list[0]["name"], "b-peft");
  EXPECT_EQ(list[1]["name"], "broken");
  EXPECT_NE(list[1]["stipple"]["error"].get<std::string>().find("broken.safetensors"), std::string::npos)
      << list[1].dump();
  const json& style = list[2];
  EXPECT_EQ(style["name"], "style");
  EXPECT_EQ(style["alias"], "style");  // no ss_output_name
  EXPECT_EQ(style["path"], dir + "/style.safetensors");
  EXPECT_EQ(style["metadata"]["ss_network_dim"], "4");
  EXPECT_EQ(style["metadata"]["ss_network_args"]["conv_dim"], "2");  // JSON values parsed
  EXPECT_EQ(s.post("/sdapi/v1/refresh-loras", "").first, 200);
}

TEST(Server, MetricsCorsAndOutputFiles) {
  const std::string dir = testing::TempDir() + "stipple-server-outputs";
  std::filesystem::remove_all(dir);
  ServerOptions o = fashion();
  o.output_dir = dir;
  o.cors_origin = "http://localhost:8080";
  Serving s(o);
  // response_format "url": the image is saved and served from /outputs/.
  const auto [status, reply] = s.post(
      "/v1/images/generations", R"({"prompt": "boot", "seed": 2, "steps": 2, "response_format": "url"})");
  ASSERT_EQ(status, 200) << reply.dump();
  const std::string url = reply["data"][0]["url"];
  const std::string prefix = "http://127.0.0.1:" + std::to_string(s.port()) + "/outputs/";
  ASSERT_EQ(url.rfind(prefix, 0), 0u) << url;
  auto file = s.client().Get(url.substr(url.find("/outputs/")).c_str());
  ASSERT_TRUE(file);
  EXPECT_EQ(file->status, 200);
  EXPECT_EQ(file->get_header_value("Content-Type"), "image/png");
  const Image img = decode_png(std::vector<uint8_t>(file->body.begin(), file->body.end()));
  EXPECT_EQ(img.pixels, api_pixels("ankle boot", 2, 2));
  EXPECT_TRUE(std::filesystem::is_regular_file(dir + "/" + url.substr(prefix.size())));
  // Nothing outside the folder is served.
  EXPECT_EQ(s.client().Get("/outputs/../CMakeLists.txt")->status, 404);
  EXPECT_EQ(s.client().Get("/outputs/.hidden.png")->status, 404);
  EXPECT_EQ(s.client().Get("/outputs/missing.png")->status, 404);
  // CORS: the origin is allowed, and a preflight needs no credentials.
  auto pre = s.client().Options("/v1/images/generations");
  ASSERT_TRUE(pre);
  EXPECT_EQ(pre->status, 204);
  EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Origin"), "http://localhost:8080");
  EXPECT_EQ(s.client().Get("/healthz")->get_header_value("Access-Control-Allow-Origin"),
            "http://localhost:8080");
  // Metrics: Prometheus text with the counts of what happened.
  EXPECT_EQ(s.post("/sdapi/v1/txt2img", R"({"prompt": "bag", "steps": "x"})").first, 400);
  auto m = s.client().Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  for (const char* line :
       {"stipple_http_requests_total{route=\"POST /v1/images/generations\",status=\"200\"} 1",
        "stipple_http_requests_total{route=\"POST /sdapi/v1/txt2img\",status=\"400\"} 1",
        "stipple_http_requests_total{route=\"GET /outputs/{name}\",status=\"404\"} 3",
        "stipple_queue_length 0", "stipple_jobs_finished_total{state=\"succeeded\"} 1",
        "stipple_model_loaded{model=\"fashion-mnist-dit\"} 1", "stipple_models_loaded 1",
        "# TYPE process_resident_memory_bytes gauge", "stipple_step_seconds_count 2"})
    EXPECT_NE(m->body.find(line), std::string::npos) << line << "\n" << m->body;
  // Without --output-dir, "url" is refused with the reason; without --cors, no CORS headers.
  Serving plain(fashion());
  const auto [s2, refused] = plain.post(
      "/v1/images/generations", R"({"prompt": "boot", "response_format": "url"})");
  EXPECT_EQ(s2, 400);
  EXPECT_NE(refused["error"]["message"].get<std::string>().find("--output-dir"), std::string::npos);
  EXPECT_EQ(plain.client().Get("/healthz")->get_header_value("Access-Control-Allow-Origin"), "");
  std::filesystem::remove_all(dir);
}

// A PNG as multipart form data for /v1/images/edits.
httplib::MultipartFormData png_part(const std::string& name, const Image& img) {
  const std::vector<uint8_t> bytes = encode_png(img);
  return {name, std::string(bytes.begin(), bytes.end()), name + ".png", "image/png"};
}

TEST(Server, OpenAIEditsInpaintTheTransparentPixels) {
  if (!std::filesystem::exists(kSdTinyInpaint)) GTEST_SKIP() << "no " << kSdTinyInpaint;
  ServerOptions o;
  o.models = {kSdTinyInpaint};
  Serving s(o);
  Image rgba;
  rgba.width = rgba.height = 64;
  rgba.channels = 4;
  rgba.pixels.assign(64 * 64 * 4, 200);
  for (size_t i = 0; i < 64 * 64; ++i) rgba.pixels[i * 4 + 3] = 255;
  for (int y = 16; y < 48; ++y)
    for (int x = 16; x < 48; ++x) rgba.pixels[(y * 64 + x) * 4 + 3] = 0;  // a hole to paint
  httplib::MultipartFormDataItems form = {png_part("image", rgba),
                                          {"prompt", "a red square", "", ""},
                                          {"n", "1", "", ""},
                                          {"seed", "3", "", ""},
                                          {"steps", "2", "", ""}};
  auto res = s.client().Post("/v1/images/edits", form);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json reply = json::parse(res->body);
  const Image out = decode_png(base64_decode(reply["data"][0]["b64_json"], "png"));
  EXPECT_EQ(out.width, 64);
  // The same edit through the API: the transparent pixels are the mask.
  const Engine engine = Engine::open(kSdTinyInpaint);
  GenerateRequest r;
  r.prompt = "a red square";
  r.seed = 3;
  r.steps = 2;
  Image init = rgba, mask;
  init.channels = 3;
  init.pixels.assign(64 * 64 * 3, 0);
  mask.width = mask.height = 64;
  mask.channels = 1;
  mask.pixels.assign(64 * 64, 0);
  for (size_t i = 0; i < 64 * 64; ++i) {
    const bool hole = rgba.pixels[i * 4 + 3] == 0;
    for (int c = 0; c < 3; ++c) init.pixels[i * 3 + c] = hole ? 255 : 200;
    mask.pixels[i] = hole ? 255 : 0;
  }
  r.init_image = init;
  r.mask = mask;
  EXPECT_EQ(engine.generate(r).images[0].image.pixels, out.pixels);
  // Bad edits: no transparency and no mask; a mask of another size; not multipart.
  Image opaque = rgba;
  opaque.channels = 3;
  opaque.pixels.assign(64 * 64 * 3, 10);
  auto no_mask = s.client().Post("/v1/images/edits",
                                 httplib::MultipartFormDataItems{png_part("image", opaque),
                                                                 {"prompt", "x", "", ""}});
  ASSERT_TRUE(no_mask);
  EXPECT_EQ(no_mask->status, 400);
  EXPECT_NE(no_mask->body.find("no transparent areas"), std::string::npos) << no_mask->body;
  Image small = rgba;
  small.width = small.height = 32;
  small.pixels.resize(32 * 32 * 4);
  auto sizes = s.client().Post(
      "/v1/images/edits", httplib::MultipartFormDataItems{png_part("image", rgba),
                                                          png_part("mask", small),
                                                          {"prompt", "x", "", ""}});
  ASSERT_TRUE(sizes);
  EXPECT_EQ(sizes->status, 400);
  EXPECT_NE(sizes->body.find("the same size"), std::string::npos) << sizes->body;
  EXPECT_EQ(s.post("/v1/images/edits", R"({"prompt": "x"})").first, 400);
}

// A PNG whose header claims width x height (and no pixel data): a decompression-bomb probe.
std::string png_header_only(uint32_t width, uint32_t height) {
  auto be32 = [](uint32_t v) {
    return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                       static_cast<char>(v >> 8), static_cast<char>(v)};
  };
  auto chunk = [&](const std::string& type, const std::string& data) {
    const std::string body = type + data;
    const uint32_t crc = static_cast<uint32_t>(
        ::crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size())));
    return be32(static_cast<uint32_t>(data.size())) + body + be32(crc);
  };
  const std::string ihdr = be32(width) + be32(height) + std::string{8, 2, 0, 0, 0};
  return std::string("\x89PNG\r\n\x1a\n", 8) + chunk("IHDR", ihdr) + chunk("IEND", "");
}

TEST(Server, A1111PromptsAreReadInItsSyntax) {
  if (!std::filesystem::exists(kSdTiny)) GTEST_SKIP() << "no " << kSdTiny;
  ServerOptions o;
  o.models = {kSdTiny};
  Serving s(o);
  const std::string prompt = "a (red:1.4) apple BREAK [green] pear";
  const Engine engine = Engine::open(kSdTiny);
  auto engine_image = [&](PromptSyntax syntax) {
    GenerateRequest r;
    r.prompt = prompt;
    r.seed = 5;
    r.steps = 2;
    r.width = r.height = 32;
    r.prompt_syntax = syntax;
    return engine.generate(r).images[0].image.pixels;
  };
  auto served_image = [&](const json& extra) {
    json body = {{"prompt", prompt}, {"seed", 5}, {"steps", 2}, {"width", 32}, {"height", 32}};
    body.update(extra);
    const auto [status, reply] = s.post("/sdapi/v1/txt2img", body.dump());
    EXPECT_EQ(status, 200) << reply.dump();
    return std::make_pair(decode_png(base64_decode(reply["images"][0].get<std::string>(), "png")).pixels,
                          json::parse(reply["info"].get<std::string>()));
  };
  // Emphasis and BREAK as the web UI reads them...
  const auto [weighted, info] = served_image(json::object());
  EXPECT_EQ(weighted, engine_image(PromptSyntax::kA1111));
  EXPECT_NE(weighted, engine_image(PromptSyntax::kPlain));
  // ... unless the client turns emphasis off (brackets are text, the chunks stay); a mode
  // stipple lacks is said, not dropped.
  const auto [plain, plain_info] = served_image({{"override_settings", {{"emphasis", "None"}}}});
  EXPECT_EQ(plain, engine_image(PromptSyntax::kA1111NoEmphasis));
  const auto [no_norm, no_norm_info] =
      served_image({{"override_settings", {{"emphasis", "No norm"}}}});
  EXPECT_EQ(no_norm, weighted);
  EXPECT_NE(no_norm_info["not_honoured"].dump().find("emphasis"), std::string::npos)
      << no_norm_info.dump();
}

TEST(Server, A1111Img2ImgAndInpaintWithTheirBadInputs) {
  if (!std::filesystem::exists(kSdTiny)) GTEST_SKIP() << "no " << kSdTiny;
  ServerOptions o;
  o.models = {kSdTiny};
  Serving s(o);
  Image init{32, 32, 3, std::vector<uint8_t>(32 * 32 * 3, 90)};
  Image mask{32, 32, 1, std::vector<uint8_t>(32 * 32, 0)};
  for (int i = 0; i < 32 * 16; ++i) mask.pixels[i] = 255;  // the top half is repainted
  const std::string init_b64 = base64_encode(encode_png(init));
  const std::string mask_b64 = base64_encode(encode_png(mask));
  json body = {{"prompt", "a red circle"}, {"seed", 2}, {"steps", 2},
               {"denoising_strength", 0.6}, {"init_images", {init_b64}}};
  const auto [s1, i2i] = s.post("/sdapi/v1/img2img", body.dump());
  ASSERT_EQ(s1, 200) << i2i.dump();
  const json info = json::parse(i2i["info"].get<std::string>());
  EXPECT_EQ(info["denoising_strength"], 0.6);
  EXPECT_EQ(info["width"], 32);
  const Engine engine = Engine::open(kSdTiny);
  GenerateRequest r;
  r.prompt = "a red circle";
  r.seed = 2;
  r.steps = 2;
  r.strength = 0.6;
  r.init_image = init;
  EXPECT_EQ(decode_png(base64_decode(i2i["images"][0], "png")).pixels,
            engine.generate(r).images[0].image.pixels);
  body["mask"] = mask_b64;
  const auto [s2, inpaint] = s.post("/sdapi/v1/img2img", body.dump());
  ASSERT_EQ(s2, 200) << inpaint.dump();
  r.mask = mask;
  EXPECT_EQ(decode_png(base64_decode(inpaint["images"][0], "png")).pixels,
            engine.generate(r).images[0].image.pixels);
  // A mask of another size; an init image whose header claims 100000 x 100000.
  body["mask"] = base64_encode(encode_png(Image{16, 16, 1, std::vector<uint8_t>(256, 255)}));
  const auto [s3, other_size] = s.post("/sdapi/v1/img2img", body.dump());
  EXPECT_EQ(s3, 400);
  EXPECT_NE(other_size["detail"].get<std::string>().find("the same size"), std::string::npos)
      << other_size.dump();
  const std::string bomb = png_header_only(100000, 100000);
  body.erase("mask");
  body["init_images"] = {base64_encode(std::vector<uint8_t>(bomb.begin(), bomb.end()))};
  const auto [s4, huge] = s.post("/sdapi/v1/img2img", body.dump());
  EXPECT_EQ(s4, 400);
  EXPECT_NE(huge["detail"].get<std::string>().find("init_images[0]"), std::string::npos)
      << huge.dump();
  // Schedulers as A1111 lists them, and the model switch.
  const json schedulers = s.get("/sdapi/v1/schedulers").second;
  EXPECT_EQ(schedulers[1]["label"], "Karras");
  EXPECT_EQ(s.post("/sdapi/v1/options", R"({"sd_model_checkpoint": "sd_tiny"})").first, 200);
  EXPECT_EQ(s.get("/sdapi/v1/options").second["sd_model_checkpoint"], "sd_tiny");
}

}  // namespace
}  // namespace stipple::server
