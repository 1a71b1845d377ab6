// sgm-edge native runtime: a compiled bundle (runtime.json + manifest.json + ONNX graphs + tokenizer.json) on
// ONNX Runtime's C++ API. The Python runtime (runtime/) is the reference; every piece here mirrors one there:
//   load_bundle      runtime/bundle.py + runtime/artifacts.py (sha256 manifest check)
//   Tokenizer        runtime/tokenizer.py over tokenizers' BPE (byte-level), checked token for token
//   preprocess_rgb   runtime/preprocess.py (Pillow's resize, crop, normalise)
//   select_token     runtime/sampling.py (argmax; numpy's PCG64 + SeedSequence for seeded top-p)
//   Generator        runtime/generate.py + runtime/backends/ort.py (embed, vision, decoder with KV cache)
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace sgm {

using json = nlohmann::json;

// A user-facing error: one line saying what is wrong and what to do (runtime.errors.UserError).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- sha256 (runtime/artifacts.py) --------------------------------------------------------------------------
std::string sha256_hex(const void* data, size_t n);
std::string sha256_file(const std::string& path);

// ---- bundle (runtime/bundle.py) ------------------------------------------------------------------------------
struct ImageSpec {
  int size = 0;
  float mean[3] = {0, 0, 0};
  float std[3] = {1, 1, 1};
  std::string resample = "bicubic";
};

struct PromptSpec {
  std::string text_format, image_format, image_placeholder;
  bool add_special_tokens = true;
  std::optional<std::string> system_prompt;
  std::string render(const std::string& question, bool with_image, bool chat = true) const;
};

struct DecoderIO {
  std::string inputs_embeds, attention_mask, position_ids, past_key, past_value, logits, present_key, present_value;
};

struct FusedDecoderSpec {
  std::string graph, inputs_embeds, attention_mask, past_key, past_value, logits, present_key, present_value;
  std::string logits_positions = "last", kv_buffer = "shared";
  std::vector<std::string> providers{"cpu"};
};

struct BundleSpec {
  int format_version = 1;
  std::string model, dtype;
  std::map<std::string, std::string> graphs;
  std::string vision_input, vision_output, embed_input, embed_output;
  DecoderIO decoder;
  int num_layers = 0, num_kv_heads = 0, head_dim = 0, hidden_size = 0, vocab_size = 0;
  int64_t image_token_id = 0;
  int num_image_tokens = 0;
  ImageSpec image;
  PromptSpec prompt;
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = 0;
  bool clean_up_tokenization_spaces = false;
  std::optional<FusedDecoderSpec> fused_decoder;
  std::optional<int> context_length;

  static BundleSpec from_json(const json& d, const std::string& where);
};

struct Bundle {
  std::string root;
  BundleSpec spec;
  json manifest;
  std::string graph_path(const std::string& graph) const;
  std::string tokenizer_path() const { return root + "/tokenizer.json"; }
  std::string fingerprint() const;  // sha256 over the manifest's file hashes (Bundle.fingerprint)
  std::string precision() const;
};

Bundle load_bundle(const std::string& directory, bool verify = true);

// ---- tokenizer (runtime/tokenizer.py) --------------------------------------------------------------------------
class Tokenizer {
 public:
  static Tokenizer from_file(const std::string& path);
  // token ids of `text` (added tokens split out, pre-tokenized, BPE), special tokens added by the post-processor
  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens) const;
  // the tokenizers library's decode: special tokens skipped when asked, through the decoder chain
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const;
  std::optional<int64_t> token_to_id(const std::string& token) const;

 private:
  struct Added {
    std::string content;
    int64_t id;
    bool special, lstrip, rstrip, single_word;
  };
  struct Decoder {
    std::string type, pattern, content;
    std::vector<Decoder> steps;
  };
  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, std::pair<int, int64_t>> merges_;  // (left id, right id) -> (rank, merged id)
  std::vector<Added> added_;
  std::unordered_map<int64_t, size_t> added_by_id_;
  bool byte_level_ = false, add_prefix_space_ = false, use_regex_ = true, individual_digits_ = false,
       digits_ = false;
  bool byte_fallback_ = false;
  std::vector<std::pair<std::string, std::string>> replaces_;  // normalizer: Replace steps (string patterns)
  std::string split_pattern_, split_behavior_;                // pre-tokenizer Split on a string (none: empty)
  std::unordered_map<unsigned char, std::vector<size_t>> added_by_first_byte_;
  std::optional<int64_t> unk_;
  std::vector<std::vector<int64_t>> template_;  // post-processor: items of "single"; {-1} stands for the sequence
  bool has_template_ = false;
  Decoder decoder_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache_;

  void bpe(const std::string& piece, std::vector<int64_t>& out) const;
  void encode_segment(const std::string& text, std::vector<int64_t>& out) const;
  std::vector<std::string> decode_chain(const Decoder& d, std::vector<std::string> tokens) const;
};

std::string python_strip(const std::string& s);
std::string clean_up_tokenization(std::string text);

// ---- images (runtime/preprocess.py, runtime/images.py) --------------------------------------------------------
struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // RGB, row-major
};
RgbImage decode_image(const std::string& path);  // stb_image, with runtime.images' refusals
// Pillow's resize of an 8-bit RGB image (ImagingResample: horizontal then vertical pass, fixed-point coefficients)
RgbImage pillow_resize(const RgbImage& in, int width, int height, const std::string& resample);
// pixel values [3, size, size] float32, as runtime.preprocess.preprocess gives for one image
std::vector<float> preprocess_rgb(const RgbImage& image, const ImageSpec& spec);

// ---- sampling (runtime/sampling.py) ---------------------------------------------------------------------------
// numpy.random.default_rng([seed, index]): SeedSequence + PCG64, random() as numpy's Generator gives it
class NumpyRng {
 public:
  NumpyRng(uint64_t seed, uint64_t index);
  explicit NumpyRng(const std::vector<uint32_t>& entropy);
  uint64_t next_uint64();
  double random();

 private:
  unsigned __int128 state_ = 0, inc_ = 0;
};

struct GenerationConfig {
  int max_new_tokens = 64;
  bool do_sample = false;
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t seed = 0;
  bool ignore_eos = false;  // decode max_new_tokens whatever comes (benchmarks: every runner decodes as many)
};

int64_t select_token(const float* logits, size_t n, const GenerationConfig& config, NumpyRng* rng);
double numpy_pairwise_sum(const double* a, size_t n);

// ---- generation (runtime/generate.py, runtime/backends/ort.py) ------------------------------------------------
struct GeneratorOptions {
  int threads = 0;                   // intra-op threads; 0: every core
  std::string decoder = "auto";      // auto, standard, fused
  bool verify = true;
};

struct GenerationResult {
  std::string text;
  std::vector<int64_t> token_ids;
  std::string finish_reason;
  int prompt_tokens = 0;
  double prefill_s = 0, decode_s = 0;
  int decode_steps = 0;
};

class Generator {
 public:
  Generator(const std::string& bundle_dir, const GeneratorOptions& options);
  ~Generator();
  const Bundle& bundle() const;
  const Tokenizer& tokenizer() const;
  json describe() const;
  // the prompt ids of one request: chat template (unless !chat), tokens, each image id expanded
  std::vector<int64_t> request_ids(const std::string& prompt, bool with_image, bool chat) const;
  // generate from prompt ids (+ the image's pixels when the prompt has image ids); `index` picks the random stream
  GenerationResult generate(const std::vector<int64_t>& ids, const RgbImage* image, const GenerationConfig& config,
                            uint64_t index);
  // teacher-forced negative log-likelihood of a text: (sum, predicted tokens) (BundleGenerator.nll)
  std::pair<double, int> nll(const std::string& text, int max_length = 512);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- JSON-lines serving ----------------------------------------------------------------------------------------
// one request line in, one result line out (never throws for a bad request: {"id":..,"error":"..."})
std::string serve_line(Generator& gen, const std::string& line);

// A JSON file, or Error naming the file and `fix` when it cannot be read or parsed.
json read_json(const std::string& path, const std::string& fix);

}  // namespace sgm
