// tokenizers' BPE model over tokenizer.json, for the byte-level BPE tokenizers of the project's models
// (smol-llava: SmolLM2's; tiny-random-llava's): added tokens split out first (leftmost-longest, lstrip/rstrip,
// single_word), the ByteLevel pre-tokenizer's GPT-2 pattern matched by hand over Unicode category tables
// (optionally after a Digits pre-tokenizer), BPE merges by rank, TemplateProcessing for special tokens, and the
// decoder chain (ByteFallback, Fuse, Replace, ByteLevel) with Rust's from_utf8_lossy. Anything else in
// tokenizer.json is refused at load, naming it, instead of tokenizing differently. Checked token for token against
// the tokenizers library on real text (tests/native).
#include <algorithm>
#include <cstdio>
#include <functional>
#include <fstream>
#include <sstream>

#include "sgm.h"

namespace sgm {
namespace {
#include "unicode_tables.inc"

bool in_ranges(const uint32_t (*r)[2], size_t n, uint32_t c) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (c < r[mid][0]) hi = mid;
    else if (c > r[mid][1]) lo = mid + 1;
    else return true;
  }
  return false;
}
bool is_letter(uint32_t c) { return in_ranges(kLetterRanges, sizeof(kLetterRanges) / sizeof(kLetterRanges[0]), c); }
bool is_number(uint32_t c) { return in_ranges(kNumberRanges, sizeof(kNumberRanges) / sizeof(kNumberRanges[0]), c); }
// Unicode White_Space (Oniguruma's \s in Unicode mode, Rust's char::is_whitespace)
bool is_space(uint32_t c) {
  return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// one code point at s[i] (the string is valid UTF-8: it came from JSON or was checked), its length in `len`
uint32_t next_cp(const std::string& s, size_t i, size_t* len) {
  unsigned char c = s[i];
  if (c < 0x80) { *len = 1; return c; }
  int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
  uint32_t cp = c & (n == 4 ? 0x07 : n == 3 ? 0x0F : 0x1F);
  for (int k = 1; k < n && i + k < s.size(); k++) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *len = std::min<size_t>(n, s.size() - i);
  return cp;
}

void put_cp(std::string& out, uint32_t cp) {
  if (cp < 0x80) out += char(cp);
  else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
  else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  }
}

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD
std::string utf8_lossy(const std::string& b) {
  std::string out;
  size_t i = 0, n = b.size();
  auto byte = [&](size_t k) { return static_cast<unsigned char>(b[k]); };
  while (i < n) {
    unsigned char c = byte(i);
    if (c < 0x80) { out += char(c); i++; continue; }
    int need; unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else { out += "\xEF\xBF\xBD"; i++; continue; }
    size_t k = 1;
    bool ok = true;
    for (; k <= size_t(need); k++) {
      if (i + k >= n) { ok = false; break; }
      unsigned char d = byte(i + k);
      unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (d < l || d > h) { ok = false; break; }
    }
    if (ok) { out.append(b, i, need + 1); i += need + 1; }
    else { out += "\xEF\xBF\xBD"; i += k; }
  }
  return out;
}

struct ByteMap {
  uint32_t to_char[256];
  std::unordered_map<uint32_t, uint8_t> to_byte;
  ByteMap() {
    std::vector<int> bs;
    for (int b = '!'; b <= '~'; b++) bs.push_back(b);
    for (int b = 0xA1; b <= 0xAC; b++) bs.push_back(b);
    for (int b = 0xAE; b <= 0xFF; b++) bs.push_back(b);
    std::vector<bool> have(256, false);
    for (int b : bs) { have[b] = true; to_char[b] = b; }
    int n = 0;
    for (int b = 0; b < 256; b++)
      if (!have[b]) to_char[b] = 256 + n++;
    for (int b = 0; b < 256; b++) to_byte[to_char[b]] = uint8_t(b);
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// the GPT-2 pattern of tokenizers' ByteLevel pre-tokenizer:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void gpt2_split(const std::string& s, std::vector<std::string>& out) {
  std::vector<uint32_t> cps;
  std::vector<size_t> off;
  for (size_t i = 0, len; i < s.size(); i += len) { off.push_back(i); cps.push_back(next_cp(s, i, &len)); }
  off.push_back(s.size());
  size_t n = cps.size(), i = 0;
  auto other = [&](uint32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); };
  while (i < n) {
    size_t j = i;
    uint32_t c = cps[i];
    if (c == '\'' && i + 1 < n) {
      uint32_t a = cps[i + 1], b = i + 2 < n ? cps[i + 2] : 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') j = i + 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) j = i + 3;
    }
    if (j == i) {
      size_t k = (c == ' ' && i + 1 < n) ? i + 1 : i;  // the optional leading space
      for (auto pred : {is_letter, is_number}) {
        if (j == i && pred(cps[k])) { j = k; while (j < n && pred(cps[j])) j++; }
      }
      if (j == i && other(cps[k])) { j = k; while (j < n && other(cps[j])) j++; }
    }
    if (j == i && is_space(c)) {
      size_t e = i;
      while (e < n && is_space(cps[e])) e++;
      // \s+(?!\S): all of the run at the end of the text, else all but its last space (when that leaves some)
      j = (e == n || e - i == 1) ? e : e - 1;
    }
    if (j == i) j = i + 1;  // unreachable: every code point is a letter, number, space or other
    out.push_back(s.substr(off[i], off[j] - off[i]));
    i = j;
  }
}


uint64_t pair_key(int64_t a, int64_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
}  // namespace

Tokenizer Tokenizer::from_file(const std::string& path) {
  json t = read_json(path, "rebuild the bundle");
  Tokenizer tok;
  auto refuse = [&](const std::string& what) {
    throw Error(path + ": " + what + " is not supported by the native tokenizer (BPE: byte-level, or SentencePiece-style with byte fallback); use the "
                "Python runtime for this bundle");
  };
  const json& model = t.at("model");
  if (model.value("type", std::string()) != "BPE") refuse("model type " + model.value("type", json()).dump());
  if (model.contains("dropout") && !model["dropout"].is_null()) refuse("BPE dropout");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(k) && !model[k].is_null() && model[k] != "") refuse(std::string("BPE ") + k);
  if (model.value("ignore_merges", false)) refuse("BPE ignore_merges");
  tok.byte_fallback_ = model.value("byte_fallback", false);
  int64_t max_id = -1;
  for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) {
    tok.vocab_[it.key()] = it.value().get<int64_t>();
    max_id = std::max(max_id, it.value().get<int64_t>());
  }
  for (const auto& a : t.value("added_tokens", json::array()))
    max_id = std::max(max_id, a.at("id").get<int64_t>());
  tok.id_to_token_.resize(size_t(max_id + 1));
  for (const auto& [k, v] : tok.vocab_) tok.id_to_token_[size_t(v)] = k;
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto u = tok.vocab_.find(model["unk_token"].get<std::string>());
    if (u != tok.vocab_.end()) tok.unk_ = u->second;
  }
  int rank = 0;
  for (const auto& m : model.at("merges")) {
    std::string a, b;
    if (m.is_string()) {
      std::string s = m.get<std::string>();
      size_t sp = s.find(' ', 1);
      a = s.substr(0, sp); b = s.substr(sp + 1);
    } else {
      a = m.at(0).get<std::string>(); b = m.at(1).get<std::string>();
    }
    auto ia = tok.vocab_.find(a), ib = tok.vocab_.find(b), im = tok.vocab_.find(a + b);
    if (ia == tok.vocab_.end() || ib == tok.vocab_.end() || im == tok.vocab_.end())
      throw Error(path + ": merge '" + a + " " + b + "' names a token missing from the vocabulary; rebuild the bundle");
    tok.merges_.emplace(pair_key(ia->second, ib->second), std::make_pair(rank++, im->second));
  }
  for (const auto& a : t.value("added_tokens", json::array())) {
    Added ad{a.at("content").get<std::string>(), a.at("id").get<int64_t>(), a.value("special", false),
             a.value("lstrip", false), a.value("rstrip", false), a.value("single_word", false)};
    tok.added_by_id_[ad.id] = tok.added_.size();
    tok.id_to_token_[size_t(ad.id)] = ad.content;
    tok.added_.push_back(ad);
  }
  for (size_t i = 0; i < tok.added_.size(); i++)
    if (!tok.added_[i].content.empty())
      tok.added_by_first_byte_[static_cast<unsigned char>(tok.added_[i].content[0])].push_back(i);
  // normalizer: none, or Replace steps on strings (gemma's " " -> "\u2581")
  const json& norm = t.value("normalizer", json());
  if (!norm.is_null()) {
    std::vector<json> steps;
    if (norm.value("type", std::string()) == "Sequence") for (const auto& n : norm.at("normalizers")) steps.push_back(n);
    else steps.push_back(norm);
    for (const auto& n : steps) {
      if (n.value("type", std::string()) != "Replace" || !n.at("pattern").contains("String"))
        refuse("normalizer " + n.value("type", json()).dump());
      tok.replaces_.emplace_back(n["pattern"]["String"].get<std::string>(), n.at("content").get<std::string>());
    }
    for (const auto& a : t.value("added_tokens", json::array()))
      if (!tok.replaces_.empty() && a.value("normalized", false))
        refuse("an added token matched after normalization ('" + a.value("content", std::string()) + "')");
  }
  // pre-tokenizer: ByteLevel (optionally after Digits), or a Split on a string, or none
  const json& pre = t.value("pre_tokenizer", json());
  std::vector<json> steps;
  if (!pre.is_null()) {
    if (pre.value("type", std::string()) == "Sequence") for (const auto& p : pre.at("pretokenizers")) steps.push_back(p);
    else steps.push_back(pre);
  }
  for (size_t i = 0; i < steps.size(); i++) {
    std::string type = steps[i].value("type", std::string());
    if (type == "ByteLevel" && i + 1 == steps.size()) {
      tok.byte_level_ = true;
      tok.add_prefix_space_ = steps[i].value("add_prefix_space", false);
      tok.use_regex_ = steps[i].value("use_regex", true);
    } else if (type == "Digits" && i == 0) {
      tok.digits_ = true;
      tok.individual_digits_ = steps[i].value("individual_digits", false);
    } else if (type == "Split" && steps.size() == 1 && steps[i].at("pattern").contains("String") &&
               !steps[i].value("invert", false)) {
      tok.split_pattern_ = steps[i]["pattern"]["String"].get<std::string>();
      tok.split_behavior_ = steps[i].value("behavior", std::string());
      if (tok.split_pattern_.empty() || (tok.split_behavior_ != "Removed" && tok.split_behavior_ != "Isolated" &&
                                         tok.split_behavior_ != "MergedWithPrevious" &&
                                         tok.split_behavior_ != "MergedWithNext"))
        refuse("Split behavior " + tok.split_behavior_);
    } else {
      refuse("pre-tokenizer " + type + (type == "ByteLevel" ? " before another one" : ""));
    }
  }
  // post-processor: TemplateProcessing (single) or ByteLevel or none
  const json& post = t.value("post_processor", json());
  std::vector<json> posts;
  if (!post.is_null()) {
    if (post.value("type", std::string()) == "Sequence") for (const auto& p : post.at("processors")) posts.push_back(p);
    else posts.push_back(post);
  }
  for (const auto& p : posts) {
    std::string type = p.value("type", std::string());
    if (type == "ByteLevel") continue;  // offsets only
    if (type != "TemplateProcessing") refuse("post-processor " + type);
    tok.has_template_ = true;
    for (const auto& item : p.at("single")) {
      if (item.contains("Sequence")) {
        tok.template_.push_back({-1});
      } else {
        std::string id = item.at("SpecialToken").at("id").get<std::string>();
        tok.template_.push_back(p.at("special_tokens").at(id).at("ids").get<std::vector<int64_t>>());
      }
    }
  }
  // decoder
  std::function<Decoder(const json&)> parse = [&](const json& d) {
    Decoder out;
    out.type = d.value("type", std::string());
    if (out.type == "Sequence") {
      for (const auto& s : d.at("decoders")) out.steps.push_back(parse(s));
    } else if (out.type == "Replace") {
      if (!d.at("pattern").contains("String")) refuse("a Replace decoder with a regex pattern");
      out.pattern = d["pattern"]["String"].get<std::string>();
      out.content = d.at("content").get<std::string>();
    } else if (out.type != "ByteLevel" && out.type != "ByteFallback" && out.type != "Fuse") {
      refuse("decoder " + out.type);
    }
    return out;
  };
  const json& dec = t.value("decoder", json());
  tok.decoder_ = dec.is_null() ? Decoder{} : parse(dec);
  return tok;
}

std::optional<int64_t> Tokenizer::token_to_id(const std::string& token) const {
  for (const auto& a : added_) if (a.content == token) return a.id;
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void Tokenizer::bpe(const std::string& piece, std::vector<int64_t>& out) const {
  auto hit = cache_.find(piece);
  if (hit != cache_.end()) { out.insert(out.end(), hit->second.begin(), hit->second.end()); return; }
  std::vector<int64_t> word;
  bool last_unk = false;
  for (size_t i = 0, len; i < piece.size(); i += len) {
    next_cp(piece, i, &len);
    auto it = vocab_.find(piece.substr(i, len));
    if (it != vocab_.end()) { word.push_back(it->second); last_unk = false; continue; }
    bool fell_back = false;
    if (byte_fallback_) {
      std::vector<int64_t> bytes;
      for (size_t k = i; k < i + len; k++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned char>(piece[k]));
        auto b = vocab_.find(name);
        if (b == vocab_.end()) { bytes.clear(); break; }
        bytes.push_back(b->second);
      }
      if (!bytes.empty()) { word.insert(word.end(), bytes.begin(), bytes.end()); fell_back = true; last_unk = false; }
    }
    if (!fell_back) {
      if (!unk_) throw Error("the tokenizer has no token for a character of the text and no unk token");
      if (!last_unk) word.push_back(*unk_);  // fuse_unk
      last_unk = true;
    }
  }
  // merge the lowest-ranked adjacent pair (leftmost on ties) until none is left: tokenizers' Word::merge_all
  while (word.size() > 1) {
    int best = INT32_MAX;
    size_t at = 0;
    int64_t merged = 0;
    for (size_t k = 0; k + 1 < word.size(); k++) {
      auto m = merges_.find(pair_key(word[k], word[k + 1]));
      if (m != merges_.end() && m->second.first < best) { best = m->second.first; at = k; merged = m->second.second; }
    }
    if (best == INT32_MAX) break;
    word[at] = merged;
    word.erase(word.begin() + long(at) + 1);
  }
  if (cache_.size() < 100000) cache_.emplace(piece, word);
  out.insert(out.end(), word.begin(), word.end());
}

void Tokenizer::encode_segment(const std::string& raw, std::vector<int64_t>& out) const {
  std::string text = raw;
  for (const auto& [from, to] : replaces_) {
    std::string r;
    size_t pos = 0, hit;
    while ((hit = text.find(from, pos)) != std::string::npos) {
      r += text.substr(pos, hit - pos) + to;
      pos = hit + from.size();
    }
    text = r + text.substr(pos);
  }
  std::vector<std::string> pieces;
  if (!split_pattern_.empty()) {
    const std::string& d = split_pattern_;
    size_t pos = 0, hit;
    std::string carry;  // MergedWithNext: the delimiter waiting for the next piece
    while ((hit = text.find(d, pos)) != std::string::npos) {
      std::string before = carry + text.substr(pos, hit - pos);
      carry.clear();
      if (split_behavior_ == "MergedWithPrevious") pieces.push_back(before + d);
      else {
        if (!before.empty()) pieces.push_back(before);
        if (split_behavior_ == "Isolated") pieces.push_back(d);
        else if (split_behavior_ == "MergedWithNext") carry = d;
      }
      pos = hit + d.size();
    }
    if (pos < text.size() || !carry.empty()) pieces.push_back(carry + text.substr(pos));
    if (!byte_level_) {
      for (const auto& p : pieces) if (!p.empty()) bpe(p, out);
      return;
    }
  } else if (!byte_level_) {
    if (!text.empty()) bpe(text, out);
    return;
  } else {
    pieces.push_back(text);
  }
  if (digits_) {
    std::vector<std::string> split;
    for (const auto& p : pieces) {
      std::string cur;
      bool cur_digit = false;
      for (size_t i = 0, len; i < p.size(); i += len) {
        bool d = is_number(next_cp(p, i, &len));
        if (!cur.empty() && (d != cur_digit || (d && individual_digits_))) { split.push_back(cur); cur.clear(); }
        cur += p.substr(i, len);
        cur_digit = d;
      }
      if (!cur.empty()) split.push_back(cur);
    }
    pieces.swap(split);
  }
  const ByteMap& bm = byte_map();
  for (size_t k = 0; k < pieces.size(); k++) {
    std::string p = pieces[k];
    if (add_prefix_space_ && k == 0 && (p.empty() || p[0] != ' ')) p = " " + p;
    std::vector<std::string> words;
    if (use_regex_) gpt2_split(p, words);
    else words.push_back(p);
    for (const auto& w : words) {
      std::string mapped;
      for (unsigned char c : w) put_cp(mapped, bm.to_char[c]);
      bpe(mapped, out);
    }
  }
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  std::vector<int64_t> seq;
  size_t start = 0, i = 0, n = text.size();
  auto word_char = [](uint32_t c) { return is_letter(c) || is_number(c) || c == '_'; };
  while (i < n) {
    const Added* best = nullptr;
    auto cands = added_by_first_byte_.find(static_cast<unsigned char>(text[i]));
    if (cands != added_by_first_byte_.end())
      for (size_t k : cands->second) {
        const Added& a = added_[k];
        if (text.compare(i, a.content.size(), a.content) == 0 && (!best || a.content.size() > best->content.size()))
          best = &a;
      }
    if (best && best->single_word) {
      size_t len;
      bool left_ok = true, right_ok = true;
      if (i > 0) {  // the code point before the match
        size_t b = i - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) b--;
        left_ok = !word_char(next_cp(text, b, &len));
      }
      size_t e = i + best->content.size();
      if (e < n) right_ok = !word_char(next_cp(text, e, &len));
      if (!left_ok || !right_ok) best = nullptr;
    }
    if (!best) {
      size_t len;
      next_cp(text, i, &len);
      i += len;
      continue;
    }
    size_t mstart = i, mstop = i + best->content.size();
    if (best->lstrip) {
      size_t b = mstart;
      while (b > start) {
        size_t p = b - 1, len;
        while (p > start && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) p--;
        if (!is_space(next_cp(text, p, &len))) break;
        b = p;
      }
      mstart = b;
    }
    if (best->rstrip) {
      size_t len;
      while (mstop < n && is_space(next_cp(text, mstop, &len))) mstop += len;
    }
    if (start < mstart) encode_segment(text.substr(start, mstart - start), seq);
    seq.push_back(best->id);
    start = i = mstop;
  }
  if (start < n) encode_segment(text.substr(start), seq);
  if (!add_special_tokens || !has_template_) return seq;
  std::vector<int64_t> out;
  for (const auto& item : template_) {
    if (item.size() == 1 && item[0] == -1) out.insert(out.end(), seq.begin(), seq.end());
    else out.insert(out.end(), item.begin(), item.end());
  }
  return out;
}

std::vector<std::string> Tokenizer::decode_chain(const Decoder& d, std::vector<std::string> tokens) const {
  if (d.type == "Sequence") {
    for (const auto& s : d.steps) tokens = decode_chain(s, std::move(tokens));
    return tokens;
  }
  if (d.type == "Fuse") {
    std::string all;
    for (const auto& t : tokens) all += t;
    return {all};
  }
  if (d.type == "Replace") {
    for (auto& t : tokens) {
      if (d.pattern.empty()) continue;
      std::string out;
      size_t pos = 0, hit;
      while ((hit = t.find(d.pattern, pos)) != std::string::npos) {
        out += t.substr(pos, hit - pos) + d.content;
        pos = hit + d.pattern.size();
      }
      t = out + t.substr(pos);
    }
    return tokens;
  }
  if (d.type == "ByteFallback") {
    std::vector<std::string> out;
    std::string pending;
    size_t pending_n = 0;
    auto flush = [&]() {
      if (!pending_n) return;
      std::string valid = utf8_lossy(pending);
      if (valid == pending) out.push_back(pending);
      else for (size_t k = 0; k < pending_n; k++) out.push_back("\xEF\xBF\xBD");
      pending.clear();
      pending_n = 0;
    };
    for (const auto& t : tokens) {
      unsigned v;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && sscanf(t.c_str() + 3, "%2X", &v) == 1 &&
          isxdigit(t[3]) && isxdigit(t[4])) {
        pending += char(v);
        pending_n++;
      } else {
        flush();
        out.push_back(t);
      }
    }
    flush();
    return out;
  }
  if (d.type == "ByteLevel") {
    const ByteMap& bm = byte_map();
    std::string bytes;
    for (const auto& t : tokens) {
      std::string mine;
      bool all = true;
      for (size_t i = 0, len; i < t.size(); i += len) {
        auto it = bm.to_byte.find(next_cp(t, i, &len));
        if (it == bm.to_byte.end()) { all = false; break; }
        mine += char(it->second);
      }
      bytes += all ? mine : t;
    }
    return {utf8_lossy(bytes)};
  }
  return tokens;  // no decoder
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  for (int64_t id : ids) {
    if (id < 0 || size_t(id) >= id_to_token_.size()) continue;
    auto a = added_by_id_.find(id);
    if (skip_special_tokens && a != added_by_id_.end() && added_[a->second].special) continue;
    tokens.push_back(id_to_token_[size_t(id)]);
  }
  if (decoder_.type.empty()) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); i++) out += (i ? " " : "") + tokens[i];
    return out;
  }
  std::string out;
  for (const auto& t : decode_chain(decoder_, tokens)) out += t;
  return out;
}

std::string python_strip(const std::string& s) {
  // str.strip(): Python's whitespace (str.isspace), which adds U+001C..U+001F to White_Space
  auto py_space = [](uint32_t c) { return is_space(c) || (c >= 0x1C && c <= 0x1F); };
  size_t b = 0, e = s.size(), len;
  while (b < e && py_space(next_cp(s, b, &len))) b += len;
  while (e > b) {
    size_t p = e - 1;
    while (p > b && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) p--;
    if (!py_space(next_cp(s, p, &len))) break;
    e = p;
  }
  return s.substr(b, e - b);
}

std::string clean_up_tokenization(std::string text) {
  const std::pair<const char*, const char*> subs[] = {{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","},
                                                      {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"},
                                                      {" 've", "'ve"}, {" 're", "'re"}};
  for (auto [a, b] : subs) {
    std::string out, from(a), to(b);
    size_t pos = 0, hit;
    while ((hit = text.find(from, pos)) != std::string::npos) {
      out += text.substr(pos, hit - pos) + to;
      pos = hit + from.size();
    }
    text = out + text.substr(pos);
  }
  return text;
}

}  // namespace sgm
