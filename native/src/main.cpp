// sgm-run: the native host. See `sgm-run --help`.
#include <algorithm>
#include <cstdio>
#include <map>
#include <cstring>
#include <fstream>
#include <iostream>

#include "sgm.h"

namespace {
const char* kUsage = R"(usage: sgm-run COMMAND [options]

commands:
  generate --bundle DIR (--prompt TEXT | --ids 1,2,3) [--image FILE] [--no-chat] [--max-new-tokens N]
           [--sample [--temperature T] [--top-p P] [--seed S] [--index I]] [--json]
                       answer one request (the text, or with --json the result object)
  serve --bundle DIR   JSON lines: one request a line on stdin, one result a line on stdout (first line:
                       {"ready": true, "describe": {...}}); see native/README.md for the fields
  verify --bundle DIR  check the manifest (sha256 of every file) and runtime.json, print the bundle's description
  tokenize --tokenizer FILE [--no-special]
                       JSON lines: a JSON string a line in, {"ids": [...], "text": decode(ids)} out
  preprocess --bundle DIR --image FILE --out FILE
                       write the image's pixel values [3, S, S] as raw float32 (runtime.preprocess)

options for generate/serve: --threads N (intra-op threads; default every core), --decoder auto|standard|fused,
  --no-verify (skip the sha256 check)
)";

struct Args {
  std::map<std::string, std::string> kv;
  std::map<std::string, bool> flags;
  bool has(const std::string& k) const { return kv.count(k); }
  std::string get(const std::string& k, const std::string& d = "") const { return kv.count(k) ? kv.at(k) : d; }
};

Args parse(int argc, char** argv, int start) {
  static const char* flags[] = {"--no-chat", "--sample", "--json", "--no-verify", "--no-special"};
  Args a;
  for (int i = start; i < argc; i++) {
    std::string k = argv[i];
    if (std::find(std::begin(flags), std::end(flags), k) != std::end(flags)) { a.flags[k] = true; continue; }
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) throw sgm::Error("unexpected argument '" + k + "' (see --help)");
    a.kv[k] = argv[++i];
  }
  return a;
}

int to_int(const std::string& s, const std::string& what) {
  try {
    size_t pos;
    int v = std::stoi(s, &pos);
    if (pos != s.size()) throw std::invalid_argument(s);
    return v;
  } catch (const std::exception&) {
    throw sgm::Error(what + " must be an integer, got '" + s + "'");
  }
}

sgm::GeneratorOptions options(const Args& a) {
  sgm::GeneratorOptions o;
  if (a.has("--threads")) o.threads = to_int(a.get("--threads"), "--threads");
  o.decoder = a.get("--decoder", "auto");
  o.verify = !a.flags.count("--no-verify");
  return o;
}

std::string need(const Args& a, const std::string& k) {
  if (!a.has(k)) throw sgm::Error(k + " is required (see --help)");
  return a.get(k);
}

int run(int argc, char** argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  Args a = parse(argc, argv, 2);
  if (cmd == "verify") {
    sgm::Bundle b = sgm::load_bundle(need(a, "--bundle"), true);
    std::cout << sgm::json({{"ok", true}, {"model", b.spec.model}, {"bundle_sha256", b.fingerprint()},
                            {"precision", b.precision()}}).dump() << "\n";
    return 0;
  }
  if (cmd == "tokenize") {
    sgm::Tokenizer tok = sgm::Tokenizer::from_file(need(a, "--tokenizer"));
    bool special = !a.flags.count("--no-special");
    std::string line;
    while (std::getline(std::cin, line)) {
      std::string text = sgm::json::parse(line).get<std::string>();
      auto ids = tok.encode(text, special);
      std::cout << sgm::json({{"ids", ids}, {"text", tok.decode(ids, true)}})
                       .dump(-1, ' ', false, sgm::json::error_handler_t::replace) << "\n";
    }
    return 0;
  }
  if (cmd == "preprocess") {
    sgm::Bundle b = sgm::load_bundle(need(a, "--bundle"), false);
    auto px = sgm::preprocess_rgb(sgm::decode_image(need(a, "--image")), b.spec.image);
    std::ofstream f(need(a, "--out"), std::ios::binary);
    f.write(reinterpret_cast<const char*>(px.data()), std::streamsize(px.size() * sizeof(float)));
    return f ? 0 : 1;
  }
  if (cmd == "serve") {
    sgm::Generator gen(need(a, "--bundle"), options(a));
    std::cout << sgm::json({{"ready", true}, {"describe", gen.describe()}}).dump() << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      std::cout << sgm::serve_line(gen, line) << std::endl;
    }
    return 0;
  }
  if (cmd == "generate") {
    sgm::Generator gen(need(a, "--bundle"), options(a));
    sgm::json req = {{"max_new_tokens", to_int(a.get("--max-new-tokens", "64"), "--max-new-tokens")},
                     {"chat", !a.flags.count("--no-chat")}, {"do_sample", a.flags.count("--sample") > 0}};
    if (a.has("--prompt")) req["prompt"] = a.get("--prompt");
    if (a.has("--ids")) {
      std::vector<int64_t> ids;
      std::string s = a.get("--ids"), tok;
      for (size_t p = 0; p <= s.size(); p++) {
        if (p == s.size() || s[p] == ',') { if (!tok.empty()) ids.push_back(to_int(tok, "--ids")); tok.clear(); }
        else tok += s[p];
      }
      req["token_ids"] = ids;
    }
    if (a.has("--image")) req["image"] = a.get("--image");
    if (a.has("--temperature")) req["temperature"] = std::stod(a.get("--temperature"));
    if (a.has("--top-p")) req["top_p"] = std::stod(a.get("--top-p"));
    if (a.has("--seed")) req["seed"] = to_int(a.get("--seed"), "--seed");
    if (a.has("--index")) req["index"] = to_int(a.get("--index"), "--index");
    sgm::json res = sgm::json::parse(sgm::serve_line(gen, req.dump()));
    if (res.contains("error")) throw sgm::Error(res["error"].get<std::string>());
    if (a.flags.count("--json")) std::cout << res.dump() << "\n";
    else std::cout << res["text"].get<std::string>() << "\n";
    return 0;
  }
  throw sgm::Error("unknown command '" + cmd + "' (generate, serve, verify, tokenize, preprocess)");
}
}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    fprintf(stderr, "sgm-run: error: %s\n", e.what());
    return 2;
  }
}
