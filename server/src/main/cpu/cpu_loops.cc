// The CPU engine's bulk loops outside its kernels (engine/cpu/NativeLoops.java): the gradient's
// sum of squares and the conversions between float32 and the 16-bit wire types. Each gives the
// bits of the Java loop it stands in for (engine/cpu/JavaLoops.java): the same operations in the
// same order, each rounded once (-ffp-contract=off: no multiply fused into an add). What makes it
// faster is only that the compiler may run eight elements at once, which Java 17 does not.
#include <jni.h>

#include "float_bits.h"
#include "jni_arrays.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define OSC_EXPORT extern "C" __attribute__((visibility("default"))) JNIEXPORT
// One copy of each loop for AVX2 and one for any x86-64, chosen when the library loads.
#define OSC_CLONES __attribute__((target_clones("avx2", "default")))

namespace {

constexpr int SUM_LANES = 8;

// Four lanes of the sum at once (GCC vector extensions: AVX2 registers in that clone, pairs of
// SSE2 ones in the other); the eight lanes are two of these.
typedef double Double4 __attribute__((vector_size(32)));
typedef float Float4 __attribute__((vector_size(16)));

// Squares of a[0, 8k) added, in double, to lanes low (elements 0-3 of each 8) and high (4-7):
// per lane the same adds in the same order as one double at a time.
inline void add_squares_by_eight(const float* a, int count, Double4& low, Double4& high) {
    for (int i = 0; i + SUM_LANES <= count; i += SUM_LANES) {
        Float4 first;
        Float4 second;
        memcpy(&first, a + i, sizeof first);
        memcpy(&second, a + i + 4, sizeof second);
        Double4 x = __builtin_convertvector(first, Double4);
        Double4 y = __builtin_convertvector(second, Double4);
        low = low + x * x;
        high = high + y * y;
    }
}

// Adds to lanes what a by-eight pass over a[0, n) left in low and high, with the squares of the
// elements it did not take, a[n - n mod 8, n) (lane 0 first): each lane summed in order, then added.
inline void fold_lanes(const float* a, int n, const Double4& low, const Double4& high, double* lanes) {
    double s[SUM_LANES] = {low[0], low[1], low[2], low[3], high[0], high[1], high[2], high[3]};
    for (int i = n - n % SUM_LANES, lane = 0; i < n; i++, lane++) {
        double v = a[i];
        s[lane] = s[lane] + v * v;
    }
    for (int lane = 0; lane < SUM_LANES; lane++) {
        lanes[lane] = lanes[lane] + s[lane];
    }
}

// Element i of [from, to) goes to lane (i - from) mod 8; each lane is summed in order, in double,
// then added to its entry of lanes.
OSC_CLONES void add_squares(const float* a, int from, int to, double* lanes) {
    Double4 low = {0, 0, 0, 0};
    Double4 high = {0, 0, 0, 0};
    int count = to - from;
    add_squares_by_eight(a + from, count, low, high);
    fold_lanes(a + from, count, low, high, lanes);
}

// Elements copied at a time before they are summed, while they are in the L1 cache.
constexpr int STAGE = 2048;

// to[0, n) = from[0, n), adding their squares to lanes as add_squares does (lane = i mod 8). The
// squares are of the values as stored in to, which only this thread writes: they are the values
// the step uses even if from changes during the copy.
OSC_CLONES void copy_adding_squares(const float* from, float* to, int n, double* lanes) {
    Double4 low = {0, 0, 0, 0};
    Double4 high = {0, 0, 0, 0};
    for (int done = 0; done < n; done += STAGE) {
        int count = n - done < STAGE ? n - done : STAGE;
        memcpy(to + done, from + done, sizeof(float) * count);
        add_squares_by_eight(to + done, count, low, high);
    }
    fold_lanes(to, n, low, high, lanes);  // STAGE is a multiple of 8: only the last stage has a tail
}

using optsidecar::bits_of;
using optsidecar::float_of;

OSC_CLONES void widen_bfloat16(const uint16_t* bits, float* to, int n) {
    for (int i = 0; i < n; i++) {
        to[i] = float_of((uint32_t)bits[i] << 16);
    }
}

// Round to nearest even; a NaN stays a quiet NaN (truncating could leave Inf).
OSC_CLONES void narrow_to_bfloat16(const float* from, uint16_t* to, int n) {
    for (int i = 0; i < n; i++) {
        uint32_t bits = bits_of(from[i]);
        uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
        uint32_t quiet_nan = (bits >> 16) | 0x0040u;
        to[i] = (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
    }
}

float widen_float16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    if (exponent == 0x1f) {
        return float_of(sign | 0x7f800000u | (mantissa << 13));
    }
    if (exponent == 0) {  // zero or subnormal: mantissa x 2^-24, exact in float32
        float magnitude = (float)mantissa * 0x1p-24f;
        return sign != 0 ? -magnitude : magnitude;
    }
    return float_of(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

float float16_values[1 << 16];

struct Float16Table {
    Float16Table() {
        for (uint32_t h = 0; h < (1u << 16); h++) float16_values[h] = widen_float16((uint16_t)h);
    }
} float16_table;

void widen_float16s(const uint16_t* bits, float* to, int n) {
    for (int i = 0; i < n; i++) {
        to[i] = float16_values[bits[i]];
    }
}

// to[0, n) = the 16-bit values bits[0, n) widened, their squares added to lanes as add_squares
// adds those of to[0, n) (lane = i mod 8): the 16-bit ingest's widening and its NaN proof and
// norm in one pass, each few thousand values summed right after they are stored, from the cache.
OSC_CLONES void widen_adding_squares(bool bfloat16, const uint16_t* bits, float* to, int n, double* lanes) {
    Double4 low = {0, 0, 0, 0};
    Double4 high = {0, 0, 0, 0};
    for (int done = 0; done < n; done += STAGE) {
        int count = n - done < STAGE ? n - done : STAGE;
        if (bfloat16) {
            widen_bfloat16(bits + done, to + done, count);
        } else {
            widen_float16s(bits + done, to + done, count);
        }
        add_squares_by_eight(to + done, count, low, high);
    }
    fold_lanes(to, n, low, high, lanes);  // STAGE is a multiple of 8: only the last stage has a tail
}

OSC_CLONES void narrow_to_float16(const float* from, uint16_t* to, int n) {
    for (int i = 0; i < n; i++) {
        float value = from[i];
        uint32_t bits = bits_of(value);
        uint32_t sign = (bits >> 16) & 0x8000u;
        uint32_t magnitude = bits & 0x7fffffffu;
        uint32_t half;
        if (magnitude > 0x7f800000u) {
            half = sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu);
        } else if (magnitude >= 0x477ff000u) {  // 65520 and up round to Inf
            half = sign | 0x7c00u;
        } else if (magnitude >= 0x38800000u) {  // normal in float16: rebias, round to nearest even
            uint32_t rebiased = magnitude - ((127u - 15u) << 23);
            uint32_t rounding = 0xfffu + ((magnitude >> 13) & 1u);
            half = sign | ((rebiased + rounding) >> 13);
        } else {  // subnormal or zero: units of 2^-24, nearest even
            half = sign | (uint32_t)(int32_t)rint(fabs((double)value) * 0x1p24);
        }
        to[i] = (uint16_t)half;
    }
}

using optsidecar::Critical;

}  // namespace

// The Java side checks every range against the arrays and buffers before calling.

OSC_EXPORT void JNICALL Java_dev_optsidecar_server_engine_cpu_NativeLoops_copyAddingSquares(
        JNIEnv* env, jclass, jobject buffer, jlong byteOffset, jfloatArray to, jint from, jint end, jdoubleArray lanes) {
    const char* base = static_cast<const char*>(env->GetDirectBufferAddress(buffer));
    if (base == nullptr) return;
    Critical out(env, to, true);
    Critical sums(env, lanes, true);
    if (out.data == nullptr || sums.data == nullptr) return;
    copy_adding_squares(reinterpret_cast<const float*>(base + byteOffset), static_cast<float*>(out.data) + from,
                        end - from, static_cast<double*>(sums.data));
}

OSC_EXPORT void JNICALL Java_dev_optsidecar_server_engine_cpu_NativeLoops_addSquares(
        JNIEnv* env, jclass, jfloatArray a, jint from, jint to, jdoubleArray lanes) {
    Critical values(env, a, false);
    Critical sums(env, lanes, true);
    if (values.data == nullptr || sums.data == nullptr) return;  // an OutOfMemoryError is pending
    add_squares(static_cast<const float*>(values.data), from, to, static_cast<double*>(sums.data));
}

OSC_EXPORT void JNICALL Java_dev_optsidecar_server_engine_cpu_NativeLoops_widen(
        JNIEnv* env, jclass, jboolean bfloat16, jshortArray bits, jint at, jfloatArray to, jint from, jint end) {
    Critical in(env, bits, false);
    Critical out(env, to, true);
    if (in.data == nullptr || out.data == nullptr) return;
    const uint16_t* source = static_cast<const uint16_t*>(in.data) + at;
    float* target = static_cast<float*>(out.data) + from;
    if (bfloat16) {
        widen_bfloat16(source, target, end - from);
    } else {
        widen_float16s(source, target, end - from);
    }
}

OSC_EXPORT void JNICALL Java_dev_optsidecar_server_engine_cpu_NativeLoops_widenAddingSquares(
        JNIEnv* env, jclass, jboolean bfloat16, jshortArray bits, jint at, jfloatArray to, jint from, jint end,
        jdoubleArray lanes) {
    Critical in(env, bits, false);
    Critical out(env, to, true);
    Critical sums(env, lanes, true);
    if (in.data == nullptr || out.data == nullptr || sums.data == nullptr) return;
    widen_adding_squares(bfloat16, static_cast<const uint16_t*>(in.data) + at, static_cast<float*>(out.data) + from,
                         end - from, static_cast<double*>(sums.data));
}

// The 16-bit values land in a short[] or a byte[], from byte to_byte of its data (even: a whole
// 16-bit slot, which the callers' indexes always are).
static void narrow_into(JNIEnv* env, jboolean bfloat16, jfloatArray from, jint start, jint end, jarray to,
                        jlong to_byte) {
    Critical in(env, from, false);
    Critical out(env, to, true);
    if (in.data == nullptr || out.data == nullptr) return;
    const float* source = static_cast<const float*>(in.data) + start;
    uint16_t* target = reinterpret_cast<uint16_t*>(static_cast<char*>(out.data) + to_byte);
    if (bfloat16) {
        narrow_to_bfloat16(source, target, end - start);
    } else {
        narrow_to_float16(source, target, end - start);
    }
}

OSC_EXPORT void JNICALL Java_dev_optsidecar_server_engine_cpu_NativeLoops_narrow(
        JNIEnv* env, jclass, jboolean bfloat16, jfloatArray from, jint start, jint end, jshortArray to, jint at) {
    narrow_into(env, bfloat16, from, start, end, to, static_cast<jlong>(at) * 2);
}

OSC_EXPORT void JNICALL Java_dev_optsidecar_server_engine_cpu_NativeLoops_narrowIntoBytes(
        JNIEnv* env, jclass, jboolean bfloat16, jfloatArray from, jint start, jint end, jbyteArray to, jint byteAt) {
    narrow_into(env, bfloat16, from, start, end, to, byteAt);
}
