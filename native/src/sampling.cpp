// runtime/sampling.py's select() in C++: argmax for greedy; for sampling, numpy's float64 arithmetic step by step
// (temperature, max shift, exp, pairwise sum, stable argsort, cumsum, searchsorted) and numpy's random stream
// default_rng([seed, index]) (SeedSequence entropy mixing, PCG64 XSL-RR, random() = (next64 >> 11) * 2^-53,
// Generator.choice = searchsorted(cdf / cdf[-1], random(), 'right')), so the same token comes out.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "sgm.h"

namespace sgm {
namespace {
// numpy/random/bit_generator.pyx SeedSequence
const uint32_t INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded,
               MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715;
const int XSHIFT = 16, POOL_SIZE = 4;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= MULT_A;
  value *= hash_const;
  value ^= value >> XSHIFT;
  return value;
}
uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t result = MIX_MULT_L * x - MIX_MULT_R * y;
  result ^= result >> XSHIFT;
  return result;
}

std::vector<uint32_t> coerce(uint64_t v) {  // _coerce_to_uint32_array of one non-negative int
  std::vector<uint32_t> out;
  if (v == 0) return {0};
  while (v) { out.push_back(uint32_t(v & 0xffffffffu)); v >>= 32; }
  return out;
}

const unsigned __int128 PCG_MULT = (static_cast<unsigned __int128>(2549297995355413924ULL) << 64) |
                                   4865540595714422341ULL;
}  // namespace

NumpyRng::NumpyRng(uint64_t seed, uint64_t index) : NumpyRng([&] {
  auto a = coerce(seed), b = coerce(index);
  a.insert(a.end(), b.begin(), b.end());
  return a;
}()) {}

NumpyRng::NumpyRng(const std::vector<uint32_t>& entropy) {
  uint32_t pool[POOL_SIZE];
  uint32_t hash_const = INIT_A;
  for (int i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(size_t(i) < entropy.size() ? entropy[size_t(i)] : 0, hash_const);
  for (int s = 0; s < POOL_SIZE; s++)
    for (int d = 0; d < POOL_SIZE; d++)
      if (s != d) pool[d] = mix(pool[d], hashmix(pool[s], hash_const));
  for (size_t s = POOL_SIZE; s < entropy.size(); s++)
    for (int d = 0; d < POOL_SIZE; d++) pool[d] = mix(pool[d], hashmix(entropy[s], hash_const));
  // generate_state(4, uint64): 8 uint32 words, little-endian pairs
  uint32_t words[8];
  uint32_t hc = INIT_B;
  for (int i = 0; i < 8; i++) {
    uint32_t v = pool[i % POOL_SIZE];
    v ^= hc;
    hc *= MULT_B;
    v *= hc;
    v ^= v >> XSHIFT;
    words[i] = v;
  }
  uint64_t val[4];
  for (int i = 0; i < 4; i++) val[i] = uint64_t(words[2 * i]) | (uint64_t(words[2 * i + 1]) << 32);
  unsigned __int128 initstate = (static_cast<unsigned __int128>(val[0]) << 64) | val[1];
  unsigned __int128 initseq = (static_cast<unsigned __int128>(val[2]) << 64) | val[3];
  // pcg_setseq_128_srandom_r
  state_ = 0;
  inc_ = (initseq << 1u) | 1u;
  state_ = state_ * PCG_MULT + inc_;
  state_ += initstate;
  state_ = state_ * PCG_MULT + inc_;
}

uint64_t NumpyRng::next_uint64() {
  state_ = state_ * PCG_MULT + inc_;
  uint64_t x = uint64_t(state_ >> 64) ^ uint64_t(state_);
  unsigned rot = unsigned(state_ >> 122);
  return (x >> rot) | (x << ((64 - rot) & 63));
}

double NumpyRng::random() { return double(next_uint64() >> 11) * (1.0 / 9007199254740992.0); }

// numpy's pairwise summation (numpy/core/src/umath/loops_utils.h.src, PW_BLOCKSIZE 128)
double numpy_pairwise_sum(const double* a, size_t n) {
  if (n < 8) {
    double res = 0.;
    for (size_t i = 0; i < n; i++) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int k = 0; k < 8; k++) r[k] = a[k];
    size_t i;
    for (i = 8; i < n - (n % 8); i += 8)
      for (int k = 0; k < 8; k++) r[k] += a[i + k];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[i];
    return res;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return numpy_pairwise_sum(a, n2) + numpy_pairwise_sum(a + n2, n - n2);
}

int64_t select_token(const float* logits, size_t n, const GenerationConfig& config, NumpyRng* rng) {
  if (!config.do_sample) return int64_t(std::max_element(logits, logits + n) - logits);  // first maximum, as argmax
  if (!rng) throw std::invalid_argument("sampling needs a random generator");
  std::vector<double> p(n);
  double t = std::max(config.temperature, 1e-5);
  for (size_t i = 0; i < n; i++) p[i] = double(logits[i]) / t;
  double zmax = *std::max_element(p.begin(), p.end());
  for (auto& v : p) v -= zmax;
  for (auto& v : p) v = std::exp(v);
  double s = numpy_pairwise_sum(p.data(), n);
  for (auto& v : p) v /= s;
  if (config.top_p < 1.0) {
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    // argsort(-p, kind="stable"): descending, ties by index
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return -p[a] < -p[b]; });
    std::vector<double> cum(n);
    double c = 0;
    for (size_t i = 0; i < n; i++) { c += p[size_t(order[i])]; cum[i] = c; }
    size_t keep = size_t(std::lower_bound(cum.begin(), cum.end(), config.top_p) - cum.begin()) + 1;
    std::vector<double> q(n, 0.0);
    for (size_t i = 0; i < keep && i < n; i++) q[size_t(order[i])] = p[size_t(order[i])];
    double qs = numpy_pairwise_sum(q.data(), n);
    for (size_t i = 0; i < n; i++) p[i] = q[i] / qs;
  }
  // Generator.choice(n, p=p): cdf = cumsum(p); cdf /= cdf[-1]; searchsorted(cdf, random(), side="right")
  std::vector<double> cdf(n);
  double c = 0;
  for (size_t i = 0; i < n; i++) { c += p[i]; cdf[i] = c; }
  double last = cdf[n - 1];
  for (auto& v : cdf) v /= last;
  double u = rng->random();
  return int64_t(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
}

}  // namespace sgm
