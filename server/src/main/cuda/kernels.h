// The kernel catalogue's per-element arithmetic (engine/kernel/KERNELS.md), written once for the
// GPU and the CPU: nvcc compiles it into the CUDA engine's kernels, g++ into the CPU harness that
// checks it against the Java reference loops. Every operation is binary32, evaluated as written:
// the device side is built with -fmad=false and the host side with -ffp-contract=off, so a
// multiply and an add fuse only where fmaf says so (where Java calls Math.fma), and sqrtf and "/"
// are correctly rounded (no fast math). The reductions are written here too, with their
// summation order fixed by constants, so that the host replays the device's order exactly.
#pragma once

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define OSC_FN __host__ __device__ __forceinline__
#else
#define OSC_FN inline
#endif

namespace osc {

// One row per kernel of Kernel.java, in its order: id, slot roles, scalars, flags. The engine
// compares this table with the Java catalogue when it loads, so the two cannot drift apart.
struct KernelInfo {
    const char* id;
    const char* slots;
    const char* scalars;
    const char* flags;
};

#define OSC_ADAM_SCALARS \
    "grad_scale decay_factor weight_decay beta1 one_minus_beta1 beta2 one_minus_beta2 step_size " \
    "inv_sqrt_bias_correction2 eps"
#define OSC_SF_SCALARS \
    "grad_scale beta2 one_minus_beta2 inv_bias_correction2 eps weight_decay c y_coefficient z_coefficient"

static const KernelInfo CATALOGUE[] = {
    {"sgd", "", "grad_scale weight_decay neg_lr", "coupled_weight_decay"},
    {"sgd_momentum", "momentum_buffer", "grad_scale weight_decay neg_lr momentum one_minus_dampening",
     "coupled_weight_decay first_step nesterov"},
    {"adam", "exp_avg exp_avg_sq", OSC_ADAM_SCALARS, "decoupled_weight_decay coupled_weight_decay"},
    {"adam_amsgrad", "exp_avg exp_avg_sq max_exp_avg_sq", OSC_ADAM_SCALARS,
     "decoupled_weight_decay coupled_weight_decay"},
    {"radam_sgd_phase", "exp_avg exp_avg_sq",
     "grad_scale decay_factor weight_decay beta1 one_minus_beta1 beta2 one_minus_beta2 bias_correction1 lr",
     "decoupled_weight_decay coupled_weight_decay lerp_first_moment"},
    {"radam_rectified", "exp_avg exp_avg_sq",
     "grad_scale decay_factor weight_decay beta1 one_minus_beta1 beta2 one_minus_beta2 step_size eps",
     "decoupled_weight_decay coupled_weight_decay lerp_first_moment"},
    {"radam_original_sgd_phase", "exp_avg exp_avg_sq",
     "grad_scale beta1 one_minus_beta1 beta2 one_minus_beta2 neg_decay neg_step", "degenerated_to_sgd"},
    {"radam_original_rectified", "exp_avg exp_avg_sq",
     "grad_scale beta1 one_minus_beta1 beta2 one_minus_beta2 neg_decay neg_step eps", ""},
    {"sgd_schedule_free", "z", "grad_scale weight_decay c y_coefficient z_coefficient", "first_step weight_decay"},
    {"adamw_schedule_free", "z exp_avg_sq", OSC_SF_SCALARS, "first_step weight_decay"},
    {"adamw_schedule_free_momentum", "z exp_avg_sq exp_avg",
     OSC_SF_SCALARS " momentum one_minus_momentum momentum_correction", "first_step weight_decay"},
    {"radam_schedule_free", "z exp_avg_sq", OSC_SF_SCALARS, "first_step rectified weight_decay"},
    {"radam_schedule_free_prescaled", "z exp_avg_sq",
     "beta2 one_minus_beta2 scaled_eps c scaled_y_coefficient scaled_z_coefficient", ""},
    {"copy_params", "target", "", ""},
    {"set_params", "", "", ""},
    {"ema_blend", "shadow", "keep take", ""},
    {"lookahead_sync", "slow", "alpha one_minus_alpha", ""},
    {"lookahead_sync_reset", "slow momentum_buffer", "alpha one_minus_alpha", ""},
    {"lookahead_sync_pullback", "slow momentum_buffer cached_momentum", "alpha one_minus_alpha", ""},
    {"schedule_free_train_from_eval", "z", "weight", ""},
    {"schedule_free_eval", "z", "weight", ""},
};

enum KernelCode {
    SGD, SGD_MOMENTUM, ADAM, ADAM_AMSGRAD, RADAM_SGD_PHASE, RADAM_RECTIFIED, RADAM_ORIGINAL_SGD_PHASE,
    RADAM_ORIGINAL_RECTIFIED, SGD_SCHEDULE_FREE, ADAMW_SCHEDULE_FREE, ADAMW_SCHEDULE_FREE_MOMENTUM,
    RADAM_SCHEDULE_FREE, RADAM_SCHEDULE_FREE_PRESCALED, COPY_PARAMS, SET_PARAMS, EMA_BLEND, LOOKAHEAD_SYNC,
    LOOKAHEAD_SYNC_RESET, LOOKAHEAD_SYNC_PULLBACK, SCHEDULE_FREE_TRAIN_FROM_EVAL, SCHEDULE_FREE_EVAL,
    KERNEL_COUNT
};

constexpr int MAX_SCALARS = 12;
constexpr int MAX_CALL_SLOTS = 3;
// Calls fused into one launch; a longer program runs as several launches, in order.
constexpr int MAX_CALLS = 16;

// One kernel call: its code, flags as bits in catalogue order, the tensor's slot index for each
// slot role, and the scalars in catalogue order (engine/kernel/KernelCall.java as plain data).
struct Call {
    int kernel;
    uint32_t flags;
    int slots[MAX_CALL_SLOTS];
    float s[MAX_SCALARS];
};

struct Program {
    int count;
    Call calls[MAX_CALLS];
};

OSC_FN bool flag(const Call& c, int bit) { return (c.flags >> bit) & 1u; }

// torch's lerp (engine/kernel/Lerp.java).
OSC_FN float lerp(float a, float b, float w) {
    return fabsf(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

// Java's Math.max for floats: NaN wins, and +0 is above -0.
OSC_FN float java_max(float a, float b) {
    if (a != a) return a;
    if (b != b) return b;
    if (a == 0.0f && b == 0.0f) return signbit(a) ? b : a;
    return a >= b ? a : b;
}

// y = lerp(y, zi, c) + y_coefficient·u; z = zi + z_coefficient·u (Schedule-Free's shared tail).
OSC_FN void schedule_free_update(float* y, float* z, int64_t i, float u, float c, float y_coefficient,
                                 float z_coefficient, bool first) {
    float zi = first ? y[i] : z[i];
    y[i] = fmaf(y_coefficient, u, lerp(y[i], zi, c));
    z[i] = fmaf(z_coefficient, u, zi);
}

OSC_FN void sgd(const Call& c, float* th, const float* gr, int64_t i) {
    float d = c.s[0] * gr[i];
    if (flag(c, 0)) d = d + c.s[1] * th[i];
    th[i] = th[i] + c.s[2] * d;
}

OSC_FN void sgd_momentum(const Call& c, float* th, const float* gr, float* const* st, int64_t i) {
    const float mu = c.s[3];
    float* buf = st[c.slots[0]];
    float d = c.s[0] * gr[i];
    if (flag(c, 0)) d = d + c.s[1] * th[i];
    float b = flag(c, 1) ? d : buf[i] * mu + c.s[4] * d;
    buf[i] = b;
    float direction = flag(c, 2) ? d + mu * b : b;
    th[i] = th[i] + c.s[2] * direction;
}

OSC_FN void adam(const Call& c, float* th, const float* gr, float* const* st, int64_t i, bool amsgrad) {
    float* m = st[c.slots[0]];
    float* v = st[c.slots[1]];
    float p = flag(c, 0) ? th[i] * c.s[1] : th[i];
    float g = c.s[0] * gr[i];
    if (flag(c, 1)) g = g + c.s[2] * p;
    m[i] = fmaf(c.s[4], g, m[i] * c.s[3]);
    v[i] = fmaf(c.s[6] * g, g, v[i] * c.s[5]);
    float second = v[i];
    if (amsgrad) {
        float* vmax = st[c.slots[2]];
        vmax[i] = java_max(vmax[i], v[i]);
        second = vmax[i];
    }
    float denom = fmaf(sqrtf(second), c.s[8], c.s[9]);
    th[i] = fmaf(-c.s[7], m[i] / denom, p);
}

// torch's RAdam: scalars 7 and 8 are bias_correction1 and lr (SGD phase) or step_size and eps.
OSC_FN void radam(const Call& c, float* th, const float* gr, float* const* st, int64_t i, bool rectified) {
    float* m = st[c.slots[0]];
    float* v = st[c.slots[1]];
    float p = flag(c, 0) ? th[i] * c.s[1] : th[i];
    float g = c.s[0] * gr[i];
    if (flag(c, 1)) g = g + c.s[2] * p;
    m[i] = flag(c, 2) ? lerp(m[i], g, c.s[4]) : fmaf(c.s[4], g, m[i] * c.s[3]);
    if (rectified) {
        v[i] = fmaf(c.s[6] * g, g, v[i] * c.s[5]);
        th[i] = fmaf(-c.s[7], m[i] / (sqrtf(v[i]) + c.s[8]), p);
    } else {
        v[i] = v[i] * c.s[5] + c.s[6] * g * g;
        th[i] = p - (m[i] / c.s[7]) * c.s[8];
    }
}

// The RAdam paper's code: scalars grad_scale beta1 one_minus_beta1 beta2 one_minus_beta2 neg_decay neg_step [eps].
OSC_FN void radam_original(const Call& c, float* th, const float* gr, float* const* st, int64_t i,
                           bool rectified) {
    float* m = st[c.slots[0]];
    float* v = st[c.slots[1]];
    bool moves = rectified || flag(c, 0);
    float g = c.s[0] * gr[i];
    v[i] = v[i] * c.s[3] + c.s[4] * g * g;
    m[i] = fmaf(c.s[2], g, m[i] * c.s[1]);
    if (moves) {
        float p = th[i] + c.s[5] * th[i];
        float direction = rectified ? m[i] / (sqrtf(v[i]) + c.s[7]) : m[i];
        th[i] = p + c.s[6] * direction;
    }
}

OSC_FN void sgd_schedule_free(const Call& c, float* y, const float* gr, float* const* st, int64_t i) {
    float g = c.s[0] * gr[i];
    float u = flag(c, 1) ? fmaf(c.s[1], y[i], g) : g;
    schedule_free_update(y, st[c.slots[0]], i, u, c.s[2], c.s[3], c.s[4], flag(c, 0));
}

// Scalars: grad_scale beta2 one_minus_beta2 inv_bias_correction2 eps weight_decay c y_coefficient
// z_coefficient [momentum one_minus_momentum momentum_correction].
OSC_FN void adamw_schedule_free(const Call& c, float* y, const float* gr, float* const* st, int64_t i,
                                bool momentum) {
    float* v = st[c.slots[1]];
    float g = c.s[0] * gr[i];
    v[i] = fmaf(c.s[2] * g, g, v[i] * c.s[1]);
    float denom = sqrtf(v[i] * c.s[3]) + c.s[4];
    float u;
    if (momentum) {
        float* m = st[c.slots[2]];
        m[i] = fmaf(c.s[10], g, m[i] * c.s[9]);
        u = (m[i] / c.s[11]) / denom;
    } else {
        u = g / denom;
    }
    if (flag(c, 1)) u = fmaf(c.s[5], y[i], u);
    schedule_free_update(y, st[c.slots[0]], i, u, c.s[6], c.s[7], c.s[8], flag(c, 0));
}

// Flags: first_step rectified weight_decay.
OSC_FN void radam_schedule_free(const Call& c, float* y, const float* gr, float* const* st, int64_t i) {
    float* v = st[c.slots[1]];
    float g = c.s[0] * gr[i];
    v[i] = fmaf(c.s[2] * g, g, v[i] * c.s[1]);
    float u = flag(c, 1) ? g / (sqrtf(v[i] * c.s[3]) + c.s[4]) : g;
    if (flag(c, 2)) u = fmaf(c.s[5], y[i], u);
    schedule_free_update(y, st[c.slots[0]], i, u, c.s[6], c.s[7], c.s[8], flag(c, 0));
}

// Scalars: beta2 one_minus_beta2 scaled_eps c scaled_y_coefficient scaled_z_coefficient.
OSC_FN void radam_schedule_free_prescaled(const Call& c, float* y, const float* gr, float* const* st,
                                          int64_t i) {
    float* v = st[c.slots[1]];
    float g = gr[i];
    v[i] = fmaf(c.s[1] * g, g, v[i] * c.s[0]);
    float scaled_u = g / (sqrtf(v[i]) + c.s[2]);
    schedule_free_update(y, st[c.slots[0]], i, scaled_u, c.s[3], c.s[4], c.s[5], false);
}

// Lookahead: θ and slow become α·θ + (1 − α)·slow; the inner momentum kept, zeroed or blended with its cache.
OSC_FN void lookahead_sync(const Call& c, float* th, float* const* st, int64_t i) {
    float* slow = st[c.slots[0]];
    float blended = th[i] * c.s[0] + slow[i] * c.s[1];
    th[i] = blended;
    slow[i] = blended;
    if (c.kernel == LOOKAHEAD_SYNC_RESET) {
        st[c.slots[1]][i] = 0.0f;
    } else if (c.kernel == LOOKAHEAD_SYNC_PULLBACK) {
        float* momentum = st[c.slots[1]];
        float* cached = st[c.slots[2]];
        float pulled = momentum[i] * c.s[0] + cached[i] * c.s[1];
        momentum[i] = pulled;
        cached[i] = pulled;
    }
}

// Applies step call c to element i of a tensor: th its parameters, gr its step gradient, st its
// state slots by index.
OSC_FN void apply_step(const Call& c, float* th, const float* gr, float* const* st, int64_t i) {
    switch (c.kernel) {
        case SGD: sgd(c, th, gr, i); break;
        case SGD_MOMENTUM: sgd_momentum(c, th, gr, st, i); break;
        case ADAM: adam(c, th, gr, st, i, false); break;
        case ADAM_AMSGRAD: adam(c, th, gr, st, i, true); break;
        case RADAM_SGD_PHASE: radam(c, th, gr, st, i, false); break;
        case RADAM_RECTIFIED: radam(c, th, gr, st, i, true); break;
        case RADAM_ORIGINAL_SGD_PHASE: radam_original(c, th, gr, st, i, false); break;
        case RADAM_ORIGINAL_RECTIFIED: radam_original(c, th, gr, st, i, true); break;
        case SGD_SCHEDULE_FREE: sgd_schedule_free(c, th, gr, st, i); break;
        case ADAMW_SCHEDULE_FREE: adamw_schedule_free(c, th, gr, st, i, false); break;
        case ADAMW_SCHEDULE_FREE_MOMENTUM: adamw_schedule_free(c, th, gr, st, i, true); break;
        case RADAM_SCHEDULE_FREE: radam_schedule_free(c, th, gr, st, i); break;
        case RADAM_SCHEDULE_FREE_PRESCALED: radam_schedule_free_prescaled(c, th, gr, st, i); break;
        case COPY_PARAMS: st[c.slots[0]][i] = th[i]; break;
        case SET_PARAMS: th[i] = gr[i]; break;
        case EMA_BLEND: {
            float* e = st[c.slots[0]];
            e[i] = fmaf(c.s[1], th[i], c.s[0] * e[i]);
            break;
        }
        case LOOKAHEAD_SYNC:
        case LOOKAHEAD_SYNC_RESET:
        case LOOKAHEAD_SYNC_PULLBACK: lookahead_sync(c, th, st, i); break;
        case SCHEDULE_FREE_TRAIN_FROM_EVAL: th[i] = lerp(th[i], st[c.slots[0]][i], c.s[0]); break;
        default: break;  // a view kernel is never a step; the Java side refuses it before a launch
    }
}

// The only view kernel, schedule_free_eval: the eval point x = lerp(y, z, 1 − 1/β) of element i.
OSC_FN float eval_view(const Call& c, const float* th, float* const* st, int64_t i) {
    return lerp(th[i], st[c.slots[0]][i], c.s[0]);
}

// Sync-mode combination of one element: buffers summed in the order given, then divided.
OSC_FN float combine(const float* const* buffers, int count, float divisor, int64_t i) {
    float out = buffers[0][i];
    for (int h = 1; h < count; h++) out = out + buffers[h][i];
    if (divisor != 1.0f) out = out / divisor;
    return out;
}

// ---- Reductions in a fixed order ---------------------------------------------------------------
// A reduction runs as REDUCE_BLOCKS blocks of REDUCE_THREADS threads whatever the GPU: thread k
// sums elements k, k + S, k + 2S, ... (S = all threads) in double, each block folds its threads'
// sums as a binary tree, and one block folds the block sums the same way. The order depends on
// nothing but n, so the bits are the same run to run and GPU to GPU, and sum_squares_in_order
// below replays it on the host.
constexpr int REDUCE_THREADS = 256;
constexpr int REDUCE_BLOCKS = 1024;
constexpr int64_t REDUCE_STRIDE = (int64_t)REDUCE_THREADS * REDUCE_BLOCKS;
// The gradient ingest's lanes: sums by position mod 8 from a chunk's start, as the CPU engine's.
constexpr int INGEST_LANES = 8;

OSC_FN double strided_squares(const float* g, int64_t n, int64_t k) {
    double sum = 0;
    for (int64_t i = k; i < n; i += REDUCE_STRIDE) sum += (double)g[i] * (double)g[i];
    return sum;
}

// The tree fold the device does with one thread per pair: v[t] += v[t + half], half = n/2 ... 1.
inline double tree_fold_host(double* v, int n) {
    for (int half = n / 2; half > 0; half /= 2) {
        for (int t = 0; t < half; t++) v[t] = v[t] + v[t + half];
    }
    return v[0];
}

// The device's sum of squares of g[0, n), replayed on the host in the device's order.
inline double sum_squares_in_order(const float* g, int64_t n) {
    static thread_local double threads[REDUCE_THREADS];
    static thread_local double blocks[REDUCE_BLOCKS];
    for (int b = 0; b < REDUCE_BLOCKS; b++) {
        for (int t = 0; t < REDUCE_THREADS; t++) threads[t] = strided_squares(g, n, (int64_t)b * REDUCE_THREADS + t);
        blocks[b] = tree_fold_host(threads, REDUCE_THREADS);
    }
    return tree_fold_host(blocks, REDUCE_BLOCKS);
}

}  // namespace osc
