// Image decoding (stb_image) with runtime.images' refusals, and runtime.preprocess.preprocess: Pillow's resize of
// an 8-bit RGB image (libImaging/Resample.c: precomputed filter coefficients as 22-bit fixed point, horizontal pass
// then vertical pass, each rounded to 8 bits), centre crop, float32 scale and normalise in the same order of float32
// operations as numpy, so the pixel values equal the Python runtime's.
#include <cmath>
#include <cstring>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>

#include "sgm.h"

namespace sgm {
namespace {
const long kMaxPixels = 89478485;  // runtime.images.MAX_PIXELS
const int kMaxAspect = 50;
const char* kFix = "give a still 8-bit RGB or greyscale image (PNG or JPEG)";

Error refuse(const std::string& where, const std::string& reason) {
  return Error(where + " is not a readable image (" + reason + "); " + kFix);
}

void check_shape(int w, int h, const std::string& where) {
  if (w < 1 || h < 1) throw refuse(where, "it has no pixels: " + std::to_string(w) + "x" + std::to_string(h));
  if (long(w) * long(h) > kMaxPixels)
    throw refuse(where, std::to_string(w) + "x" + std::to_string(h) + " pixels, over the 89,478,485 decoded here (a "
                 "decompression bomb?); scale it down first");
  if (std::max(w, h) > kMaxAspect * std::min(w, h))
    throw refuse(where, std::to_string(w) + "x" + std::to_string(h) + " pixels, more than 50 times longer than wide; "
                 "crop it first");
}

const int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
double bilinear(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

// Resample.c precompute_coeffs + normalize_coeffs_8bpc: per output pixel its first input pixel, its count, and
// ksize fixed-point weights
int precompute(int in_size, double in0, double in1, int out_size, double (*filter)(double), double support0,
               std::vector<int>& bounds, std::vector<int32_t>& kk) {
  double scale = (in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = support0 * filterscale;
  int ksize = int(std::ceil(support)) * 2 + 1;
  std::vector<double> k(size_t(out_size) * ksize);
  bounds.assign(size_t(out_size) * 2, 0);
  for (int xx = 0; xx < out_size; xx++) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* kp = &k[size_t(xx) * ksize];
    int x;
    for (x = 0; x < xmax; x++) {
      double w = filter((x + xmin - center + 0.5) * ss);
      kp[x] = w;
      ww += w;
    }
    for (x = 0; x < xmax; x++)
      if (ww != 0.0) kp[x] /= ww;
    for (; x < ksize; x++) kp[x] = 0;
    bounds[size_t(xx) * 2] = xmin;
    bounds[size_t(xx) * 2 + 1] = xmax;
  }
  kk.resize(k.size());
  for (size_t i = 0; i < k.size(); i++)
    kk[i] = k[i] < 0 ? int32_t(-0.5 + k[i] * (1 << kPrecisionBits)) : int32_t(0.5 + k[i] * (1 << kPrecisionBits));
  return ksize;
}

inline uint8_t clip8(int32_t in) {
  if (in >= (1 << kPrecisionBits << 8)) return 255;
  if (in <= 0) return 0;
  return uint8_t(in >> kPrecisionBits);
}
// the component count of a JPEG's frame header (SOFn), 0 when the file is no JPEG or has none
int jpeg_components(const std::string& path) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) return 0;
  std::vector<uint8_t> b(1 << 16);
  size_t n = fread(b.data(), 1, b.size(), f);
  fclose(f);
  if (n < 4 || b[0] != 0xFF || b[1] != 0xD8) return 0;
  for (size_t i = 2; i + 9 < n;) {
    if (b[i] != 0xFF) return 0;
    uint8_t m = b[i + 1];
    size_t len = (size_t(b[i + 2]) << 8) | b[i + 3];
    if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) return b[i + 9];
    i += 2 + len;
  }
  return 0;
}
}  // namespace

RgbImage decode_image(const std::string& path) {
  int w = 0, h = 0, comp = 0;
  if (!stbi_info(path.c_str(), &w, &h, &comp)) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) throw Error("image " + path + " does not exist; give an image file");
    fclose(f);
    throw refuse(path, std::string("cannot identify image file: ") + stbi_failure_reason());
  }
  check_shape(w, h, path);
  if (jpeg_components(path) == 4)
    throw refuse(path, "its mode is CMYK, which needs its colour profile to become RGB; convert it to 8-bit RGB first");
  if (stbi_is_16_bit(path.c_str())) throw refuse(path, "its mode is 16-bit, which would be clipped to white; "
                                                       "convert it to 8-bit RGB first");
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &comp, 3);
  if (!data) throw refuse(path, stbi_failure_reason());
  RgbImage out;
  out.width = w;
  out.height = h;
  out.pixels.assign(data, data + size_t(w) * h * 3);
  stbi_image_free(data);
  return out;
}

RgbImage pillow_resize(const RgbImage& in, int xsize, int ysize, const std::string& resample) {
  double (*filter)(double);
  double support;
  if (resample == "bicubic") { filter = bicubic; support = 2.0; }
  else if (resample == "bilinear") { filter = bilinear; support = 1.0; }
  else throw Error("image resample '" + resample + "' is not supported by the native host (bicubic, bilinear)");
  if (in.width == xsize && in.height == ysize) return in;
  std::vector<int> bh, bv;
  std::vector<int32_t> kh, kv;
  int ksh = precompute(in.width, 0, in.width, xsize, filter, support, bh, kh);
  int ksv = precompute(in.height, 0, in.height, ysize, filter, support, bv, kv);
  bool need_h = xsize != in.width, need_v = ysize != in.height;
  // Pillow 13: when the height shrinks by more than twice what the width does, the vertical pass runs first
  bool horizontal_first = !((in.height - ysize) > 0 && (in.height - ysize) > (in.width - xsize) * 2);
  auto horizontal = [&](const RgbImage& src, int first_row, int rows) {
    RgbImage out;
    out.width = xsize;
    out.height = rows;
    out.pixels.resize(size_t(xsize) * rows * 3);
    for (int yy = 0; yy < rows; yy++) {
      const uint8_t* row = &src.pixels[size_t(yy + first_row) * src.width * 3];
      uint8_t* o = &out.pixels[size_t(yy) * xsize * 3];
      for (int xx = 0; xx < xsize; xx++) {
        int xmin = bh[size_t(xx) * 2], xmax = bh[size_t(xx) * 2 + 1];
        const int32_t* k = &kh[size_t(xx) * ksh];
        int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < xmax; x++) {
          const uint8_t* p = row + size_t(x + xmin) * 3;
          s0 += p[0] * k[x]; s1 += p[1] * k[x]; s2 += p[2] * k[x];
        }
        o[xx * 3] = clip8(s0); o[xx * 3 + 1] = clip8(s1); o[xx * 3 + 2] = clip8(s2);
      }
    }
    return out;
  };
  auto vertical = [&](const RgbImage& src) {
    RgbImage out;
    out.width = src.width;
    out.height = ysize;
    out.pixels.resize(size_t(src.width) * ysize * 3);
    for (int yy = 0; yy < ysize; yy++) {
      const int32_t* k = &kv[size_t(yy) * ksv];
      int ymin = bv[size_t(yy) * 2], ymax = bv[size_t(yy) * 2 + 1];
      for (int xx = 0; xx < src.width; xx++) {
        int32_t s[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
        for (int y = 0; y < ymax; y++) {
          const uint8_t* p = &src.pixels[(size_t(y + ymin) * src.width + xx) * 3];
          for (int c = 0; c < 3; c++) s[c] += p[c] * k[y];
        }
        for (int c = 0; c < 3; c++) out.pixels[(size_t(yy) * src.width + xx) * 3 + c] = clip8(s[c]);
      }
    }
    return out;
  };
  if (!horizontal_first) {
    RgbImage v = need_v ? vertical(in) : in;
    return need_h ? horizontal(v, 0, v.height) : v;
  }
  if (!need_h) return vertical(in);
  // only the rows the vertical pass reads are resampled horizontally; its bounds shift by the first one
  int ybox_first = bv[0], ybox_last = bv[size_t(ysize) * 2 - 2] + bv[size_t(ysize) * 2 - 1];
  for (int i = 0; i < ysize; i++) bv[size_t(i) * 2] -= ybox_first;
  RgbImage h = horizontal(in, ybox_first, ybox_last - ybox_first);
  return need_v ? vertical(h) : h;
}

std::vector<float> preprocess_rgb(const RgbImage& image, const ImageSpec& spec) {
  check_shape(image.width, image.height, "the image");
  int w = image.width, h = image.height, size = spec.size, nw, nh;
  // shortest edge to `size`, the other truncated: int(size * h / w) with Python's true division
  if (w <= h) { nw = size; nh = int(double(int64_t(size) * h) / double(w)); }
  else { nw = int(double(int64_t(size) * w) / double(h)); nh = size; }
  RgbImage r = pillow_resize(image, nw, nh, spec.resample);
  int left = (nw - size) / 2, top = (nh - size) / 2;
  std::vector<float> out(size_t(3) * size * size);
  const float scale = 255.0f;
  for (int y = 0; y < size; y++)
    for (int x = 0; x < size; x++) {
      const uint8_t* p = &r.pixels[(size_t(y + top) * nw + (x + left)) * 3];
      for (int c = 0; c < 3; c++) {
        volatile float v = float(p[c]) / scale;  // numpy: float32 array / 255.0 stays float32
        out[(size_t(c) * size + y) * size + x] = (v - spec.mean[c]) / spec.std[c];
      }
    }
  return out;
}

}  // namespace sgm
