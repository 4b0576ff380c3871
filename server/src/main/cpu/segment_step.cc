// RAdam's rectified step, or Adam's (AdamW's), over one piece of a tensor whose gradient and
// weights sit in a segment shared with the trainer (engine/cpu/SegmentStepKernel.java), in one
// pass: it reads the gradient and the trainer's copy of the weights from the segment, checks them,
// writes the new weights and state into spare arrays (the caller swaps them in only once every
// piece has applied) and the new weights back into the segment, with their CRC-32C, and sums the
// gradient's squares. Each element gets the bits of RAdamLoops.rectified or AdamLoops.adam, and
// the sums those of JavaLoops.addSquares: the same operations in the same order, each rounded once
// (-ffp-contract=off; the Java's Math.fma are explicit fmas here).
//
// The pass is bound by memory traffic, so the spare arrays are written with non-temporal stores:
// a normal store first reads its line into the cache (twice the traffic for those arrays) and
// evicts inputs still to come; the segment's weights, just read, take normal stores. One variant
// for AVX-512F, one for AVX2+FMA, one for any x86-64, chosen when the library loads; all three
// give the same bits.
#include <jni.h>

#include "float_bits.h"
#include "jni_arrays.h"

// GCC 12 takes the AVX-512 intrinsics' deliberately undefined pass-through operands for
// uninitialized variables.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define OSC_EXPORT extern "C" __attribute__((visibility("default"))) JNIEXPORT
#define OSC_INLINE inline __attribute__((always_inline))
#define OSC_AVX2 __attribute__((target("avx2,fma,sse4.2")))
#define OSC_AVX512 __attribute__((target("avx512f,sse4.2")))
#define OSC_CRC __attribute__((target("avx2,sse4.2")))

namespace {

// SegmentStepKernel's results.
constexpr jint APPLIED = 0;
constexpr jint EDITED = 1;
constexpr jint NON_FINITE = 2;

// SegmentStepKernel's flag bits.
constexpr jint DECOUPLED = 1;
constexpr jint COUPLED = 2;
constexpr jint LERP = 4;
constexpr jint ADAM = 8;  // Adam's denominator, fma(sqrt(v), inv_sqrt_bias_correction2, eps)

constexpr int SCALARS = 10;
constexpr int SUM_LANES = 8;
constexpr uint32_t EXPONENT = 0x7f800000u;  // all ones in a float's exponent: Inf or NaN
// How far ahead the vector loops ask for their five input streams: the hardware prefetchers
// alone fall behind with this many streams (about a tenth slower).
constexpr ptrdiff_t PREFETCH_BYTES = 1024;

enum Isa { PORTABLE = 0, AVX2_FMA = 1, AVX512F = 2 };

// The call's scalars and flags, decoded once.
struct Step {
    float grad_scale;
    float decay_factor;
    float weight_decay;
    float beta1;
    float one_minus_beta1;
    float beta2;
    float one_minus_beta2;
    float neg_step;
    float eps;
    float lerp_complement;  // 1 − one_minus_beta1, lerp's factor in its second form
    float inv_sqrt_bias_correction2;  // Adam's; RAdam adds eps to sqrt(v) itself
    bool decoupled;
    bool coupled;
    bool lerp;
    bool lerp_from_m;  // |one_minus_beta1| < 0.5: lerp's first form, m + w·(g − m)
    bool adam;
};

// One piece: element k of each array is element from + k of the tensor's block.
struct Piece {
    const char* gradient;  // in the segment
    char* weights;         // in the segment
    const float* theta;
    const float* m;
    const float* v;
    float* theta_out;
    float* m_out;
    float* v_out;
    ptrdiff_t n;
};

using optsidecar::bits_of;
using optsidecar::float_of;

typedef uint32_t SegmentWord __attribute__((aligned(1), may_alias));

// One read of a float's bits from the segment, which the trainer may be writing meanwhile:
// volatile, so that the compiler cannot read it again and the value checked is the value used.
OSC_INLINE uint32_t read_once(const char* at) {
    return *reinterpret_cast<const volatile SegmentWord*>(at);
}

// Element k: computes and writes it and returns APPLIED, or returns why not, writing nothing.
// Inlined into each variant, so that fmaf is its FMA instruction where the variant has one.
OSC_INLINE jint step_one(const Step& s, const Piece& p, ptrdiff_t k, double* sums) {
    uint32_t w = read_once(p.weights + 4 * k);
    uint32_t g_bits = read_once(p.gradient + 4 * k);
    float theta = p.theta[k];
    if (w != bits_of(theta)) return EDITED;
    if ((g_bits & EXPONENT) == EXPONENT) return NON_FINITE;
    float g = float_of(g_bits);
    float pi = s.decoupled ? theta * s.decay_factor : theta;
    float gi = s.coupled ? s.grad_scale * g + s.weight_decay * pi : s.grad_scale * g;
    float m = p.m[k];
    float mi;
    if (!s.lerp) {
        mi = fmaf(s.one_minus_beta1, gi, m * s.beta1);
    } else if (s.lerp_from_m) {
        mi = m + s.one_minus_beta1 * (gi - m);
    } else {
        mi = gi - (gi - m) * s.lerp_complement;
    }
    float vi = fmaf(s.one_minus_beta2 * gi, gi, p.v[k] * s.beta2);
    float denominator = s.adam ? fmaf(sqrtf(vi), s.inv_sqrt_bias_correction2, s.eps) : sqrtf(vi) + s.eps;
    float t = fmaf(s.neg_step, mi / denominator, pi);
    p.theta_out[k] = t;
    p.m_out[k] = mi;
    p.v_out[k] = vi;
    memcpy(p.weights + 4 * k, &t, sizeof t);
    double gd = g;
    sums[k % SUM_LANES] = sums[k % SUM_LANES] + gd * gd;
    return APPLIED;
}

// A failure at element k: the weights written before it go back to theta's (they equalled it
// bitwise), so the segment is as the call found it.
jint undo(const Piece& p, ptrdiff_t k, jint why) {
    memcpy(p.weights, p.theta, sizeof(float) * k);
    return why;
}

// The first element of a vector that fails decides why: edited before non-finite at the same one.
inline jint first_failure(unsigned edited, unsigned non_finite) {
    return (edited >> __builtin_ctz(edited | non_finite)) & 1u ? EDITED : NON_FINITE;
}

// How many elements to take one at a time before out + k is aligned to `alignment` bytes (at
// most n); none if it never will be.
inline ptrdiff_t peel_count(const float* out, ptrdiff_t n, uintptr_t alignment) {
    uintptr_t address = reinterpret_cast<uintptr_t>(out);
    if (address % sizeof(float) != 0) return 0;
    ptrdiff_t peel = (ptrdiff_t)(((alignment - address % alignment) % alignment) / sizeof(float));
    return peel < n ? peel : n;
}

inline bool aligned(const float* at, uintptr_t alignment) {
    return reinterpret_cast<uintptr_t>(at) % alignment == 0;
}

jint step_portable(const Step& s, const Piece& p, double* sums) {
    for (ptrdiff_t k = 0; k < p.n; k++) {
        jint why = step_one(s, p, k, sums);
        if (why != APPLIED) return undo(p, k, why);
    }
    return APPLIED;
}

// The vector loops keep the eight sums rotated: register lane j holds sums[(start + j) mod 8],
// where start is the first element they take, so each lane still adds its elements in order.
inline void rotate_in(const double* sums, ptrdiff_t start, double* rotated) {
    for (int j = 0; j < SUM_LANES; j++) rotated[j] = sums[(start + j) % SUM_LANES];
}

inline void rotate_out(const double* rotated, ptrdiff_t start, double* sums) {
    for (int j = 0; j < SUM_LANES; j++) sums[(start + j) % SUM_LANES] = rotated[j];
}

// Asks for the inputs' lines PREFETCH_BYTES past element k (a prefetch never faults).
OSC_INLINE void prefetch_inputs(const char* weights, const char* gradient, const float* theta, const float* m,
                                const float* v, ptrdiff_t k) {
    _mm_prefetch(weights + 4 * k + PREFETCH_BYTES, _MM_HINT_T0);
    _mm_prefetch(gradient + 4 * k + PREFETCH_BYTES, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(theta + k) + PREFETCH_BYTES, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(m + k) + PREFETCH_BYTES, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(v + k) + PREFETCH_BYTES, _MM_HINT_T0);
}

// The vector loops read the segment once into a register: the barrier stops the compiler from
// reading it again in place of the register (to spare one, or as an instruction's memory operand).
OSC_AVX512 OSC_INLINE void pin(__m512& x) {
    __asm__ volatile("" : "+v"(x));
}

OSC_AVX2 OSC_INLINE void pin(__m256& x) {
    __asm__ volatile("" : "+x"(x));
}

// The CRC-32C of the weights as they are written (the record a trainer keeps of them), with
// SSE4.2's crc32 instruction while the values are in registers: a chain of eight a vector, hidden
// behind the pass's memory traffic, where a pass of its own afterwards would read them again.
OSC_CRC OSC_INLINE uint64_t crc_of_element(uint64_t crc, const float* at) {
    uint32_t bits;
    memcpy(&bits, at, sizeof bits);
    return _mm_crc32_u32((uint32_t)crc, bits);
}

OSC_CRC OSC_INLINE uint64_t crc_of_vector(uint64_t crc, __m256i x) {
    __m128i low = _mm256_castsi256_si128(x);
    __m128i high = _mm256_extracti128_si256(x, 1);
    crc = _mm_crc32_u64(crc, (uint64_t)_mm_cvtsi128_si64(low));
    crc = _mm_crc32_u64(crc, (uint64_t)_mm_extract_epi64(low, 1));
    crc = _mm_crc32_u64(crc, (uint64_t)_mm_cvtsi128_si64(high));
    return _mm_crc32_u64(crc, (uint64_t)_mm_extract_epi64(high, 1));
}

OSC_AVX512 jint step_avx512(const Step& s, const Piece& p, double* sums, uint64_t& crc) {
    constexpr ptrdiff_t W = 16;
    const ptrdiff_t n = p.n;
    ptrdiff_t k = 0;
    for (ptrdiff_t peel = peel_count(p.theta_out, n, 64); k < peel; k++) {
        jint why = step_one(s, p, k, sums);
        if (why != APPLIED) return undo(p, k, why);
        crc = crc_of_element(crc, p.theta_out + k);
    }
    // Locals, not p's and s's fields: stores through the arrays could alias those for the compiler.
    const char* gradient = p.gradient;
    char* weights = p.weights;
    const float* theta_in = p.theta;
    const float* m_in = p.m;
    const float* v_in = p.v;
    float* theta_out = p.theta_out;
    float* m_out = p.m_out;
    float* v_out = p.v_out;
    const bool stream_theta = aligned(theta_out + k, 64);
    const bool stream_m = aligned(m_out + k, 64);
    const bool stream_v = aligned(v_out + k, 64);
    const bool decoupled = s.decoupled;
    const bool coupled = s.coupled;
    const bool lerp = s.lerp;
    const bool lerp_from_m = s.lerp_from_m;
    const __m512 grad_scale = _mm512_set1_ps(s.grad_scale);
    const __m512 decay_factor = _mm512_set1_ps(s.decay_factor);
    const __m512 weight_decay = _mm512_set1_ps(s.weight_decay);
    const __m512 beta1 = _mm512_set1_ps(s.beta1);
    const __m512 one_minus_beta1 = _mm512_set1_ps(s.one_minus_beta1);
    const __m512 lerp_complement = _mm512_set1_ps(s.lerp_complement);
    const __m512 beta2 = _mm512_set1_ps(s.beta2);
    const __m512 one_minus_beta2 = _mm512_set1_ps(s.one_minus_beta2);
    const __m512 neg_step = _mm512_set1_ps(s.neg_step);
    const __m512 eps = _mm512_set1_ps(s.eps);
    const __m512 inv_sqrt_bias_correction2 = _mm512_set1_ps(s.inv_sqrt_bias_correction2);
    const bool adam = s.adam;
    const __m512i exponent = _mm512_set1_epi32((int)EXPONENT);
    const ptrdiff_t start = k;
    double rotated[SUM_LANES];
    rotate_in(sums, start, rotated);
    __m512d squares = _mm512_loadu_pd(rotated);
    for (; k + W <= n; k += W) {
        prefetch_inputs(weights, gradient, theta_in, m_in, v_in, k);
        __m512 w = _mm512_loadu_ps(weights + 4 * k);
        pin(w);
        __m512 g = _mm512_loadu_ps(gradient + 4 * k);
        pin(g);
        __m512 theta = _mm512_loadu_ps(theta_in + k);
        __m512i g_bits = _mm512_castps_si512(g);
        unsigned edited = _mm512_cmpneq_epi32_mask(_mm512_castps_si512(w), _mm512_castps_si512(theta));
        unsigned non_finite = _mm512_cmpeq_epi32_mask(_mm512_and_si512(g_bits, exponent), exponent);
        if (__builtin_expect((edited | non_finite) != 0, 0)) {
            return undo(p, k, first_failure(edited, non_finite));
        }
        __m512 pi = decoupled ? _mm512_mul_ps(theta, decay_factor) : theta;
        __m512 gi = _mm512_mul_ps(grad_scale, g);
        if (coupled) gi = _mm512_add_ps(gi, _mm512_mul_ps(weight_decay, pi));
        __m512 m = _mm512_loadu_ps(m_in + k);
        __m512 mi;
        if (!lerp) {
            mi = _mm512_fmadd_ps(one_minus_beta1, gi, _mm512_mul_ps(m, beta1));
        } else if (lerp_from_m) {
            mi = _mm512_add_ps(m, _mm512_mul_ps(one_minus_beta1, _mm512_sub_ps(gi, m)));
        } else {
            mi = _mm512_sub_ps(gi, _mm512_mul_ps(_mm512_sub_ps(gi, m), lerp_complement));
        }
        __m512 v = _mm512_loadu_ps(v_in + k);
        __m512 vi = _mm512_fmadd_ps(_mm512_mul_ps(one_minus_beta2, gi), gi, _mm512_mul_ps(v, beta2));
        __m512 root = _mm512_sqrt_ps(vi);
        __m512 denominator = adam ? _mm512_fmadd_ps(root, inv_sqrt_bias_correction2, eps) : _mm512_add_ps(root, eps);
        __m512 t = _mm512_fmadd_ps(neg_step, _mm512_div_ps(mi, denominator), pi);
        if (stream_theta) _mm512_stream_ps(theta_out + k, t); else _mm512_storeu_ps(theta_out + k, t);
        if (stream_m) _mm512_stream_ps(m_out + k, mi); else _mm512_storeu_ps(m_out + k, mi);
        if (stream_v) _mm512_stream_ps(v_out + k, vi); else _mm512_storeu_ps(v_out + k, vi);
        _mm512_storeu_ps(weights + 4 * k, t);
        crc = crc_of_vector(crc, _mm512_castsi512_si256(_mm512_castps_si512(t)));
        crc = crc_of_vector(crc, _mm512_extracti64x4_epi64(_mm512_castps_si512(t), 1));
        // Elements k..k+7, then k+8..k+15: both halves fall on the same eight lanes, in order.
        __m512d low = _mm512_cvtps_pd(_mm512_castps512_ps256(g));
        __m512d high = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(g), 1)));
        squares = _mm512_add_pd(squares, _mm512_mul_pd(low, low));
        squares = _mm512_add_pd(squares, _mm512_mul_pd(high, high));
    }
    _mm512_storeu_pd(rotated, squares);
    rotate_out(rotated, start, sums);
    for (; k < n; k++) {
        jint why = step_one(s, p, k, sums);
        if (why != APPLIED) return undo(p, k, why);
        crc = crc_of_element(crc, p.theta_out + k);
    }
    return APPLIED;
}

OSC_AVX2 jint step_avx2(const Step& s, const Piece& p, double* sums, uint64_t& crc) {
    constexpr ptrdiff_t W = 8;
    const ptrdiff_t n = p.n;
    ptrdiff_t k = 0;
    for (ptrdiff_t peel = peel_count(p.theta_out, n, 32); k < peel; k++) {
        jint why = step_one(s, p, k, sums);
        if (why != APPLIED) return undo(p, k, why);
        crc = crc_of_element(crc, p.theta_out + k);
    }
    const char* gradient = p.gradient;
    char* weights = p.weights;
    const float* theta_in = p.theta;
    const float* m_in = p.m;
    const float* v_in = p.v;
    float* theta_out = p.theta_out;
    float* m_out = p.m_out;
    float* v_out = p.v_out;
    const bool stream_theta = aligned(theta_out + k, 32);
    const bool stream_m = aligned(m_out + k, 32);
    const bool stream_v = aligned(v_out + k, 32);
    const bool decoupled = s.decoupled;
    const bool coupled = s.coupled;
    const bool lerp = s.lerp;
    const bool lerp_from_m = s.lerp_from_m;
    const __m256 grad_scale = _mm256_set1_ps(s.grad_scale);
    const __m256 decay_factor = _mm256_set1_ps(s.decay_factor);
    const __m256 weight_decay = _mm256_set1_ps(s.weight_decay);
    const __m256 beta1 = _mm256_set1_ps(s.beta1);
    const __m256 one_minus_beta1 = _mm256_set1_ps(s.one_minus_beta1);
    const __m256 lerp_complement = _mm256_set1_ps(s.lerp_complement);
    const __m256 beta2 = _mm256_set1_ps(s.beta2);
    const __m256 one_minus_beta2 = _mm256_set1_ps(s.one_minus_beta2);
    const __m256 neg_step = _mm256_set1_ps(s.neg_step);
    const __m256 eps = _mm256_set1_ps(s.eps);
    const __m256 inv_sqrt_bias_correction2 = _mm256_set1_ps(s.inv_sqrt_bias_correction2);
    const bool adam = s.adam;
    const __m256i exponent = _mm256_set1_epi32((int)EXPONENT);
    const ptrdiff_t start = k;
    double rotated[SUM_LANES];
    rotate_in(sums, start, rotated);
    __m256d squares_low = _mm256_loadu_pd(rotated);
    __m256d squares_high = _mm256_loadu_pd(rotated + 4);
    for (; k + W <= n; k += W) {
        if ((k - start) % 16 == 0) prefetch_inputs(weights, gradient, theta_in, m_in, v_in, k);  // once a line
        __m256 w = _mm256_loadu_ps(reinterpret_cast<const float*>(weights + 4 * k));
        pin(w);
        __m256 g = _mm256_loadu_ps(reinterpret_cast<const float*>(gradient + 4 * k));
        pin(g);
        __m256 theta = _mm256_loadu_ps(theta_in + k);
        __m256i g_bits = _mm256_castps_si256(g);
        __m256i same = _mm256_cmpeq_epi32(_mm256_castps_si256(w), _mm256_castps_si256(theta));
        __m256i all_ones = _mm256_cmpeq_epi32(_mm256_and_si256(g_bits, exponent), exponent);
        unsigned edited = ~(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(same)) & 0xffu;
        unsigned non_finite = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(all_ones));
        if (__builtin_expect((edited | non_finite) != 0, 0)) {
            return undo(p, k, first_failure(edited, non_finite));
        }
        __m256 pi = decoupled ? _mm256_mul_ps(theta, decay_factor) : theta;
        __m256 gi = _mm256_mul_ps(grad_scale, g);
        if (coupled) gi = _mm256_add_ps(gi, _mm256_mul_ps(weight_decay, pi));
        __m256 m = _mm256_loadu_ps(m_in + k);
        __m256 mi;
        if (!lerp) {
            mi = _mm256_fmadd_ps(one_minus_beta1, gi, _mm256_mul_ps(m, beta1));
        } else if (lerp_from_m) {
            mi = _mm256_add_ps(m, _mm256_mul_ps(one_minus_beta1, _mm256_sub_ps(gi, m)));
        } else {
            mi = _mm256_sub_ps(gi, _mm256_mul_ps(_mm256_sub_ps(gi, m), lerp_complement));
        }
        __m256 v = _mm256_loadu_ps(v_in + k);
        __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(one_minus_beta2, gi), gi, _mm256_mul_ps(v, beta2));
        __m256 root = _mm256_sqrt_ps(vi);
        __m256 denominator = adam ? _mm256_fmadd_ps(root, inv_sqrt_bias_correction2, eps) : _mm256_add_ps(root, eps);
        __m256 t = _mm256_fmadd_ps(neg_step, _mm256_div_ps(mi, denominator), pi);
        if (stream_theta) _mm256_stream_ps(theta_out + k, t); else _mm256_storeu_ps(theta_out + k, t);
        if (stream_m) _mm256_stream_ps(m_out + k, mi); else _mm256_storeu_ps(m_out + k, mi);
        if (stream_v) _mm256_stream_ps(v_out + k, vi); else _mm256_storeu_ps(v_out + k, vi);
        _mm256_storeu_ps(reinterpret_cast<float*>(weights + 4 * k), t);
        crc = crc_of_vector(crc, _mm256_castps_si256(t));
        __m256d low = _mm256_cvtps_pd(_mm256_castps256_ps128(g));
        __m256d high = _mm256_cvtps_pd(_mm256_extractf128_ps(g, 1));
        squares_low = _mm256_add_pd(squares_low, _mm256_mul_pd(low, low));
        squares_high = _mm256_add_pd(squares_high, _mm256_mul_pd(high, high));
    }
    _mm256_storeu_pd(rotated, squares_low);
    _mm256_storeu_pd(rotated + 4, squares_high);
    rotate_out(rotated, start, sums);
    for (; k < n; k++) {
        jint why = step_one(s, p, k, sums);
        if (why != APPLIED) return undo(p, k, why);
        crc = crc_of_element(crc, p.theta_out + k);
    }
    return APPLIED;
}

bool has(int isa) {
    switch (isa) {
        case PORTABLE: return true;
        case AVX2_FMA:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                && __builtin_cpu_supports("sse4.2");
        case AVX512F: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("sse4.2");
        default: return false;
    }
}

int best_isa() {
    __builtin_cpu_init();  // this runs as the library loads, perhaps before libgcc's own initializer
    return has(AVX512F) ? AVX512F : has(AVX2_FMA) ? AVX2_FMA : PORTABLE;
}

const int best = best_isa();
int isa_in_use = best;  // only tests change it (segmentStepIsa)

using optsidecar::Critical;

// The pass over gradient[0, 4n) and weights[0, 4n), n = to − from, for both entry points.
jint segment_step(JNIEnv* env, const char* gradient, char* weights, jfloatArray theta, jfloatArray m, jfloatArray v,
                  jfloatArray thetaOut, jfloatArray mOut, jfloatArray vOut, jint from, jint to, jfloatArray scalars,
                  jint flags, jdoubleArray lanes, jintArray crc32c) {
    // Read before the arrays are held: no other JNI call may come while they are.
    jfloat k[SCALARS];
    jdouble lane_sums[SUM_LANES];
    jint record[2];
    env->GetFloatArrayRegion(scalars, 0, SCALARS, k);
    env->GetDoubleArrayRegion(lanes, 0, SUM_LANES, lane_sums);
    env->GetIntArrayRegion(crc32c, 0, 2, record);
    if (env->ExceptionCheck()) return -1;
    Step s;
    s.grad_scale = k[0];
    s.decay_factor = k[1];
    s.weight_decay = k[2];
    s.beta1 = k[3];
    s.one_minus_beta1 = k[4];
    s.beta2 = k[5];
    s.one_minus_beta2 = k[6];
    s.neg_step = -k[7];
    s.eps = k[8];
    s.inv_sqrt_bias_correction2 = k[9];
    s.lerp_complement = 1.0f - s.one_minus_beta1;
    s.decoupled = (flags & DECOUPLED) != 0;
    s.coupled = (flags & COUPLED) != 0;
    s.lerp = (flags & LERP) != 0;
    s.lerp_from_m = fabsf(s.one_minus_beta1) < 0.5f;
    s.adam = (flags & ADAM) != 0;
    double sums[SUM_LANES] = {0, 0, 0, 0, 0, 0, 0, 0};
    uint64_t crc = ~(uint32_t)record[0];  // a CRC-32C value goes on from its complement
    bool checksums = true;
    jint result;
    {
        Critical theta_in(env, theta, false);
        Critical m_in(env, m, false);
        Critical v_in(env, v, false);
        Critical theta_new(env, thetaOut, true);
        Critical m_new(env, mOut, true);
        Critical v_new(env, vOut, true);
        if (theta_in.data == nullptr || m_in.data == nullptr || v_in.data == nullptr || theta_new.data == nullptr
                || m_new.data == nullptr || v_new.data == nullptr) {
            return -1;  // an OutOfMemoryError is pending
        }
        Piece p;
        p.gradient = gradient;
        p.weights = weights;
        p.theta = static_cast<const float*>(theta_in.data) + from;
        p.m = static_cast<const float*>(m_in.data) + from;
        p.v = static_cast<const float*>(v_in.data) + from;
        p.theta_out = static_cast<float*>(theta_new.data) + from;
        p.m_out = static_cast<float*>(m_new.data) + from;
        p.v_out = static_cast<float*>(v_new.data) + from;
        p.n = to - from;
        switch (__atomic_load_n(&isa_in_use, __ATOMIC_RELAXED)) {
            case AVX512F: result = step_avx512(s, p, sums, crc); break;
            case AVX2_FMA: result = step_avx2(s, p, sums, crc); break;
            default: result = step_portable(s, p, sums); checksums = false; break;
        }
        // Non-temporal stores are weakly ordered: they must be visible before the caller reads them.
        _mm_sfence();
    }
    if (result == APPLIED) {
        for (int lane = 0; lane < SUM_LANES; lane++) {
            lane_sums[lane] = lane_sums[lane] + sums[lane];
        }
        env->SetDoubleArrayRegion(lanes, 0, SUM_LANES, lane_sums);
        record[0] = (jint) ~(uint32_t)crc;
        record[1] = checksums ? 1 : 0;
        env->SetIntArrayRegion(crc32c, 0, 2, record);
    }
    return result;
}

char* address_of(JNIEnv* env, jobject buffer) {
    char* address = static_cast<char*>(env->GetDirectBufferAddress(buffer));
    if (address == nullptr) {
        env->ThrowNew(env->FindClass("java/lang/IllegalArgumentException"), "not a direct buffer");
    }
    return address;
}

}  // namespace

// SegmentStepKernel checks every range, the buffers and the arrays before calling.

OSC_EXPORT jint JNICALL Java_dev_optsidecar_server_engine_cpu_NativeLoops_segmentStep(
        JNIEnv* env, jclass, jobject gradient, jlong gradientByte, jobject weights, jlong weightsByte,
        jfloatArray theta, jfloatArray m, jfloatArray v, jfloatArray thetaOut, jfloatArray mOut, jfloatArray vOut,
        jint from, jint to, jfloatArray scalars, jint flags, jdoubleArray lanes, jintArray crc32c) {
    char* gradient_base = address_of(env, gradient);
    if (gradient_base == nullptr) return -1;
    char* weights_base = address_of(env, weights);
    if (weights_base == nullptr) return -1;
    // Two views may share memory, which Java cannot see: the regions must not overlap.
    uintptr_t g = reinterpret_cast<uintptr_t>(gradient_base + gradientByte);
    uintptr_t w = reinterpret_cast<uintptr_t>(weights_base + weightsByte);
    uintptr_t bytes = sizeof(float) * (uintptr_t)(to - from);
    if (bytes > 0 && g < w + bytes && w < g + bytes) {
        env->ThrowNew(env->FindClass("java/lang/IllegalArgumentException"), "the gradient and weights overlap");
        return -1;
    }
    return segment_step(env, gradient_base + gradientByte, weights_base + weightsByte, theta, m, v, thetaOut, mOut,
                        vOut, from, to, scalars, flags, lanes, crc32c);
}

OSC_EXPORT jint JNICALL Java_dev_optsidecar_server_engine_cpu_NativeLoops_segmentStepIsa(JNIEnv*, jclass,
                                                                                        jint force) {
    int isa = force == -1 ? best : force;
    if (has(isa)) __atomic_store_n(&isa_in_use, isa, __ATOMIC_RELAXED);
    return __atomic_load_n(&isa_in_use, __ATOMIC_RELAXED);
}
