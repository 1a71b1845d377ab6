// A bundle on disk: manifest.json (sha256 of every file) and runtime.json, checked as runtime/bundle.py does.
#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "sgm.h"

namespace sgm {
namespace {
const int kFormatVersion = 1;
const char* kBundleKind = "sgm-bundle";

bool is_file(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool is_dir(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}


const json& field(const json& d, const std::string& key, json::value_t kind, const std::string& where) {
  auto it = d.find(key);
  if (it == d.end() || it->is_null()) throw Error(where + ": field '" + key + "' is missing; rebuild the bundle");
  bool ok = kind == json::value_t::number_integer ? it->is_number_integer()
            : kind == json::value_t::string       ? it->is_string()
            : kind == json::value_t::object       ? it->is_object()
            : kind == json::value_t::array        ? it->is_array()
                                                  : true;
  if (!ok) throw Error(where + ": field '" + key + "' must be a " + json(kind).type_name() + ", got " + it->dump() +
                       "; rebuild the bundle");
  return *it;
}

int positive(const json& d, const std::string& key, const std::string& where) {
  int64_t v = field(d, key, json::value_t::number_integer, where).get<int64_t>();
  if (v < 1) throw Error(where + ": field '" + key + "' must be >= 1, got " + std::to_string(v));
  return int(v);
}

std::string str_of(const json& section, const std::string& key, const std::string& where) {
  auto it = section.find(key);
  if (it == section.end()) throw Error(where + ": field '" + key + "' is missing from an I/O or prompt section; "
                                       "rebuild the bundle");
  return it->is_string() ? it->get<std::string>() : it->dump();
}

void need_layer(const std::string& name, const std::string& value, const std::string& section,
                const std::string& where) {
  if (value.find("{i}") == std::string::npos)
    throw Error(where + ": " + section + "." + name + " must hold '{i}' for the layer index");
}
}  // namespace

json read_json(const std::string& path, const std::string& fix) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    throw Error(path + " is not valid JSON (" + e.what() + "); " + fix);
  }
}

std::string PromptSpec::render(const std::string& question, bool with_image, bool chat) const {
  std::string q = system_prompt ? *system_prompt + "\n\n" + question : question;
  if (!chat) return q;
  std::string fmt = with_image ? image_format : text_format;
  std::string out;
  const std::string key = "{question}";
  size_t pos = 0, hit;
  while ((hit = fmt.find(key, pos)) != std::string::npos) {
    out += fmt.substr(pos, hit - pos) + q;
    pos = hit + key.size();
  }
  return out + fmt.substr(pos);
}

BundleSpec BundleSpec::from_json(const json& d, const std::string& where) {
  using vt = json::value_t;
  if (!d.is_object()) throw Error(where + " must hold a JSON object; rebuild the bundle");
  BundleSpec s;
  s.format_version = int(field(d, "format_version", vt::number_integer, where).get<int64_t>());
  if (s.format_version > kFormatVersion)
    throw Error(where + " has format_version " + std::to_string(s.format_version) + ", but this runtime reads up to " +
                std::to_string(kFormatVersion) + "; upgrade the native host or rebuild the bundle with this toolchain");
  if (s.format_version < 1) throw Error(where + " has format_version " + std::to_string(s.format_version) +
                                        "; valid versions start at 1; rebuild the bundle");
  s.dtype = field(d, "dtype", vt::string, where).get<std::string>();
  if (s.dtype != "float32" && s.dtype != "float16")
    throw Error(where + ": dtype '" + s.dtype + "' is not supported (one of float32, float16); rebuild the bundle");
  const json& graphs = field(d, "graphs", vt::object, where);
  for (const char* g : {"vision", "embed", "decoder"}) {
    if (!graphs.contains(g) || !graphs[g].is_string())
      throw Error(where + ": graphs." + g + " is missing; a bundle needs vision, embed, decoder graphs");
    s.graphs[g] = graphs[g].get<std::string>();
  }
  const json& prompt = field(d, "prompt", vt::object, where);
  const json& dec = field(d, "decoder", vt::object, where);
  const json& vision = field(d, "vision", vt::object, where);
  const json& embed = field(d, "embed", vt::object, where);
  DecoderIO& io = s.decoder;
  io.inputs_embeds = str_of(dec, "inputs_embeds", where);
  io.attention_mask = str_of(dec, "attention_mask", where);
  io.position_ids = str_of(dec, "position_ids", where);
  io.past_key = str_of(dec, "past_key", where);
  io.past_value = str_of(dec, "past_value", where);
  io.logits = str_of(dec, "logits", where);
  io.present_key = str_of(dec, "present_key", where);
  io.present_value = str_of(dec, "present_value", where);
  s.vision_input = str_of(vision, "input", where);
  s.vision_output = str_of(vision, "output", where);
  s.embed_input = str_of(embed, "input", where);
  s.embed_output = str_of(embed, "output", where);
  s.prompt.text_format = str_of(prompt, "text_format", where);
  s.prompt.image_format = str_of(prompt, "image_format", where);
  s.prompt.image_placeholder = str_of(prompt, "image_placeholder", where);
  if (!prompt.contains("add_special_tokens"))
    throw Error(where + ": field 'add_special_tokens' is missing from an I/O or prompt section; rebuild the bundle");
  s.prompt.add_special_tokens = prompt["add_special_tokens"].is_boolean() ? prompt["add_special_tokens"].get<bool>()
                                                                          : !prompt["add_special_tokens"].is_null();
  if (prompt.contains("system_prompt") && !prompt["system_prompt"].is_null()) {
    const json& sp = prompt["system_prompt"];
    bool blank = !sp.is_string() || sp.get<std::string>().find_first_not_of(" \t\r\n") == std::string::npos;
    if (blank) throw Error(where + ": prompt.system_prompt must be a non-empty string or absent; rebuild the bundle");
    s.prompt.system_prompt = sp.get<std::string>();
  }
  need_layer("past_key", io.past_key, "decoder", where);
  need_layer("past_value", io.past_value, "decoder", where);
  need_layer("present_key", io.present_key, "decoder", where);
  need_layer("present_value", io.present_value, "decoder", where);
  for (auto* f : {&s.prompt.text_format, &s.prompt.image_format})
    if (f->find("{question}") == std::string::npos)
      throw Error(where + ": prompt." + (f == &s.prompt.text_format ? "text_format" : "image_format") +
                  " must hold '{question}'");
  if (s.prompt.image_format.find(s.prompt.image_placeholder) == std::string::npos)
    throw Error(where + ": prompt.image_format has no '" + s.prompt.image_placeholder + "' placeholder");
  const json& eos = field(d, "eos_token_ids", vt::array, where);
  for (const auto& t : eos) {
    if (!t.is_number_integer()) throw Error(where + ": eos_token_ids must be a non-empty list of token ids");
    s.eos_token_ids.push_back(t.get<int64_t>());
  }
  if (s.eos_token_ids.empty()) throw Error(where + ": eos_token_ids must be a non-empty list of token ids");
  s.model = field(d, "model", vt::string, where).get<std::string>();
  s.num_layers = positive(d, "num_layers", where);
  s.num_kv_heads = positive(d, "num_kv_heads", where);
  s.head_dim = positive(d, "head_dim", where);
  s.hidden_size = positive(d, "hidden_size", where);
  s.vocab_size = positive(d, "vocab_size", where);
  s.image_token_id = field(d, "image_token_id", vt::number_integer, where).get<int64_t>();
  s.num_image_tokens = positive(d, "num_image_tokens", where);
  const json& image = field(d, "image", vt::object, where);
  try {
    s.image.size = image.at("size").get<int>();
    for (int c = 0; c < 3; c++) {
      s.image.mean[c] = image.at("mean").at(c).get<float>();
      s.image.std[c] = image.at("std").at(c).get<float>();
    }
    if (image.contains("resample")) s.image.resample = image["resample"].get<std::string>();
  } catch (const json::exception& e) {
    throw Error(std::string("image-processing config is incomplete (") + e.what() + "); it needs size, mean and std");
  }
  s.pad_token_id = field(d, "pad_token_id", vt::number_integer, where).get<int64_t>();
  s.clean_up_tokenization_spaces = d.value("clean_up_tokenization_spaces", false);
  if (d.contains("context_length")) s.context_length = positive(d, "context_length", where);
  if (d.contains("fused_decoder") && !d["fused_decoder"].is_null() &&
      !(d["fused_decoder"].is_object() && d["fused_decoder"].empty())) {
    const json& f = d["fused_decoder"];
    if (!f.is_object()) throw Error(where + ": fused_decoder must be an object; rebuild the bundle");
    FusedDecoderSpec fs;
    std::pair<const char*, std::string*> names[] = {
        {"graph", &fs.graph}, {"inputs_embeds", &fs.inputs_embeds}, {"attention_mask", &fs.attention_mask},
        {"past_key", &fs.past_key}, {"past_value", &fs.past_value}, {"logits", &fs.logits},
        {"present_key", &fs.present_key}, {"present_value", &fs.present_value}};
    for (auto& [k, dst] : names) {
      if (!f.contains(k) || !f[k].is_string())
        throw Error(where + ": fused_decoder." + k + " is missing; rebuild the bundle");
      *dst = f[k].get<std::string>();
    }
    fs.logits_positions = f.value("logits_positions", std::string("last"));
    fs.kv_buffer = f.value("kv_buffer", std::string("shared"));
    if (f.contains("providers")) fs.providers = f["providers"].get<std::vector<std::string>>();
    need_layer("past_key", fs.past_key, "fused_decoder", where);
    need_layer("past_value", fs.past_value, "fused_decoder", where);
    need_layer("present_key", fs.present_key, "fused_decoder", where);
    need_layer("present_value", fs.present_value, "fused_decoder", where);
    if (fs.logits_positions != "last" && fs.logits_positions != "all")
      throw Error(where + ": fused_decoder.logits_positions must be 'last' or 'all'");
    if (fs.kv_buffer != "shared" && fs.kv_buffer != "concat")
      throw Error(where + ": fused_decoder.kv_buffer must be 'shared' or 'concat'");
    s.fused_decoder = fs;
  }
  return s;
}

std::string Bundle::graph_path(const std::string& graph) const {
  if (graph == "fused_decoder") {
    if (!spec.fused_decoder) throw Error(root + " has no fused decoder; build one with `python -m compile.fused`");
    return root + "/" + spec.fused_decoder->graph;
  }
  return root + "/" + spec.graphs.at(graph);
}

std::string Bundle::fingerprint() const {
  // runtime.artifacts.sha256_json: json.dumps(sort_keys=True, separators=(",", ":")) (nlohmann sorts keys)
  std::string canon = manifest.contains("files") ? manifest["files"].dump(-1, ' ', true) : "{}";
  return sha256_hex(canon.data(), canon.size());
}

std::string Bundle::precision() const {
  if (manifest.contains("precision") && manifest["precision"].is_object() && manifest["precision"].contains("name") &&
      manifest["precision"]["name"].is_string())
    return manifest["precision"]["name"].get<std::string>();
  return spec.dtype == "float16" ? "fp16" : "fp32";
}

Bundle load_bundle(const std::string& directory, bool verify) {
  std::string root = directory;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  if (!is_dir(root))
    throw Error("bundle " + directory + " does not exist; build one with `python -m compile.export --out DIR`");
  std::string mpath = root + "/manifest.json";
  if (!is_file(mpath)) throw Error(root + " has no manifest.json: it was not written by this toolchain");
  Bundle b;
  b.root = root;
  b.manifest = read_json(mpath, "rebuild the artifact");
  const json empty = json::object();
  const json& files = b.manifest.contains("files") && b.manifest["files"].is_object() ? b.manifest["files"] : empty;
  if (verify) {
    for (auto it = files.begin(); it != files.end(); ++it) {
      std::string f = root + "/" + it.key();
      if (!is_file(f)) throw Error(root + ": " + it.key() + " is listed in manifest.json but missing; rebuild the artifact");
      if (!it.value().is_string() || sha256_file(f) != it.value().get<std::string>())
        throw Error(root + ": " + it.key() +
                    " does not match its sha256 in manifest.json (modified or corrupt); rebuild the artifact");
    }
  }
  std::string kind = b.manifest.contains("kind") && b.manifest["kind"].is_string()
                         ? b.manifest["kind"].get<std::string>() : b.manifest.value("kind", json()).dump();
  if (kind != kBundleKind)
    throw Error(root + " holds a '" + kind + "' artifact, not a bundle ('sgm-bundle'); give the directory written "
                "by `python -m compile.export`");
  for (const char* rel : {"runtime.json", "tokenizer.json"})
    if (!files.contains(rel)) throw Error(root + ": " + rel + " is missing from the bundle; rebuild it");
  std::string where = root + "/runtime.json";
  b.spec = BundleSpec::from_json(read_json(where, "rebuild the bundle"), where);
  auto graphs = b.spec.graphs;
  if (b.spec.fused_decoder) graphs["fused_decoder"] = b.spec.fused_decoder->graph;
  for (const auto& [graph, rel] : graphs)
    if (!files.contains(rel))
      throw Error(root + ": the " + graph + " graph " + rel + " is not listed in its manifest.json, so it is missing "
                  "or unverified; rebuild the bundle");
  return b;
}

}  // namespace sgm
