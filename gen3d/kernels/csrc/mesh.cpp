// Compiled visibility pass of the mesh rasterizer (gen3d/kernels/_mesh_raster.py, `visibility`): the nearest
// triangle at every pixel centre. Plain C++17, called through ctypes (gen3d/kernels/_native.py).
//
// The same float32 operations in the same order as the torch path (edge functions, top-left ties, row spans from
// float64 edge roots with the float test deciding near a pixel centre, packed (depth, triangle) keys, near/far
// clipping), so both paths pick the same triangle. Built with -ffp-contract=off (_native._SOURCE_FLAGS): no a * b + c
// contracted into fused multiply-adds, which would round differently from torch's separate ops.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

namespace {

constexpr float kBoxMargin = 1.0f / 64;  // _BOX_MARGIN
constexpr int64_t kNoHit = std::numeric_limits<int64_t>::max();

struct Setup {
    float cp[3], ap[3], bp[3];  // edge i: value c + a X + b Y at pixel centre (X, Y), inside positive
    bool tl[3];                 // edge owns its exact-zero pixel centres
    float zc, zx, zy;           // z/w = zc + zx X + zy Y
    int64_t x0, x1, y0, y1;     // pixel centres to test
    bool ok;
};

inline float clampf(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

// `proj` of _setup: a clip-space point to pixel coordinates, clamped to [-1, W] x [-1, H]
inline void project(float px, float py, float pw, bool valid, int64_t H, int64_t W, float big, float& lox,
                    float& hix, float& loy, float& hiy) {
    float w = valid ? pw : 1.0f;
    float X = clampf((px / w + 1.0f) * static_cast<float>(W / 2.0) - 0.5f, -1.0f, static_cast<float>(W));
    float Y = clampf((py / w + 1.0f) * static_cast<float>(H / 2.0) - 0.5f, -1.0f, static_cast<float>(H));
    lox = std::min(lox, valid ? X : big);
    hix = std::max(hix, valid ? X : -big);
    loy = std::min(loy, valid ? Y : big);
    hiy = std::max(hiy, valid ? Y : -big);
}

Setup setup(const float* v, int64_t H, int64_t W) {
    Setup s;
    float x[3], y[3], z[3], w[3];
    for (int i = 0; i < 3; ++i) x[i] = v[4 * i], y[i] = v[4 * i + 1], z[i] = v[4 * i + 2], w[i] = v[4 * i + 3];
    float C[3], A[3], Bc[3];
    for (int i = 0; i < 3; ++i) {
        int j = (i + 1) % 3, k = (i + 2) % 3;
        C[i] = x[j] * y[k] - x[k] * y[j];
        A[i] = y[j] * w[k] - y[k] * w[j];
        Bc[i] = x[k] * w[j] - x[j] * w[k];
    }
    float det = x[0] * A[0] + y[0] * Bc[0] + w[0] * C[0];
    const float sx = static_cast<float>(2.0 / W), ox = static_cast<float>(1.0 / W - 1.0);
    const float sy = static_cast<float>(2.0 / H), oy = static_cast<float>(1.0 / H - 1.0);
    float sign = det > 0 ? 1.0f : det < 0 ? -1.0f : 0.0f;
    for (int i = 0; i < 3; ++i) {
        s.cp[i] = (C[i] + A[i] * ox + Bc[i] * oy) * sign;
        s.ap[i] = (A[i] * sx) * sign;
        s.bp[i] = (Bc[i] * sy) * sign;
        s.tl[i] = s.ap[i] > 0 || (s.ap[i] == 0 && s.bp[i] > 0);
    }
    float inv = 1.0f / std::fabs(det);
    s.zc = (z[0] * s.cp[0] + z[1] * s.cp[1] + z[2] * s.cp[2]) * inv;
    s.zx = (z[0] * s.ap[0] + z[1] * s.ap[1] + z[2] * s.ap[2]) * inv;
    s.zy = (z[0] * s.bp[0] + z[1] * s.bp[1] + z[2] * s.bp[2]) * inv;

    bool outside = w[0] <= 0 && w[1] <= 0 && w[2] <= 0;
    const float* cs[3] = {x, y, z};
    for (const float* c : cs) {
        outside |= (c[0] > w[0] && c[1] > w[1] && c[2] > w[2]) || (-c[0] > w[0] && -c[1] > w[1] && -c[2] > w[2]);
    }
    s.ok = !outside && det != 0 && std::isfinite(det);

    bool keep[3];
    for (int i = 0; i < 3; ++i) keep[i] = (z[i] + w[i] >= 0) && (w[i] > 0);
    const float big = static_cast<float>(std::max(H, W) + 1);
    float lox = std::numeric_limits<float>::infinity(), hix = -lox, loy = lox, hiy = -lox;
    for (int i = 0; i < 3; ++i) project(x[i], y[i], w[i], keep[i], H, W, big, lox, hix, loy, hiy);
    bool any_kept = keep[0] || keep[1] || keep[2], full = false;
    if (s.ok && !(keep[0] && keep[1] && keep[2])) {  // crosses the near plane: add the edges' crossing points
        float dist[3];
        for (int i = 0; i < 3; ++i) dist[i] = z[i] + w[i];
        for (int i = 0; i < 3; ++i) {
            int n = (i + 1) % 3;
            bool cross = (dist[i] >= 0) != (dist[n] >= 0);
            float t = dist[i] / (cross ? dist[i] - dist[n] : 1.0f);
            float p[4];
            for (int c = 0; c < 4; ++c) p[c] = v[4 * i + c] + t * (v[4 * n + c] - v[4 * i + c]);
            full |= cross && p[3] <= 0;
            project(p[0], p[1], p[3], cross && p[3] > 0, H, W, big, lox, hix, loy, hiy);
            any_kept |= cross;
        }
    }
    s.x0 = full ? 0 : static_cast<int64_t>(clampf(std::ceil(lox - kBoxMargin), 0, static_cast<float>(W - 1)));
    s.y0 = full ? 0 : static_cast<int64_t>(clampf(std::ceil(loy - kBoxMargin), 0, static_cast<float>(H - 1)));
    s.x1 = full ? W - 1 : static_cast<int64_t>(clampf(std::floor(hix + kBoxMargin), -1, static_cast<float>(W - 1)));
    s.y1 = full ? H - 1 : static_cast<int64_t>(clampf(std::floor(hiy + kBoxMargin), -1, static_cast<float>(H - 1)));
    s.ok = s.ok && s.x1 >= s.x0 && s.y1 >= s.y0 && (any_kept || full);
    return s;
}

inline bool inside(float c, float a, bool tl, int64_t X) {
    float e = c + a * static_cast<float>(X);
    return e > 0 || (e == 0 && tl);
}

// _row_spans for one row: the pixel centres [xs, xe] inside all three edges (empty when xe < xs)
inline void row_span(const Setup& s, float rY, int64_t W, int64_t& xs, int64_t& xe) {
    const double tol = 1e-6 * std::max<int64_t>(W, 64);
    xs = s.x0, xe = s.x1;
    bool empty = false;
    for (int i = 0; i < 3; ++i) {
        float c = s.cp[i] + s.bp[i] * rY, a = s.ap[i];
        if (a == 0) {
            empty |= !inside(c, a, s.tl[i], 0);
            continue;
        }
        bool up = a > 0;
        double root = std::min(std::max(-static_cast<double>(c) / static_cast<double>(a), -2.0), W + 1.0);
        double nearest = std::nearbyint(root);
        int64_t k = static_cast<int64_t>(up ? std::ceil(root) : std::floor(root));
        if (std::fabs(root - nearest) <= tol) {
            int64_t n = static_cast<int64_t>(nearest);
            k = inside(c, a, s.tl[i], n) ? n : n + (up ? 1 : -1);
        }
        if (up) xs = std::max(xs, k);
        else xe = std::min(xe, k);
    }
    if (empty) xe = xs - 1;
}

inline int64_t depth_key(float depth, int64_t prim) {
    float d1 = depth + 1.0f;
    int32_t bits;
    std::memcpy(&bits, &d1, sizeof bits);
    return (static_cast<int64_t>(bits) << 32) | prim;
}

}  // namespace

extern "C" {

// v [P, 3, 4] float32 clip-space vertices of the primitives, batch [P] int64 image of each; out [B * H * W]
// int64: the nearest primitive's index at each pixel centre, -1 where none. Rows are split among `threads`.
void gen3d_mesh_visibility(const float* v, const int64_t* batch, int64_t P, int64_t B, int64_t H, int64_t W,
                           int64_t* out, int threads) {
    std::vector<Setup> setups(P);
    for (int64_t p = 0; p < P; ++p) setups[p] = setup(v + 12 * p, H, W);
    std::vector<int64_t> live;
    for (int64_t p = 0; p < P; ++p)
        if (setups[p].ok) live.push_back(p);
    const int64_t rows = B * H;
    int64_t* zbuf = out;  // packed (depth, primitive) keys, then the primitives
    std::fill(zbuf, zbuf + rows * W, kNoHit);
    auto band = [&](int64_t r0, int64_t r1) {  // image rows [r0, r1) of the flattened B * H rows
        for (int64_t p : live) {
            const Setup& s = setups[p];
            int64_t base = batch[p] * H;
            int64_t ya = std::max(s.y0, r0 - base), yb = std::min(s.y1, r1 - 1 - base);
            for (int64_t y = ya; y <= yb; ++y) {
                float rY = static_cast<float>(y);
                int64_t xs, xe;
                row_span(s, rY, W, xs, xe);
                if (xe < xs) continue;
                float rz0 = s.zc + s.zy * rY;
                int64_t* row = zbuf + (base + y) * W;
                for (int64_t X = xs; X <= xe; ++X) {
                    float depth = rz0 + s.zx * static_cast<float>(X);
                    if (depth < -1 || depth > 1) continue;  // beyond the near or far plane
                    int64_t key = depth_key(depth, p);
                    if (key < row[X]) row[X] = key;
                }
            }
        }
    };
    int n = std::max(1, std::min<int>(threads, static_cast<int>(rows)));
    if (n == 1) {
        band(0, rows);
    } else {
        std::vector<std::thread> pool;
        for (int t = 0; t < n; ++t) pool.emplace_back(band, rows * t / n, rows * (t + 1) / n);
        for (auto& th : pool) th.join();
    }
    for (int64_t i = 0; i < rows * W; ++i) out[i] = out[i] == kNoHit ? -1 : (out[i] & 0xFFFFFFFFLL);
}

}  // extern "C"
