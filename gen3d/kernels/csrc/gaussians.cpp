// Tile binning and depth-sorted alpha compositing of 2D Gaussian splats (forward and backward) for CPUs.
//
// Same image formation as the torch compositor in _gaussians_raster.py (3DGS / gsplat rules): pixel centres at
// half-integers; per pixel, splats front to back; alpha = min(0.99, opacity * exp(-sigma)) with
// sigma = a dx^2 / 2 + b dx dy + c dy^2 / 2 (dx = pixel - mean); alphas under 1/255 are skipped; a pixel stops
// before the splat that would bring its transmittance to 1e-4 or below.
//
// Plain C++17 without torch headers (it builds in about a second and is called through ctypes): tiles are shared
// among std::threads; inside a tile the loops run over the tile's pixels so the compiler vectorises them, and the
// exponential is a branch-free polynomial that vectorises too. The backward walks each pixel's list front to back
// with the suffix sums of the blend taken from the forward totals, up to the last splat the forward blended
// (saved per pixel); per-splat gradients go to per-thread buffers that are summed at the end.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

template <typename T> struct Exp;

// exp(x) (used for x <= 0): 2^k * p(r) with k = round(x log2 e), |r| <= 1/2, p a Taylor polynomial of exp(r ln 2)
// (relative error below 2e-7 in float, 2e-16 in double); x is clamped where 2^k would leave the normal range.
template <> struct Exp<float> {
    static inline float eval(float x) {
        float t = x * 1.44269504088896341f;
        t = t > -126.0f ? (t < 126.0f ? t : 126.0f) : -126.0f;  // also maps NaN to -126
        float k = (t + 12582912.0f) - 12582912.0f;  // round to nearest
        float r = (t - k) * 0.693147180559945309f;
        float p = 1.0f / 720;
        p = 1.0f / 120 + r * p, p = 1.0f / 24 + r * p, p = 1.0f / 6 + r * p;
        p = 0.5f + r * p, p = 1.0f + r * p, p = 1.0f + r * p;
        int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
        float scale;
        std::memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
};

template <> struct Exp<double> {
    static inline double eval(double x) {
        double t = x * 1.4426950408889634074;
        t = t > -1022.0 ? (t < 1022.0 ? t : 1022.0) : -1022.0;
        double k = (t + 6755399441055744.0) - 6755399441055744.0;
        double r = (t - k) * 0.69314718055994530942;
        double p = 1.0 / 479001600;  // 1/12!
        const double inv[12] = {1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040, 1.0 / 720,
                                1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0};
        for (int i = 0; i < 12; ++i) p = inv[i] + r * p;
        int64_t bits = (static_cast<int64_t>(k) + 1023) << 52;
        double scale;
        std::memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
};

constexpr double kMaxAlpha = 0.99;
constexpr double kMinAlpha = 1.0 / 255.0;
constexpr double kMinTransmittance = 1e-4;

struct Plan {
    int64_t n_tiles, tile_size, tiles_x, tiles_y, width, height;
    const int64_t* offsets;  // [n_tiles] start of each tile's run in splat_ids
    const int64_t* counts;   // [n_tiles]
    const int64_t* splat_ids;  // [M] depth-sorted within each tile
};

// Runs body(tile, worker) over every tile on n_threads threads (a shared counter hands out tiles).
template <typename F> void for_tiles(int64_t n_tiles, int n_threads, F body) {
    std::atomic<int64_t> next{0};
    auto work = [&](int worker) {
        for (int64_t t; (t = next.fetch_add(1)) < n_tiles;) body(t, worker);
    };
    n_threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, n_tiles)));
    std::vector<std::thread> pool;
    for (int w = 1; w < n_threads; ++w) pool.emplace_back(work, w);
    work(0);
    for (auto& th : pool) th.join();
}

// Pixel centres of a tile and whether each lies inside the image.
template <typename T> struct TilePixels {
    std::vector<T> x, y, inside;
    int64_t img, x0, y0;
    void set(const Plan& p, int64_t tile) {
        int64_t ts = p.tile_size, per_img = p.tiles_x * p.tiles_y;
        img = tile / per_img;
        int64_t local = tile % per_img;
        x0 = (local % p.tiles_x) * ts;
        y0 = (local / p.tiles_x) * ts;
        x.resize(ts * ts), y.resize(ts * ts), inside.resize(ts * ts);
        for (int64_t i = 0; i < ts * ts; ++i) {
            int64_t px = x0 + i % ts, py = y0 + i / ts;
            x[i] = static_cast<T>(px) + T(0.5);
            y[i] = static_cast<T>(py) + T(0.5);
            inside[i] = (px < p.width && py < p.height) ? T(1) : T(0);
        }
    }
    // offset of pixel i in an [I,H,W] image, or -1 outside
    int64_t at(const Plan& p, int64_t i) const {
        int64_t px = x0 + i % p.tile_size, py = y0 + i / p.tile_size;
        return (px < p.width && py < p.height) ? (img * p.height + py) * p.width + px : -1;
    }
};

// Per-thread working rows of one tile (np pixels each).
template <typename T> struct Scratch {
    TilePixels<T> pix;
    std::vector<T> trans, live, stop, w, rows;
};

// Per splat, what decides cheaply that it blends into none of a tile's pixels: sigma >= lmin |p - mean|^2 / 2
// (lmin = smallest eigenvalue of the conic), and alpha >= 1/255 needs sigma <= log(255 opacity) = reach.
template <typename T> struct Reach {
    std::vector<T> lmin, reach;
    Reach(int64_t n, const T* conics, const T* opacities) : lmin(n), reach(n) {
        for (int64_t g = 0; g < n; ++g) {
            const T a = conics[3 * g], b = conics[3 * g + 1], c = conics[3 * g + 2], h = T(0.5) * (a - c);
            lmin[g] = T(0.5) * (a + c) - std::sqrt(h * h + b * b);
            reach[g] = opacities[g] >= T(kMinAlpha) ? std::log(opacities[g] / T(kMinAlpha)) : T(-1);
        }
    }
    // true when splat g (mean mx, my) cannot reach alpha 1/255 at any pixel centre of the tile
    bool misses(int64_t g, T mx, T my, const TilePixels<T>& pix, int64_t ts) const {
        const T x0 = T(pix.x0) + T(0.5), x1 = T(pix.x0 + ts) - T(0.5);
        const T y0 = T(pix.y0) + T(0.5), y1 = T(pix.y0 + ts) - T(0.5);
        const T dx = mx < x0 ? x0 - mx : (mx > x1 ? mx - x1 : T(0));
        const T dy = my < y0 ? y0 - my : (my > y1 ? my - y1 : T(0));
        return T(0.5) * lmin[g] * (dx * dx + dy * dy) > reach[g];
    }
};

// Blend weights of splat g at the tile's pixels: w (0 where not blended), updates trans / live / stop.
// Returns whether any pixel of the tile is still live.
template <typename T>
inline bool blend_step(const T* px, const T* py, int64_t np, T mx, T my, T a, T b, T c, T op, T pos, T* trans,
                       T* live, T* stop, T* w) {
    T any = 0;
#pragma omp simd reduction(+ : any)
    for (int64_t i = 0; i < np; ++i) {
        T dx = px[i] - mx, dy = py[i] - my;
        T sigma = T(0.5) * (a * dx * dx + c * dy * dy) + b * dx * dy;
        T raw = op * Exp<T>::eval(-sigma);
        T alpha = raw < T(kMaxAlpha) ? raw : T(kMaxAlpha);
        T next = trans[i] * (T(1) - alpha);
        bool use = (live[i] != T(0)) & (alpha >= T(kMinAlpha));
        bool stops = use & (next <= T(kMinTransmittance));
        bool blend = use & !stops;
        w[i] = blend ? alpha * trans[i] : T(0);
        live[i] = stops ? T(0) : live[i];
        trans[i] = blend ? next : trans[i];
        stop[i] = blend ? pos : stop[i];
        any += live[i];
    }
    return any != T(0);
}

template <typename T>
void forward(const Plan& plan, const T* means2d, const T* conics, const T* opacities, const T* colors, int64_t d,
             int64_t n_splats, T* out, int32_t* last, int n_threads) {
    const int64_t np = plan.tile_size * plan.tile_size, ch = d + 1;
    std::vector<Scratch<T>> scratch(n_threads);
    const Reach<T> reach(n_splats, conics, opacities);
    for_tiles(plan.n_tiles, n_threads, [&](int64_t tile, int worker) {
        const int64_t start = plan.offsets[tile], count = plan.counts[tile];
        if (count == 0) return;
        Scratch<T>& s = scratch[worker];
        s.pix.set(plan, tile);
        s.trans.assign(np, T(1));
        s.live = s.pix.inside;
        s.stop.assign(np, T(0));
        s.w.resize(np);
        s.rows.assign(np * ch, T(0));  // channel-major sums: D colours, then alpha
        T *trans = s.trans.data(), *live = s.live.data(), *stop = s.stop.data(), *w = s.w.data();
        T* rows = s.rows.data();
        for (int64_t k = 0; k < count; ++k) {
            const int64_t g = plan.splat_ids[start + k];
            if (reach.misses(g, means2d[2 * g], means2d[2 * g + 1], s.pix, plan.tile_size)) continue;
            bool alive = blend_step(s.pix.x.data(), s.pix.y.data(), np, means2d[2 * g], means2d[2 * g + 1],
                                    conics[3 * g], conics[3 * g + 1], conics[3 * g + 2], opacities[g],
                                    static_cast<T>(k + 1), trans, live, stop, w);
            for (int64_t j = 0; j < d; ++j) {
                const T col = colors[g * d + j];
                T* row = rows + j * np;
                for (int64_t i = 0; i < np; ++i) row[i] += w[i] * col;
            }
            T* arow = rows + d * np;
            for (int64_t i = 0; i < np; ++i) arow[i] += w[i];
            if (!alive) break;
        }
        for (int64_t i = 0; i < np; ++i) {
            int64_t o = s.pix.at(plan, i);
            if (o < 0) continue;
            for (int64_t j = 0; j < ch; ++j) out[o * ch + j] = rows[j * np + i];
            last[o] = static_cast<int32_t>(stop[i]);
        }
    });
}

// Gradients wrt (means2d, conics, opacities, colours) as rows [S, 6 + D] of
// (mean x, mean y, conic a, b, c, opacity, colours), from grad_out and the forward's out / last ([I,H,W,D+1], [I,H,W]).
template <typename T>
void backward(const Plan& plan, const T* means2d, const T* conics, const T* opacities, const T* colors, int64_t d,
              const T* out, const int32_t* last, const T* grad_out, int64_t n_splats, T* grads, int n_threads) {
    const int64_t np = plan.tile_size * plan.tile_size, ch = d + 1, gw = 6 + d;
    std::vector<std::vector<T>> partial(n_threads);
    std::vector<Scratch<T>> scratch(n_threads);
    const Reach<T> reach(n_splats, conics, opacities);
    for_tiles(plan.n_tiles, n_threads, [&](int64_t tile, int worker) {
        const int64_t start = plan.offsets[tile], count = plan.counts[tile];
        if (count == 0) return;
        std::vector<T>& acc = partial[worker];
        if (acc.empty()) acc.assign(n_splats * gw, T(0));
        Scratch<T>& s = scratch[worker];
        s.pix.set(plan, tile);
        s.trans.assign(np, T(1));
        s.live.resize(np);     // the last list position each pixel blended (1-based)
        s.stop.assign(np, T(0));  // running sum of w v in front of the current splat
        s.w.resize(np);
        s.rows.assign(np * (ch + 2), T(0));  // grad rows [ch][np], then total [np], then v [np]
        T *trans = s.trans.data(), *lastpos = s.live.data(), *prefix = s.stop.data(), *w = s.w.data();
        T *g = s.rows.data(), *total = g + ch * np, *v = total + np;
        int64_t depth = 0;
        for (int64_t i = 0; i < np; ++i) {
            int64_t o = s.pix.at(plan, i);
            lastpos[i] = o < 0 ? T(0) : static_cast<T>(last[o]);
            if (o < 0) continue;
            depth = std::max<int64_t>(depth, last[o]);
            T tot = 0;
            for (int64_t j = 0; j < ch; ++j) {
                g[j * np + i] = grad_out[o * ch + j];
                tot += grad_out[o * ch + j] * out[o * ch + j];
            }
            total[i] = tot;
        }
        const T *px = s.pix.x.data(), *py = s.pix.y.data();
        for (int64_t k = 0; k < depth; ++k) {
            const int64_t sid = plan.splat_ids[start + k];
            const T mx = means2d[2 * sid], my = means2d[2 * sid + 1];
            if (reach.misses(sid, mx, my, s.pix, plan.tile_size)) continue;
            const T a = conics[3 * sid], b = conics[3 * sid + 1], c = conics[3 * sid + 2], op = opacities[sid];
            const T pos = static_cast<T>(k);
            const T* col = colors + sid * d;
            std::memcpy(v, g + d * np, np * sizeof(T));
            for (int64_t j = 0; j < d; ++j) {
                const T cj = col[j];
                const T* gj = g + j * np;
                for (int64_t i = 0; i < np; ++i) v[i] += cj * gj[i];
            }
            T s_mx = 0, s_my = 0, s_a = 0, s_b = 0, s_c = 0, s_op = 0;
#pragma omp simd reduction(+ : s_mx, s_my, s_a, s_b, s_c, s_op)
            for (int64_t i = 0; i < np; ++i) {
                T dx = px[i] - mx, dy = py[i] - my;
                T sigma = T(0.5) * (a * dx * dx + c * dy * dy) + b * dx * dy;
                T e = Exp<T>::eval(-sigma);
                T raw = op * e;
                T alpha = raw < T(kMaxAlpha) ? raw : T(kMaxAlpha);
                bool blend = (pos < lastpos[i]) & (alpha >= T(kMinAlpha));
                T wi = blend ? alpha * trans[i] : T(0);
                T wv = wi * v[i];
                prefix[i] += wv;
                // dL/dalpha = T v - (sum of w v behind) / (1 - alpha); no gradient through the 0.99 clamp
                T dalpha = trans[i] * v[i] - (total[i] - prefix[i]) / (T(1) - alpha);
                T draw = (blend & (raw < T(kMaxAlpha))) ? dalpha : T(0);
                T dsigma = -draw * raw;
                s_op += draw * e;
                s_mx -= dsigma * (a * dx + b * dy);
                s_my -= dsigma * (b * dx + c * dy);
                s_a += dsigma * T(0.5) * dx * dx;
                s_b += dsigma * dx * dy;
                s_c += dsigma * T(0.5) * dy * dy;
                trans[i] = blend ? trans[i] * (T(1) - alpha) : trans[i];
                w[i] = wi;
            }
            T* out_row = acc.data() + sid * gw;
            out_row[0] += s_mx, out_row[1] += s_my, out_row[2] += s_a, out_row[3] += s_b, out_row[4] += s_c;
            out_row[5] += s_op;
            for (int64_t j = 0; j < d; ++j) {
                const T* gj = g + j * np;
                T sum = 0;
#pragma omp simd reduction(+ : sum)
                for (int64_t i = 0; i < np; ++i) sum += w[i] * gj[i];
                out_row[6 + j] += sum;
            }
        }
    });
    std::fill(grads, grads + n_splats * gw, T(0));
    for (auto& part : partial) {
        if (part.empty()) continue;
        for (int64_t i = 0; i < n_splats * gw; ++i) grads[i] += part[i];
    }
}

// Fills the (tile, splat) intersection lists by counting sort: splats arrive front to back (order [V] flat splat
// ids), each covering the tile rectangle [x0,x1) x [y0,y1) of its image; cursor [n_tiles] holds each tile's start
// and is advanced. Writes tile ids and splat ids [M], sorted by tile and by depth inside each tile.
void bin_fill(int64_t n_visible, const int64_t* order, const int64_t* rect, int64_t splats_per_image, int64_t tiles_x,
              int64_t tiles_per_image, int64_t* cursor, int64_t* isect_tiles, int64_t* isect_splats) {
    for (int64_t v = 0; v < n_visible; ++v) {
        const int64_t sid = order[v], base = (sid / splats_per_image) * tiles_per_image;
        const int64_t x0 = rect[4 * v], x1 = rect[4 * v + 1], y0 = rect[4 * v + 2], y1 = rect[4 * v + 3];
        for (int64_t ty = y0; ty < y1; ++ty) {
            for (int64_t tx = x0; tx < x1; ++tx) {
                const int64_t tile = base + ty * tiles_x + tx, at = cursor[tile]++;
                isect_tiles[at] = tile;
                isect_splats[at] = sid;
            }
        }
    }
}

// World covariances R S S^T R^T [N,9] from quaternions [N,4] (wxyz, normalised here) and scales [N,3]; rot [N,9]
// keeps R for the backward.
template <typename T> inline void quat_rotation(const T* q, T* R, T& norm) {
    norm = std::max(std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), T(1e-12));
    const T w = q[0] / norm, x = q[1] / norm, y = q[2] / norm, z = q[3] / norm;
    const T r[9] = {1 - 2 * (y * y + z * z), 2 * (x * y - w * z),     2 * (x * z + w * y),
                    2 * (x * y + w * z),     1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                    2 * (x * z - w * y),     2 * (y * z + w * x),     1 - 2 * (x * x + y * y)};
    std::copy(r, r + 9, R);
}

template <typename T> void covariances(int64_t n, const T* quats, const T* scales, T* covars) {
    for (int64_t i = 0; i < n; ++i) {
        T R[9], norm;
        quat_rotation(quats + 4 * i, R, norm);
        const T* s = scales + 3 * i;
        for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) {
                T sum = 0;
                for (int k = 0; k < 3; ++k) sum += R[3 * a + k] * s[k] * s[k] * R[3 * b + k];
                covars[9 * i + 3 * a + b] = sum;
            }
    }
}

template <typename T>
void covariances_backward(int64_t n, const T* quats, const T* scales, const T* g_cov, T* d_quats, T* d_scales) {
    for (int64_t i = 0; i < n; ++i) {
        T R[9], norm;
        quat_rotation(quats + 4 * i, R, norm);
        const T* s = scales + 3 * i;
        const T* g = g_cov + 9 * i;
        // covar = M M^T with M = R diag(s): dM = (G + G^T) M
        T gR[9];
        for (int a = 0; a < 3; ++a)
            for (int k = 0; k < 3; ++k) {
                T gm = 0;
                for (int b = 0; b < 3; ++b) gm += (g[3 * a + b] + g[3 * b + a]) * R[3 * b + k] * s[k];
                gR[3 * a + k] = gm * s[k];
            }
        for (int k = 0; k < 3; ++k) {
            T gs = 0;
            for (int a = 0; a < 3; ++a) {
                T gm = 0;
                for (int b = 0; b < 3; ++b) gm += (g[3 * a + b] + g[3 * b + a]) * R[3 * b + k] * s[k];
                gs += gm * R[3 * a + k];
            }
            d_scales[3 * i + k] = gs;
        }
        const T* q = quats + 4 * i;
        const T w = q[0] / norm, x = q[1] / norm, y = q[2] / norm, z = q[3] / norm;
        const T gn[4] = {
            2 * (-z * gR[1] + y * gR[2] + z * gR[3] - x * gR[5] - y * gR[6] + x * gR[7]),
            2 * (y * gR[1] + z * gR[2] + y * gR[3] - 2 * x * gR[4] - w * gR[5] + z * gR[6] + w * gR[7] - 2 * x * gR[8]),
            2 * (-2 * y * gR[0] + x * gR[1] + w * gR[2] + x * gR[3] + z * gR[5] - w * gR[6] + z * gR[7] - 2 * y * gR[8]),
            2 * (-2 * z * gR[0] - w * gR[1] + x * gR[2] + w * gR[3] - 2 * z * gR[4] + y * gR[5] + x * gR[6] + y * gR[7])};
        const T un[4] = {w, x, y, z};
        const T dot = gn[0] * w + gn[1] * x + gn[2] * y + gn[3] * z;
        for (int k = 0; k < 4; ++k) d_quats[4 * i + k] = (gn[k] - un[k] * dot) / norm;
    }
}

// EWA projection of N Gaussians into C pinhole cameras, as _gaussians_project.project_gaussians (gsplat's rules).
struct Cameras {
    int64_t n_cams, n, width, height;
    const double* params;  // [C, 16]: R (row-major 9), t (3), fx, fy, cx, cy
    double eps2d, near_plane, far_plane, radius_clip;
    bool antialiased;
};

template <typename T> struct ProjectOut {
    T *means2d, *depths, *conics, *opacities;  // [C,N,2], [C,N], [C,N,3], [C,N]
    int32_t* radii;                            // [C,N,2]
};

template <typename T> struct Splat2D {
    bool keep;
    T x, y, z, u, v, t0[3], t1[3], c00, c01, c11, det, det_orig, comp;
    T mx, my, rx, ry, opac;
};

// Everything the forward computes for camera c and Gaussian i (covariance cov [9] row-major).
template <typename T>
Splat2D<T> project_one(const Cameras& cam, int64_t c, const T* mean, const T* cov, T opacity) {
    const double* P = cam.params + 16 * c;
    const T r[9] = {T(P[0]), T(P[1]), T(P[2]), T(P[3]), T(P[4]), T(P[5]), T(P[6]), T(P[7]), T(P[8])};
    const T fx = T(P[12]), fy = T(P[13]), cx = T(P[14]), cy = T(P[15]);
    Splat2D<T> s{};
    s.x = r[0] * mean[0] + r[1] * mean[1] + r[2] * mean[2] + T(P[9]);
    s.y = r[3] * mean[0] + r[4] * mean[1] + r[5] * mean[2] + T(P[10]);
    T z = r[6] * mean[0] + r[7] * mean[1] + r[8] * mean[2] + T(P[11]);
    const bool in_depth = z >= T(cam.near_plane) && z <= T(cam.far_plane);
    s.z = in_depth ? z : T(1);
    const T W = T(cam.width), H = T(cam.height);
    const T tan_x = T(0.5) * W / fx, tan_y = T(0.5) * H / fy;
    s.u = std::min(std::max(s.x / s.z, -(cx / fx + T(0.3) * tan_x)), (W - cx) / fx + T(0.3) * tan_x);
    s.v = std::min(std::max(s.y / s.z, -(cy / fy + T(0.3) * tan_y)), (H - cy) / fy + T(0.3) * tan_y);
    for (int k = 0; k < 3; ++k) {
        s.t0[k] = (fx / s.z) * (r[k] - s.u * r[6 + k]);
        s.t1[k] = (fy / s.z) * (r[3 + k] - s.v * r[6 + k]);
    }
    T s0[3], s1[3];
    for (int k = 0; k < 3; ++k) {
        s0[k] = cov[3 * k] * s.t0[0] + cov[3 * k + 1] * s.t0[1] + cov[3 * k + 2] * s.t0[2];
        s1[k] = cov[3 * k] * s.t1[0] + cov[3 * k + 1] * s.t1[1] + cov[3 * k + 2] * s.t1[2];
    }
    s.c00 = s.t0[0] * s0[0] + s.t0[1] * s0[1] + s.t0[2] * s0[2];
    s.c01 = s.t0[0] * s1[0] + s.t0[1] * s1[1] + s.t0[2] * s1[2];
    s.c11 = s.t1[0] * s1[0] + s.t1[1] * s1[1] + s.t1[2] * s1[2];
    s.det_orig = s.c00 * s.c11 - s.c01 * s.c01;
    const T a = s.c00 + T(cam.eps2d), b = s.c11 + T(cam.eps2d);
    s.det = std::max(a * b - s.c01 * s.c01, T(1e-10));
    s.comp = cam.antialiased ? std::sqrt(std::max(s.det_orig / s.det, T(0.005 * 0.005))) : T(1);
    s.opac = opacity * s.comp;
    s.mx = fx * s.x / s.z + cx;
    s.my = fy * s.y / s.z + cy;
    const T op = s.opac;
    const T extend = std::min(std::sqrt(T(2) * std::log(std::max(op, T(kMinAlpha)) / T(kMinAlpha))), T(3.33));
    s.rx = std::ceil(extend * std::sqrt(a));
    s.ry = std::ceil(extend * std::sqrt(b));
    s.keep = in_depth && op >= T(kMinAlpha) && (s.rx > T(cam.radius_clip) || s.ry > T(cam.radius_clip)) &&
             s.mx + s.rx > 0 && s.mx - s.rx < W && s.my + s.ry > 0 && s.my - s.ry < H;
    return s;
}

template <typename T>
void project(const Cameras& cam, const T* means, const T* covars, const T* opacities, ProjectOut<T> out) {
    for (int64_t c = 0; c < cam.n_cams; ++c) {
        for (int64_t i = 0; i < cam.n; ++i) {
            const Splat2D<T> s = project_one(cam, c, means + 3 * i, covars + 9 * i, opacities[i]);
            const int64_t o = c * cam.n + i;
            const T a = s.c00 + T(cam.eps2d), b = s.c11 + T(cam.eps2d);
            out.means2d[2 * o] = s.keep ? s.mx : T(0);
            out.means2d[2 * o + 1] = s.keep ? s.my : T(0);
            out.depths[o] = s.keep ? s.z : T(0);
            out.conics[3 * o] = s.keep ? b / s.det : T(0);
            out.conics[3 * o + 1] = s.keep ? -s.c01 / s.det : T(0);
            out.conics[3 * o + 2] = s.keep ? a / s.det : T(0);
            out.opacities[o] = s.keep ? s.opac : T(0);
            out.radii[2 * o] = s.keep ? static_cast<int32_t>(s.rx) : 0;
            out.radii[2 * o + 1] = s.keep ? static_cast<int32_t>(s.ry) : 0;
        }
    }
}

// Pulls grads of (means2d, depths, conics, opacities) back to means [N,3], covars [N,9] and opacities [N]
// (zeroed here, summed over cameras); culled entries get none.
template <typename T>
void project_backward(const Cameras& cam, const T* means, const T* covars, const T* opacities, const T* g_means2d,
                      const T* g_depths, const T* g_conics, const T* g_opac, T* d_means, T* d_covars, T* d_opac) {
    std::fill(d_means, d_means + 3 * cam.n, T(0));
    std::fill(d_covars, d_covars + 9 * cam.n, T(0));
    std::fill(d_opac, d_opac + cam.n, T(0));
    for (int64_t c = 0; c < cam.n_cams; ++c) {
        const double* P = cam.params + 16 * c;
        const T r[9] = {T(P[0]), T(P[1]), T(P[2]), T(P[3]), T(P[4]), T(P[5]), T(P[6]), T(P[7]), T(P[8])};
        const T fx = T(P[12]), fy = T(P[13]), cx = T(P[14]), cy = T(P[15]);
        const T W = T(cam.width), H = T(cam.height);
        const T tan_x = T(0.5) * W / fx, tan_y = T(0.5) * H / fy;
        const T ulo = -(cx / fx + T(0.3) * tan_x), uhi = (W - cx) / fx + T(0.3) * tan_x;
        const T vlo = -(cy / fy + T(0.3) * tan_y), vhi = (H - cy) / fy + T(0.3) * tan_y;
        for (int64_t i = 0; i < cam.n; ++i) {
            const T* cov = covars + 9 * i;
            const Splat2D<T> s = project_one(cam, c, means + 3 * i, cov, opacities[i]);
            if (!s.keep) continue;
            const int64_t o = c * cam.n + i;
            const T a = s.c00 + T(cam.eps2d), b = s.c11 + T(cam.eps2d), det = s.det, z = s.z;
            // conic = (b, -c01, a) / det
            const T gq0 = g_conics[3 * o], gq1 = g_conics[3 * o + 1], gq2 = g_conics[3 * o + 2];
            T g_det = -(gq0 * b - gq1 * s.c01 + gq2 * a) / (det * det);
            T g_a = gq2 / det, g_b = gq0 / det, g_c01 = -gq1 / det, g_det_orig = 0;
            const T go = g_opac[o];
            d_opac[i] += go * s.comp;
            if (cam.antialiased && s.det_orig / det > T(0.005 * 0.005)) {
                const T g_ratio = go * opacities[i] * T(0.5) / s.comp;
                g_det_orig = g_ratio / det;
                g_det -= g_ratio * s.det_orig / (det * det);
            }
            if (a * b - s.c01 * s.c01 > T(1e-10)) {
                g_a += g_det * b;
                g_b += g_det * a;
                g_c01 -= T(2) * g_det * s.c01;
            }
            const T g_c00 = g_a + g_det_orig * s.c11, g_c11 = g_b + g_det_orig * s.c00;
            g_c01 -= T(2) * g_det_orig * s.c01;
            // c00 = t0' S t0, c01 = t0' S t1, c11 = t1' S t1
            T g_t0[3], g_t1[3];
            for (int k = 0; k < 3; ++k) {
                T st0 = 0, st1 = 0, sTt0 = 0, sTt1 = 0;
                for (int m = 0; m < 3; ++m) {
                    st0 += cov[3 * k + m] * s.t0[m], st1 += cov[3 * k + m] * s.t1[m];
                    sTt0 += cov[3 * m + k] * s.t0[m], sTt1 += cov[3 * m + k] * s.t1[m];
                }
                g_t0[k] = g_c00 * (st0 + sTt0) + g_c01 * st1;
                g_t1[k] = g_c11 * (st1 + sTt1) + g_c01 * sTt0;
                for (int m = 0; m < 3; ++m)
                    d_covars[9 * i + 3 * k + m] += g_c00 * s.t0[k] * s.t0[m] + g_c01 * s.t0[k] * s.t1[m] +
                                                    g_c11 * s.t1[k] * s.t1[m];
            }
            // t0 = fx / z (r0 - u r2), t1 = fy / z (r1 - v r2)
            T g_z = g_depths[o], g_u = 0, g_v = 0;
            for (int k = 0; k < 3; ++k) {
                g_z -= (g_t0[k] * s.t0[k] + g_t1[k] * s.t1[k]) / z;
                g_u -= fx / z * g_t0[k] * r[6 + k];
                g_v -= fy / z * g_t1[k] * r[6 + k];
            }
            const T gmx = g_means2d[2 * o], gmy = g_means2d[2 * o + 1];
            T g_x = gmx * fx / z, g_y = gmy * fy / z;
            g_z -= (gmx * fx * s.x + gmy * fy * s.y) / (z * z);
            const T uu = s.x / z, vv = s.y / z;
            if (uu > ulo && uu < uhi) g_x += g_u / z, g_z -= g_u * uu / z;
            if (vv > vlo && vv < vhi) g_y += g_v / z, g_z -= g_v * vv / z;
            for (int k = 0; k < 3; ++k) d_means[3 * i + k] += r[k] * g_x + r[3 + k] * g_y + r[6 + k] * g_z;
        }
    }
}

Plan make_plan(const int64_t* dims, const int64_t* offsets, const int64_t* counts, const int64_t* splat_ids) {
    return Plan{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], offsets, counts, splat_ids};
}

}  // namespace

// C entry points (ctypes). dims = [n_tiles, tile_size, tiles_x, tiles_y, width, height].
extern "C" {

int gen3d_composite_abi() { return 2; }

void gen3d_bin_fill(int64_t n_visible, const int64_t* order, const int64_t* rect, int64_t splats_per_image,
                    int64_t tiles_x, int64_t tiles_per_image, int64_t* cursor, int64_t* isect_tiles,
                    int64_t* isect_splats) {
    bin_fill(n_visible, order, rect, splats_per_image, tiles_x, tiles_per_image, cursor, isect_tiles, isect_splats);
}

#define GEN3D_ENTRY(T, suffix)                                                                                    \
    void gen3d_composite_forward_##suffix(const int64_t* dims, const int64_t* offsets, const int64_t* counts,     \
                                          const int64_t* splat_ids, const T* means2d, const T* conics,             \
                                          const T* opacities, const T* colors, int64_t d, int64_t n_splats,       \
                                          T* out, int32_t* last, int n_threads) {                                 \
        forward<T>(make_plan(dims, offsets, counts, splat_ids), means2d, conics, opacities, colors, d, n_splats,  \
                   out, last, n_threads);                                                                         \
    }                                                                                                             \
    void gen3d_composite_backward_##suffix(const int64_t* dims, const int64_t* offsets, const int64_t* counts,    \
                                           const int64_t* splat_ids, const T* means2d, const T* conics,            \
                                           const T* opacities, const T* colors, int64_t d, const T* out,           \
                                           const int32_t* last, const T* grad_out, int64_t n_splats, T* grads,     \
                                           int n_threads) {                                                       \
        backward<T>(make_plan(dims, offsets, counts, splat_ids), means2d, conics, opacities, colors, d, out, last, \
                    grad_out, n_splats, grads, n_threads);                                                        \
    }

GEN3D_ENTRY(float, f32)
GEN3D_ENTRY(double, f64)

// settings = [eps2d, near, far, radius_clip, antialiased]; sizes = [C, N, width, height]
#define GEN3D_PROJECT(T, suffix)                                                                                  \
    void gen3d_project_##suffix(const int64_t* sizes, const double* params, const double* settings,               \
                                const T* means, const T* covars, const T* opacities, T* means2d, T* depths,       \
                                T* conics, T* opac, int32_t* radii) {                                            \
        Cameras cam{sizes[0], sizes[1], sizes[2], sizes[3], params, settings[0], settings[1], settings[2],        \
                    settings[3], settings[4] != 0};                                                              \
        project<T>(cam, means, covars, opacities, ProjectOut<T>{means2d, depths, conics, opac, radii});          \
    }                                                                                                             \
    void gen3d_project_backward_##suffix(const int64_t* sizes, const double* params, const double* settings,      \
                                         const T* means, const T* covars, const T* opacities, const T* g_means2d, \
                                         const T* g_depths, const T* g_conics, const T* g_opac, T* d_means,       \
                                         T* d_covars, T* d_opac) {                                               \
        Cameras cam{sizes[0], sizes[1], sizes[2], sizes[3], params, settings[0], settings[1], settings[2],        \
                    settings[3], settings[4] != 0};                                                              \
        project_backward<T>(cam, means, covars, opacities, g_means2d, g_depths, g_conics, g_opac, d_means,       \
                            d_covars, d_opac);                                                                   \
    }

GEN3D_PROJECT(float, f32)
GEN3D_PROJECT(double, f64)

#define GEN3D_COVAR(T, suffix)                                                                                    \
    void gen3d_covariances_##suffix(int64_t n, const T* quats, const T* scales, T* covars) {                      \
        covariances<T>(n, quats, scales, covars);                                                                 \
    }                                                                                                             \
    void gen3d_covariances_backward_##suffix(int64_t n, const T* quats, const T* scales, const T* g_cov,          \
                                             T* d_quats, T* d_scales) {                                           \
        covariances_backward<T>(n, quats, scales, g_cov, d_quats, d_scales);                                      \
    }

GEN3D_COVAR(float, f32)
GEN3D_COVAR(double, f64)

}  // extern "C"
