// Unit tests of the parts that need no bundle: sha256, numpy's random stream and pairwise sum, sampling, Pillow's
// resize, the tokenizer's UTF-8 handling. Expected values come from Python (hashlib, numpy 2.4, Pillow).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <unistd.h>

#include "sgm.h"

static int failures = 0;
#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                         \
    }                                                                     \
  } while (0)

int main() {
  using namespace sgm;
  // sha256
  CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::string big;
  for (int r = 0; r < 300; r++)
    for (int b = 0; b < 256; b++) big += char(b);
  CHECK(sha256_hex(big.data(), big.size()) == "f8b0585eb91f58c007a5634362c9f90d8543822c113f702523bc7b73408a9392");

  // files: through libcrypto when the system has it, and the portable code
  {
    char path[] = "/tmp/sgm-unit-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE* f = fdopen(fd, "wb");
    fwrite(big.data(), 1, big.size(), f);
    fclose(f);
    CHECK(sha256_file(path) == sha256_hex(big.data(), big.size()));
    setenv("SGM_PORTABLE_SHA256", "1", 1);
    CHECK(sha256_file(path) == sha256_hex(big.data(), big.size()));
    unsetenv("SGM_PORTABLE_SHA256");
    remove(path);
  }

  // numpy.random.default_rng([seed, index])
  NumpyRng r0(0, 0);
  CHECK(r0.next_uint64() == 0xa30febcfd9c2825fULL);
  CHECK(r0.next_uint64() == 0x4510bdf882d9d721ULL);
  NumpyRng r1(7, 123);
  CHECK(r1.random() == 0.12980357752893645);
  CHECK(r1.random() == 0.781177347721772);
  NumpyRng r2((1ULL << 40) + 5, 3);
  CHECK(r2.random() == 0.7278392106064934);

  // numpy's pairwise sum of default_rng(1).random(1000)
  NumpyRng r3(std::vector<uint32_t>{1});
  std::vector<double> a(1000);
  for (auto& v : a) v = r3.random();
  CHECK(numpy_pairwise_sum(a.data(), 1000) == 502.8046455869868);
  CHECK(numpy_pairwise_sum(a.data(), 5) == 2.866925832893555);
  CHECK(numpy_pairwise_sum(a.data(), 100) == 51.306896957075836);

  // greedy is the first maximum; sampling with a one-hot distribution picks it whatever the stream
  float logits[5] = {0.f, 3.f, 3.f, -1.f, 2.f};
  GenerationConfig greedy;
  CHECK(select_token(logits, 5, greedy, nullptr) == 1);
  GenerationConfig sample;
  sample.do_sample = true;
  sample.top_p = 0.01;
  NumpyRng r4(0, 0);
  for (int i = 0; i < 20; i++) CHECK(select_token(logits, 5, sample, &r4) == 1);

  // Pillow: Image.new("RGB", (4, 2)) with pixels i*20 (R), 255 - i*20 (G), i*7 (B), resized to (3, 5) bicubic
  RgbImage img;
  img.width = 4;
  img.height = 2;
  for (int i = 0; i < 8; i++) {
    img.pixels.push_back(uint8_t(i * 20));
    img.pixels.push_back(uint8_t(255 - i * 20));
    img.pixels.push_back(uint8_t(i * 7));
  }
  RgbImage out = pillow_resize(img, 3, 5, "bicubic");
  CHECK(out.width == 3 && out.height == 5);
  const uint8_t expect[] = {0,255,0,22,233,8,48,207,17,9,246,3,35,220,13,61,194,22,44,211,15,70,185,25,96,159,34,79,176,27,105,150,37,131,124,46,92,163,32,118,137,42,144,111,51};
  CHECK(out.pixels.size() == sizeof expect && memcmp(out.pixels.data(), expect, sizeof expect) == 0);
  if (out.pixels.size() == sizeof expect && memcmp(out.pixels.data(), expect, sizeof expect) != 0) {
    for (auto p : out.pixels) fprintf(stderr, "%d,", p);
    fprintf(stderr, "\n");
  }

  // Python's str.strip and transformers' clean_up_tokenization
  CHECK(python_strip("\x1c \t hi there\xe2\x80\x83\n") == "hi there");
  CHECK(clean_up_tokenization("a , b . c n't") == "a, b. cn't");

  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  else printf("unit tests: all passed\n");
  return failures ? 1 : 0;
}
