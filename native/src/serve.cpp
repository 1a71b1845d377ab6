// The JSON-lines protocol: one request object a line in, one result object a line out, in order. A bad request
// (malformed JSON, an unknown or mistyped field, a missing image, a prompt too long) gets {"id": ..., "error": "..."}
// and the host goes on with the next line.
//
// request fields: id (any JSON, echoed), prompt (text) or token_ids (prompt ids as is), image (file path or null),
// chat (default true), max_new_tokens (64), do_sample (false), temperature (1.0), top_p (1.0), seed (0),
// index (the request's random stream, runtime.sampling.request_rng(seed, index); 0), or nll (a text to score
// teacher-forced, with max_length 512) instead of a generation; ignore_eos (false: benchmarks decode max_new_tokens).
#include <algorithm>
#include <optional>

#include "sgm.h"

namespace sgm {
namespace {
const char* kFields[] = {"id", "prompt", "token_ids", "image", "chat", "max_new_tokens", "do_sample", "temperature",
                         "top_p", "seed", "index", "nll", "max_length", "ignore_eos"};

template <typename T>
T get(const json& req, const char* key, T fallback, json::value_t kind) {
  auto it = req.find(key);
  if (it == req.end() || it->is_null()) return fallback;
  bool ok = kind == json::value_t::boolean ? it->is_boolean()
            : kind == json::value_t::number_integer ? it->is_number_integer()
            : kind == json::value_t::number_float ? it->is_number()
            : it->is_string();
  if (!ok) throw Error(std::string("field '") + key + "' must be " +
                       (kind == json::value_t::boolean ? "true or false"
                        : kind == json::value_t::number_integer ? "an integer"
                        : kind == json::value_t::number_float ? "a number" : "a string") + ", got " + it->dump());
  return it->get<T>();
}
}  // namespace

std::string serve_line(Generator& gen, const std::string& line) {
  json out = {{"id", nullptr}};
  try {
    json req;
    try {
      req = json::parse(line);
    } catch (const json::parse_error& e) {
      throw Error(std::string("the line is not valid JSON (") + e.what() + ")");
    }
    if (!req.is_object()) throw Error("a request must be a JSON object, got " + std::string(req.type_name()));
    if (req.contains("id")) out["id"] = req["id"];
    for (auto it = req.begin(); it != req.end(); ++it)
      if (std::find(std::begin(kFields), std::end(kFields), it.key()) == std::end(kFields)) {
        std::string known;
        for (const char* f : kFields) known += std::string(known.empty() ? "" : ", ") + f;
        throw Error("unknown field '" + it.key() + "' (known: " + known + ")");
      }
    if (req.contains("nll") && !req["nll"].is_null()) {
      std::string text = get<std::string>(req, "nll", "", json::value_t::string);
      int max_length = int(get<int64_t>(req, "max_length", 512, json::value_t::number_integer));
      if (max_length < 1) throw Error("field 'max_length' must be >= 1");
      auto [sum, n] = gen.nll(text, max_length);
      out["nll"] = sum;
      out["tokens"] = n;
      return out.dump(-1, ' ', false, json::error_handler_t::replace);
    }
    bool has_prompt = req.contains("prompt") && !req["prompt"].is_null();
    bool has_ids = req.contains("token_ids") && !req["token_ids"].is_null();
    if (has_prompt == has_ids) throw Error("give one of 'prompt' (text) or 'token_ids' (prompt ids)");
    GenerationConfig config;
    config.max_new_tokens = int(get<int64_t>(req, "max_new_tokens", 64, json::value_t::number_integer));
    if (config.max_new_tokens < 1) throw Error("field 'max_new_tokens' must be >= 1");
    config.do_sample = get<bool>(req, "do_sample", false, json::value_t::boolean);
    config.temperature = get<double>(req, "temperature", 1.0, json::value_t::number_float);
    config.top_p = get<double>(req, "top_p", 1.0, json::value_t::number_float);
    config.seed = get<int64_t>(req, "seed", 0, json::value_t::number_integer);
    int64_t index = get<int64_t>(req, "index", 0, json::value_t::number_integer);
    if (config.seed < 0 || index < 0) throw Error("fields 'seed' and 'index' must be >= 0");
    if (config.temperature <= 0 || !(config.top_p > 0 && config.top_p <= 1))
      throw Error("temperature must be > 0 and top_p in (0, 1]");
    config.ignore_eos = get<bool>(req, "ignore_eos", false, json::value_t::boolean);
    bool chat = get<bool>(req, "chat", true, json::value_t::boolean);
    std::string image_path = get<std::string>(req, "image", "", json::value_t::string);
    std::optional<RgbImage> image;
    if (!image_path.empty()) image = decode_image(image_path);
    std::vector<int64_t> ids;
    if (has_prompt) {
      ids = gen.request_ids(get<std::string>(req, "prompt", "", json::value_t::string), image.has_value(), chat);
    } else {
      if (!req["token_ids"].is_array()) throw Error("field 'token_ids' must be a list of token ids");
      for (const auto& t : req["token_ids"]) {
        if (!t.is_number_integer()) throw Error("field 'token_ids' must be a list of token ids");
        ids.push_back(t.get<int64_t>());
      }
    }
    GenerationResult r = gen.generate(ids, image ? &*image : nullptr, config, uint64_t(index));
    out["text"] = r.text;
    out["token_ids"] = r.token_ids;
    out["finish_reason"] = r.finish_reason;
    out["prompt_tokens"] = r.prompt_tokens;
    out["prefill_s"] = r.prefill_s;
    out["decode_s"] = r.decode_s;
    out["decode_steps"] = r.decode_steps;
  } catch (const std::exception& e) {  // sgm::Error, Ort::Exception, json errors: this request fails, not the host
    out["error"] = e.what();
    for (const char* k : {"text", "token_ids", "finish_reason", "nll", "tokens"}) out.erase(k);
  }
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace sgm
