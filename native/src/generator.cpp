// The generation loop of runtime/generate.py on ONNX Runtime's C++ API, one request at a time (batch 1, as the
// Python runtime runs a batch of one): prompt ids -> embed graph (image ids zeroed), the vision graph's embeddings
// spliced in at the image ids, prefill with an empty past and positions 0..s-1, then one token a step through the
// KV cache (the standard decoder: present outputs fed back as the next past without a copy; the fused decoder: one
// shared key/value buffer per layer bound as both past and present, written in place), tokens chosen by
// select_token from the request's own random stream.
#include <sched.h>

#include <chrono>
#include <cmath>
#include <cstring>

#include <onnxruntime/onnxruntime_cxx_api.h>

#include "sgm.h"

namespace sgm {
namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string layer_name(const std::string& pattern, int i) {
  std::string out = pattern;
  size_t p = out.find("{i}");
  return out.replace(p, 3, std::to_string(i));
}

int affinity_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return 1;
}

ONNXTensorElementDataType input_type(Ort::Session& s, const std::string& name) {
  for (size_t i = 0; i < s.GetInputCount(); i++) {
    Ort::AllocatorWithDefaultOptions alloc;
    if (s.GetInputNameAllocated(i, alloc).get() == name)
      return s.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetElementType();
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

std::vector<std::string> names_of(Ort::Session& s, bool inputs) {
  std::vector<std::string> out;
  Ort::AllocatorWithDefaultOptions alloc;
  size_t n = inputs ? s.GetInputCount() : s.GetOutputCount();
  for (size_t i = 0; i < n; i++)
    out.emplace_back(inputs ? s.GetInputNameAllocated(i, alloc).get() : s.GetOutputNameAllocated(i, alloc).get());
  return out;
}

// a float or float16 tensor's values as float
std::vector<float> to_floats(const Ort::Value& v) {
  auto info = v.GetTensorTypeAndShapeInfo();
  size_t n = info.GetElementCount();
  std::vector<float> out(n);
  if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    memcpy(out.data(), v.GetTensorData<float>(), n * sizeof(float));
  } else if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    const Ort::Float16_t* p = v.GetTensorData<Ort::Float16_t>();
    for (size_t i = 0; i < n; i++) out[i] = p[i].ToFloat();
  } else {
    throw Error("a graph gave a tensor that is neither float32 nor float16; rebuild the bundle");
  }
  return out;
}

// a tensor of `type` (float32 or float16) over `data` (kept in `keep` for float16)
Ort::Value float_tensor(const std::vector<float>& data, const std::vector<int64_t>& shape,
                        ONNXTensorElementDataType type, std::vector<Ort::Float16_t>& keep) {
  auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    keep.resize(data.size());
    for (size_t i = 0; i < data.size(); i++) keep[i] = Ort::Float16_t(data[i]);
    return Ort::Value::CreateTensor<Ort::Float16_t>(mem, keep.data(), keep.size(), shape.data(), shape.size());
  }
  return Ort::Value::CreateTensor<float>(mem, const_cast<float*>(data.data()), data.size(), shape.data(),
                                         shape.size());
}

}  // namespace

struct Generator::Impl {
  Bundle bundle;
  Tokenizer tok;
  GeneratorOptions opt;
  Ort::Env env{ORT_LOGGING_LEVEL_ERROR, "sgm-run"};
  Ort::SessionOptions so;
  std::unique_ptr<Ort::Session> vision, embed, decoder, fused;
  bool use_fused = false;
  std::vector<std::string> past, present, fpast, fpresent;
  ONNXTensorElementDataType embeds_type{}, kv_type{}, vision_type{};
  std::unordered_map<int64_t, std::vector<float>> rows;  // embedding rows seen (the embed graph is a lookup)
  int threads = 1;
  int64_t fused_vocab = 0;  // > 0: the fused decoder's logits are [b, 1, fused_vocab] float32

  std::unique_ptr<Ort::Session> open(const std::string& graph, const std::string& what) {
    std::string path = bundle.graph_path(graph);
    try {
      return std::make_unique<Ort::Session>(env, path.c_str(), so);
    } catch (const Ort::Exception& e) {
      throw Error("ONNX Runtime cannot load the " + what + " graph " + path + " (" + e.what() + "); rebuild the bundle");
    }
  }

  void check_io(Ort::Session& s, const std::string& graph, const std::vector<std::string>& inputs,
                const std::vector<std::string>& outputs) {
    auto have_in = names_of(s, true), have_out = names_of(s, false);
    std::vector<std::string> missing, extra;
    for (const auto& n : inputs)
      if (std::find(have_in.begin(), have_in.end(), n) == have_in.end()) missing.push_back(n);
    for (const auto& n : outputs)
      if (std::find(have_out.begin(), have_out.end(), n) == have_out.end()) missing.push_back(n);
    for (const auto& n : have_in)
      if (std::find(inputs.begin(), inputs.end(), n) == inputs.end()) extra.push_back(n);
    std::string problems;
    if (!missing.empty()) problems += "missing " + missing[0] + (missing.size() > 1 ? " ..." : "");
    if (!extra.empty()) problems += std::string(problems.empty() ? "" : "; ") + "unexpected inputs " + extra[0];
    if (!problems.empty())
      throw Error("the " + graph + " graph does not match runtime.json: " + problems + "; rebuild the bundle");
  }

  Ort::Session& standard_decoder() {
    if (!decoder) {
      decoder = open("decoder", "decoder");
      const DecoderIO& d = bundle.spec.decoder;
      std::vector<std::string> in{d.inputs_embeds, d.attention_mask, d.position_ids};
      in.insert(in.end(), past.begin(), past.end());
      std::vector<std::string> out{d.logits};
      out.insert(out.end(), present.begin(), present.end());
      check_io(*decoder, "decoder", in, out);
    }
    return *decoder;
  }

  // token embeddings [s, hidden] (rows seen before come from the cache)
  std::vector<float> embed_ids(const std::vector<int64_t>& ids) {
    size_t h = size_t(bundle.spec.hidden_size);
    bool all = true;
    for (int64_t t : ids) all = all && rows.count(t);
    std::vector<float> out;
    if (all) {
      for (int64_t t : ids) out.insert(out.end(), rows[t].begin(), rows[t].end());
      return out;
    }
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<int64_t> shape{1, int64_t(ids.size())};
    Ort::Value x = Ort::Value::CreateTensor<int64_t>(mem, const_cast<int64_t*>(ids.data()), ids.size(), shape.data(), 2);
    const char* in = bundle.spec.embed_input.c_str();
    const char* on = bundle.spec.embed_output.c_str();
    auto res = embed->Run(Ort::RunOptions{nullptr}, &in, &x, 1, &on, 1);
    out = to_floats(res[0]);
    if (out.size() != ids.size() * h)
      throw Error("the embed graph gives rows of another width than runtime.json's hidden_size; rebuild the bundle");
    if (rows.size() < 8192)
      for (size_t i = 0; i < ids.size(); i++)
        if (!rows.count(ids[i])) rows[ids[i]] = std::vector<float>(out.begin() + long(i * h), out.begin() + long((i + 1) * h));
    return out;
  }

  std::vector<float> prompt_embeds(const std::vector<int64_t>& ids, const RgbImage* image) {
    const BundleSpec& spec = bundle.spec;
    size_t n_image_ids = 0;
    std::vector<int64_t> text_ids(ids);
    for (auto& t : text_ids)
      if (t == spec.image_token_id) { n_image_ids++; t = 0; }
    size_t slots = n_image_ids / size_t(spec.num_image_tokens);
    size_t images = image ? 1 : 0;
    if (slots != images)
      throw Error("the prompt has " + std::to_string(slots) + " image placeholder(s) but " + std::to_string(images) +
                  " image(s) were given");
    std::vector<float> embeds = embed_ids(text_ids);
    if (!image) return embeds;
    std::vector<float> pixels = preprocess_rgb(*image, spec.image);
    std::vector<int64_t> shape{1, 3, spec.image.size, spec.image.size};
    std::vector<Ort::Float16_t> keep;
    Ort::Value x = float_tensor(pixels, shape, vision_type, keep);
    const char* in = spec.vision_input.c_str();
    const char* on = spec.vision_output.c_str();
    auto res = vision->Run(Ort::RunOptions{nullptr}, &in, &x, 1, &on, 1);
    auto fshape = res[0].GetTensorTypeAndShapeInfo().GetShape();
    if (fshape.size() != 3 || fshape[1] != spec.num_image_tokens || fshape[2] != spec.hidden_size)
      throw Error("the vision graph gives image embeddings of another shape than runtime.json's (num_image_tokens, "
                  "hidden_size); rebuild the bundle");
    std::vector<float> feats = to_floats(res[0]);
    size_t h = size_t(spec.hidden_size), k = 0;
    for (size_t i = 0; i < ids.size(); i++)
      if (ids[i] == spec.image_token_id) {
        memcpy(&embeds[i * h], &feats[k * h], h * sizeof(float));
        k++;
      }
    return embeds;
  }
};

Generator::Generator(const std::string& bundle_dir, const GeneratorOptions& options) : impl_(new Impl) {
  Impl& m = *impl_;
  m.opt = options;
  m.bundle = load_bundle(bundle_dir, options.verify);
  m.tok = Tokenizer::from_file(m.bundle.tokenizer_path());
  const BundleSpec& spec = m.bundle.spec;
  auto placeholder = m.tok.token_to_id(spec.prompt.image_placeholder);
  if (!placeholder || *placeholder != spec.image_token_id)
    throw Error("the bundle's tokenizer maps '" + spec.prompt.image_placeholder + "' to " +
                (placeholder ? std::to_string(*placeholder) : std::string("None")) + ", but runtime.json says "
                "image_token_id " + std::to_string(spec.image_token_id) + "; rebuild the bundle");
  if (options.threads < 0) throw Error("threads must be >= 1, got " + std::to_string(options.threads));
  m.threads = options.threads > 0 ? options.threads : affinity_cores();
  m.so.SetIntraOpNumThreads(m.threads);
  m.so.SetInterOpNumThreads(1);
  m.so.SetExecutionMode(ORT_SEQUENTIAL);
  m.so.SetLogSeverityLevel(3);
  m.so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  if (options.decoder != "auto" && options.decoder != "standard" && options.decoder != "fused")
    throw Error("decoder '" + options.decoder + "' is not one of auto, standard, fused");
  bool fits = spec.fused_decoder && std::find(spec.fused_decoder->providers.begin(), spec.fused_decoder->providers.end(),
                                              "cpu") != spec.fused_decoder->providers.end();
  if (options.decoder == "fused" && !fits)
    throw Error(spec.fused_decoder ? "the bundle's fused decoder is not built for cpu; use --decoder standard"
                                   : "the bundle has no fused decoder (build one with `python -m compile.fused`)");
  m.use_fused = options.decoder != "standard" && fits;
  for (int i = 0; i < spec.num_layers; i++) {
    m.past.push_back(layer_name(spec.decoder.past_key, i));
    m.past.push_back(layer_name(spec.decoder.past_value, i));
    m.present.push_back(layer_name(spec.decoder.present_key, i));
    m.present.push_back(layer_name(spec.decoder.present_value, i));
    if (spec.fused_decoder) {
      m.fpast.push_back(layer_name(spec.fused_decoder->past_key, i));
      m.fpast.push_back(layer_name(spec.fused_decoder->past_value, i));
      m.fpresent.push_back(layer_name(spec.fused_decoder->present_key, i));
      m.fpresent.push_back(layer_name(spec.fused_decoder->present_value, i));
    }
  }
  m.vision = m.open("vision", "vision");
  m.embed = m.open("embed", "embed");
  m.check_io(*m.vision, "vision", {spec.vision_input}, {spec.vision_output});
  m.check_io(*m.embed, "embed", {spec.embed_input}, {spec.embed_output});
  m.vision_type = input_type(*m.vision, spec.vision_input);
  if (m.use_fused) {
    const FusedDecoderSpec& f = *spec.fused_decoder;
    m.fused = m.open("fused_decoder", "fused decoder");
    std::vector<std::string> in{f.inputs_embeds, f.attention_mask};
    in.insert(in.end(), m.fpast.begin(), m.fpast.end());
    std::vector<std::string> out{f.logits};
    out.insert(out.end(), m.fpresent.begin(), m.fpresent.end());
    m.check_io(*m.fused, "fused_decoder", in, out);
    m.embeds_type = input_type(*m.fused, f.inputs_embeds);
    m.kv_type = input_type(*m.fused, m.fpast[0]);
    auto names = names_of(*m.fused, false);
    size_t li = size_t(std::find(names.begin(), names.end(), f.logits) - names.begin());
    auto info = m.fused->GetOutputTypeInfo(li).GetTensorTypeAndShapeInfo();
    auto shape = info.GetShape();
    if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && shape.size() == 3 && shape[1] == 1 &&
        shape[2] > 0)
      m.fused_vocab = shape[2];  // [b, 1, V]: written into one buffer bound for the whole generation
  } else {
    Ort::Session& d = m.standard_decoder();
    m.embeds_type = input_type(d, spec.decoder.inputs_embeds);
    m.kv_type = input_type(d, m.past[0]);
  }
}

Generator::~Generator() = default;
const Bundle& Generator::bundle() const { return impl_->bundle; }
const Tokenizer& Generator::tokenizer() const { return impl_->tok; }

json Generator::describe() const {
  const Bundle& b = impl_->bundle;
  json out = {{"backend", "native"}, {"host", "sgm-run"}, {"providers", {"CPUExecutionProvider"}}, {"device", "cpu"},
              {"model", b.spec.model}, {"dtype", b.spec.dtype}, {"bundle_sha256", b.fingerprint()},
              {"decoder", impl_->use_fused ? "fused" : "standard"}, {"intra_op_threads", impl_->threads},
              {"onnxruntime", Ort::GetVersionString()}};
  if (b.manifest.contains("precision") && b.manifest["precision"].is_object() &&
      b.manifest["precision"].value("name", json()).is_string()) {
    const json& q = b.manifest["precision"];
    std::string p = q["name"].get<std::string>();
    if (q.contains("method") && q["method"].is_string() && !q["method"].get<std::string>().empty())
      p += " (" + q["method"].get<std::string>() + ")";
    out["precision"] = p;
  }
  if (b.spec.prompt.system_prompt) out["system_prompt"] = *b.spec.prompt.system_prompt;
  if (b.manifest.contains("model") && b.manifest["model"].is_object()) {
    json source = json::object();
    for (const char* k : {"name", "config_sha256", "mlp_weights_sha256", "folded", "experts"})
      if (b.manifest["model"].contains(k)) source[k] = b.manifest["model"][k];
    out["source"] = source;
  }
  return out;
}

std::vector<int64_t> Generator::request_ids(const std::string& prompt, bool with_image, bool chat) const {
  const BundleSpec& spec = impl_->bundle.spec;
  std::vector<int64_t> out;
  for (int64_t t : impl_->tok.encode(spec.prompt.render(prompt, with_image, chat), spec.prompt.add_special_tokens)) {
    if (t == spec.image_token_id) out.insert(out.end(), size_t(spec.num_image_tokens), t);
    else out.push_back(t);
  }
  return out;
}

GenerationResult Generator::generate(const std::vector<int64_t>& ids, const RgbImage* image,
                                     const GenerationConfig& config, uint64_t index) {
  Impl& m = *impl_;
  const BundleSpec& spec = m.bundle.spec;
  if (ids.empty()) throw Error("the prompt has no tokens (an empty text); give some text to continue or a question");
  if (config.max_new_tokens < 0) throw Error("max_new_tokens must be >= 0");
  if (spec.context_length && int64_t(ids.size()) + config.max_new_tokens > *spec.context_length)
    throw Error("the prompt has " + std::to_string(ids.size()) + " tokens and asks for " +
                std::to_string(config.max_new_tokens) + " new ones, but the model's context holds " +
                std::to_string(*spec.context_length) + " positions; shorten the prompt to at most " +
                std::to_string(std::max<int64_t>(*spec.context_length - config.max_new_tokens, 0)) +
                " tokens or lower max_new_tokens");
  for (int64_t t : ids)
    if (t != spec.image_token_id && (t < 0 || t >= spec.vocab_size)) throw Error("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                                                   std::to_string(spec.vocab_size - 1) + ")");
  GenerationResult result;
  result.prompt_tokens = int(ids.size());
  auto t0 = Clock::now();
  std::vector<float> embeds = m.prompt_embeds(ids, image);
  const int64_t s = int64_t(ids.size()), h = spec.hidden_size, kvh = spec.num_kv_heads, hd = spec.head_dim;
  const int64_t capacity = s + std::max(config.max_new_tokens, 1);
  auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<int64_t> mask(size_t(capacity), 1);
  std::vector<float> logits;
  size_t vocab = 0;
  int64_t length = 0;
  std::vector<Ort::Float16_t> keep;
  Ort::RunOptions run_options{nullptr};

  // standard decoder state: the presents of the last run
  std::vector<Ort::Value> kv;
  // fused decoder state: one shared buffer per layer and kind, bound as past and present
  std::unique_ptr<Ort::IoBinding> io;
  Ort::AllocatorWithDefaultOptions alloc;
  const bool bound_logits = m.use_fused && m.fused_vocab > 0 && spec.fused_decoder->kv_buffer == "shared";
  std::vector<float> logits_buffer;
  Ort::Value logits_value{nullptr};

  auto run = [&](const std::vector<float>& x, int64_t n) {  // n new positions of embeddings x
    std::vector<int64_t> eshape{1, n, h};
    Ort::Value xe = float_tensor(x, eshape, m.embeds_type, keep);
    std::vector<int64_t> mshape{1, length + n};
    Ort::Value xm = Ort::Value::CreateTensor<int64_t>(mem, mask.data(), size_t(length + n), mshape.data(), 2);
    if (m.use_fused) {
      const FusedDecoderSpec& f = *spec.fused_decoder;
      if (!io) {
        io = std::make_unique<Ort::IoBinding>(*m.fused);
        if (bound_logits) {
          std::vector<int64_t> lshape{1, 1, m.fused_vocab};
          logits_buffer.assign(size_t(m.fused_vocab), 0.f);
          logits_value = Ort::Value::CreateTensor<float>(mem, logits_buffer.data(), logits_buffer.size(),
                                                         lshape.data(), 3);
          io->BindOutput(f.logits.c_str(), logits_value);
        } else {
          io->BindOutput(f.logits.c_str(), mem);  // first: GetOutputValues keeps the binding order
        }
        std::vector<int64_t> kshape{1, kvh, f.kv_buffer == "shared" ? capacity : 0, hd};
        for (size_t i = 0; i < m.fpast.size(); i++) {
          Ort::Value buf = Ort::Value::CreateTensor(alloc, kshape.data(), kshape.size(), m.kv_type);
          if (f.kv_buffer == "shared") {
            io->BindInput(m.fpast[i].c_str(), buf);
            io->BindOutput(m.fpresent[i].c_str(), buf);
          } else {
            io->BindInput(m.fpast[i].c_str(), buf);
            io->BindOutput(m.fpresent[i].c_str(), mem);
          }
          kv.push_back(std::move(buf));
        }
      }
      io->BindInput(f.inputs_embeds.c_str(), xe);
      io->BindInput(f.attention_mask.c_str(), xm);
      m.fused->Run(run_options, *io);
      if (bound_logits) {  // the step's logits are in the bound buffer; no output is wrapped or read back
        vocab = logits_buffer.size();
        logits.assign(logits_buffer.begin(), logits_buffer.end());
        length += n;
        return;
      }
      auto outs = io->GetOutputValues();
      auto lshape = outs[0].GetTensorTypeAndShapeInfo().GetShape();
      vocab = size_t(lshape.back());
      std::vector<float> all = to_floats(outs[0]);
      logits.assign(all.end() - long(vocab), all.end());
      if (f.kv_buffer != "shared") {  // concat: the presents become the next pasts
        std::vector<std::string> names = m.fpresent;
        for (size_t i = 0; i < m.fpast.size(); i++) {
          kv[i] = std::move(outs[i + 1]);
          io->BindInput(m.fpast[i].c_str(), kv[i]);
        }
      }
    } else {
      const DecoderIO& d = spec.decoder;
      std::vector<int64_t> pos(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; i++) pos[size_t(i)] = length + i;
      std::vector<int64_t> pshape{1, n};
      Ort::Value xp = Ort::Value::CreateTensor<int64_t>(mem, pos.data(), pos.size(), pshape.data(), 2);
      if (kv.empty()) {
        std::vector<int64_t> kshape{1, kvh, 0, hd};
        for (size_t i = 0; i < m.past.size(); i++)
          kv.push_back(Ort::Value::CreateTensor(alloc, kshape.data(), kshape.size(), m.kv_type));
      }
      std::vector<const char*> in_names{d.inputs_embeds.c_str(), d.attention_mask.c_str(), d.position_ids.c_str()};
      std::vector<Ort::Value> inputs;
      inputs.push_back(std::move(xe));
      inputs.push_back(std::move(xm));
      inputs.push_back(std::move(xp));
      for (size_t i = 0; i < m.past.size(); i++) {
        in_names.push_back(m.past[i].c_str());
        inputs.push_back(std::move(kv[i]));
      }
      std::vector<const char*> out_names{d.logits.c_str()};
      for (const auto& p : m.present) out_names.push_back(p.c_str());
      auto outs = m.decoder->Run(run_options, in_names.data(), inputs.data(), inputs.size(), out_names.data(),
                                 out_names.size());
      auto lshape = outs[0].GetTensorTypeAndShapeInfo().GetShape();
      vocab = size_t(lshape.back());
      const size_t rows = size_t(lshape[1]);
      if (outs[0].GetTensorTypeAndShapeInfo().GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        const float* p = outs[0].GetTensorData<float>() + (rows - 1) * vocab;
        logits.assign(p, p + vocab);
      } else {
        std::vector<float> all = to_floats(outs[0]);
        logits.assign(all.end() - long(vocab), all.end());
      }
      for (size_t i = 0; i < m.past.size(); i++) kv[i] = std::move(outs[i + 1]);
    }
    length += n;
  };

  run(embeds, s);
  auto t1 = Clock::now();
  std::unordered_map<int64_t, bool> eos;
  for (int64_t e : spec.eos_token_ids) eos[e] = true;
  NumpyRng rng(uint64_t(config.seed), index);
  result.finish_reason = "length";
  for (int n = 0; n < config.max_new_tokens; n++) {
    int64_t t = select_token(logits.data(), vocab, config, &rng);
    if (!config.ignore_eos && eos.count(t)) { result.finish_reason = "eos"; break; }
    result.token_ids.push_back(t);
    if (n == config.max_new_tokens - 1) break;
    run(m.embed_ids({t}), 1);
    result.decode_steps++;
  }
  auto t2 = Clock::now();
  result.prefill_s = seconds(t0, t1);
  result.decode_s = seconds(t1, t2);
  std::string text = m.tok.decode(result.token_ids, true);
  if (spec.clean_up_tokenization_spaces) text = clean_up_tokenization(text);
  result.text = python_strip(text);
  return result;
}

std::pair<double, int> Generator::nll(const std::string& text, int max_length) {
  Impl& m = *impl_;
  const BundleSpec& spec = m.bundle.spec;
  std::vector<int64_t> ids = m.tok.encode(text, spec.prompt.add_special_tokens);
  if (int(ids.size()) > max_length) ids.resize(size_t(max_length));
  if (ids.size() < 2) return {0.0, 0};
  Ort::Session& dec = m.standard_decoder();
  const DecoderIO& d = spec.decoder;
  const int64_t s = int64_t(ids.size());
  auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<float> embeds = m.embed_ids(ids);
  std::vector<Ort::Float16_t> keep;
  auto etype = input_type(dec, d.inputs_embeds), ktype = input_type(dec, m.past[0]);
  std::vector<int64_t> eshape{1, s, spec.hidden_size}, shape2{1, s}, kshape{1, spec.num_kv_heads, 0, spec.head_dim};
  std::vector<int64_t> mask(static_cast<size_t>(s), 1), pos(static_cast<size_t>(s));
  for (int64_t i = 0; i < s; i++) pos[size_t(i)] = i;
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<Ort::Value> inputs;
  inputs.push_back(float_tensor(embeds, eshape, etype, keep));
  inputs.push_back(Ort::Value::CreateTensor<int64_t>(mem, mask.data(), mask.size(), shape2.data(), 2));
  inputs.push_back(Ort::Value::CreateTensor<int64_t>(mem, pos.data(), pos.size(), shape2.data(), 2));
  std::vector<const char*> in_names{d.inputs_embeds.c_str(), d.attention_mask.c_str(), d.position_ids.c_str()};
  for (const auto& p : m.past) {
    in_names.push_back(p.c_str());
    inputs.push_back(Ort::Value::CreateTensor(alloc, kshape.data(), kshape.size(), ktype));
  }
  const char* out_name = d.logits.c_str();
  auto outs = dec.Run(Ort::RunOptions{nullptr}, in_names.data(), inputs.data(), inputs.size(), &out_name, 1);
  std::vector<float> logits = to_floats(outs[0]);
  size_t vocab = logits.size() / size_t(s);
  std::vector<double> terms(size_t(s - 1)), z(vocab), e(vocab);
  for (size_t i = 0; i + 1 < size_t(s); i++) {
    const float* row = &logits[i * vocab];
    double zmax = -INFINITY;
    for (size_t k = 0; k < vocab; k++) { z[k] = row[k]; zmax = std::max(zmax, z[k]); }
    for (size_t k = 0; k < vocab; k++) e[k] = std::exp(z[k] - zmax);
    double logz = zmax + std::log(numpy_pairwise_sum(e.data(), vocab));
    terms[i] = logz - z[size_t(ids[i + 1])];
  }
  return {numpy_pairwise_sum(terms.data(), terms.size()), int(s - 1)};
}

}  // namespace sgm
