// sha256 (FIPS 180-4), streamed over files: the manifest check of runtime/artifacts.py.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>

#include "sgm.h"

namespace sgm {
namespace {
const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

struct Sha256 {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t buf[64];
  size_t used = 0;
  uint64_t total = 0;

  void block(const uint8_t* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t(p[4 * i]) << 24) | (uint32_t(p[4 * i + 1]) << 16) |
                                        (uint32_t(p[4 * i + 2]) << 8) | uint32_t(p[4 * i + 3]);
    for (int i = 16; i < 64; i++) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
      uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  void update(const uint8_t* p, size_t n) {
    total += n;
    if (used) {
      size_t take = std::min(n, 64 - used);
      memcpy(buf + used, p, take);
      used += take; p += take; n -= take;
      if (used == 64) { block(buf); used = 0; }
    }
    while (n >= 64) { block(p); p += 64; n -= 64; }
    if (n) { memcpy(buf, p, n); used = n; }
  }
  std::string hex() {
    uint64_t bits = total * 8;
    uint8_t pad = 0x80;
    update(&pad, 1);
    uint8_t zero = 0;
    while (used != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = uint8_t(bits >> (56 - 8 * i));
    update(len, 8);
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (uint32_t v : h)
      for (int s = 28; s >= 0; s -= 4) out += digits[(v >> s) & 15];
    return out;
  }
};
}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  Sha256 s;
  s.update(static_cast<const uint8_t*>(data), n);
  return s.hex();
}

namespace {
// OpenSSL's libcrypto when the system has it (loaded at run time, no headers or link dependency): its SHA-NI/AVX2
// code hashes a bundle's graphs several times faster than the portable code above, which stays the fallback
struct Crypto {
  void* (*ctx_new)() = nullptr;
  void (*ctx_free)(void*) = nullptr;
  const void* (*sha256)() = nullptr;
  int (*init)(void*, const void*, void*) = nullptr;
  int (*update)(void*, const void*, size_t) = nullptr;
  int (*final)(void*, unsigned char*, unsigned int*) = nullptr;
  bool ok = false;
  Crypto() {
    void* h = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    ctx_new = reinterpret_cast<void* (*)()>(dlsym(h, "EVP_MD_CTX_new"));
    ctx_free = reinterpret_cast<void (*)(void*)>(dlsym(h, "EVP_MD_CTX_free"));
    sha256 = reinterpret_cast<const void* (*)()>(dlsym(h, "EVP_sha256"));
    init = reinterpret_cast<int (*)(void*, const void*, void*)>(dlsym(h, "EVP_DigestInit_ex"));
    update = reinterpret_cast<int (*)(void*, const void*, size_t)>(dlsym(h, "EVP_DigestUpdate"));
    final = reinterpret_cast<int (*)(void*, unsigned char*, unsigned int*)>(dlsym(h, "EVP_DigestFinal_ex"));
    ok = ctx_new && ctx_free && sha256 && init && update && final;
  }
};
}  // namespace

std::string sha256_file(const std::string& path) {
  static const Crypto crypto;
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) throw Error("cannot read " + path);
  std::vector<uint8_t> buf(1 << 20);
  size_t n;
  if (crypto.ok && !getenv("SGM_PORTABLE_SHA256")) {
    void* ctx = crypto.ctx_new();
    bool good = ctx && crypto.init(ctx, crypto.sha256(), nullptr) == 1;
    while (good && (n = fread(buf.data(), 1, buf.size(), f)) > 0) good = crypto.update(ctx, buf.data(), n) == 1;
    unsigned char md[32];
    unsigned int len = 0;
    good = good && crypto.final(ctx, md, &len) == 1 && len == 32;
    if (ctx) crypto.ctx_free(ctx);
    if (good) {
      fclose(f);
      static const char* digits = "0123456789abcdef";
      std::string out;
      for (unsigned char c : md) { out += digits[c >> 4]; out += digits[c & 15]; }
      return out;
    }
    rewind(f);
  }
  Sha256 s;
  while ((n = fread(buf.data(), 1, buf.size(), f)) > 0) s.update(buf.data(), n);
  fclose(f);
  return s.hex();
}

}  // namespace sgm
