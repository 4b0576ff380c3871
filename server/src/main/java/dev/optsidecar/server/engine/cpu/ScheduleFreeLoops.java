package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.engine.kernel.Lerp;

/**
 * The CPU loops of the Schedule-Free kernels, their eval view and train-from-eval conversion.
 * Configurations that are common in practice (z already set, no clipping) have loops of their
 * own without the operations they do not need: beside the sqrt and divide, every vector operation
 * costs time once the arrays sit in cache.
 */
final class ScheduleFreeLoops {
    private ScheduleFreeLoops() {}

    static BlockLoop sgd(KernelCall call) {
        float cF = call.scalar("c");
        float yCoef = call.scalar("y_coefficient");
        float zCoef = call.scalar("z_coefficient");
        boolean decays = call.flag("weight_decay");
        float lambda = call.scalar("weight_decay");
        float gradScale = call.scalar("grad_scale");
        boolean first = call.flag("first_step"); // z is created as a copy of y at a tensor's first step
        int zSlot = call.slot("z");
        return (p, g, s, from, to) -> {
            float[] z = s[zSlot];
            for (int i = from; i < to; i++) {
                float y = p[i];
                float zi = first ? y : z[i];
                float u = decays ? Math.fma(lambda, y, gradScale * g[i]) : gradScale * g[i];
                float yNew = Lerp.lerp(y, zi, cF);
                p[i] = Math.fma(yCoef, u, yNew);
                z[i] = Math.fma(zCoef, u, zi);
            }
        };
    }

    /** Whether an AdamW call takes the common loop: z set, no clipping. */
    static boolean adamWCommon(KernelCall call) {
        return !call.flag("first_step") && call.scalar("grad_scale") == 1f;
    }

    static BlockLoop adamW(KernelCall call, boolean momentum) {
        float cF = call.scalar("c");
        float yCoef = call.scalar("y_coefficient");
        float zCoef = call.scalar("z_coefficient");
        float b2 = call.scalar("beta2");
        float oneMinusB2 = call.scalar("one_minus_beta2");
        float invBc2 = call.scalar("inv_bias_correction2");
        float epsF = call.scalar("eps");
        boolean decays = call.flag("weight_decay");
        float lambda = call.scalar("weight_decay");
        float gradScale = call.scalar("grad_scale");
        boolean first = call.flag("first_step");
        int zSlot = call.slot("z");
        int vSlot = call.slot("exp_avg_sq");
        if (!momentum && adamWCommon(call)) {
            return (p, g, s, from, to) -> {
                float[] z = s[zSlot];
                float[] v = s[vSlot];
                for (int i = from; i < to; i++) {
                    float y = p[i];
                    float zi = z[i];
                    float gi = g[i];
                    float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                    v[i] = vi;
                    float u = gi / ((float) Math.sqrt(vi * invBc2) + epsF);
                    if (decays) {
                        u = Math.fma(lambda, y, u);
                    }
                    float yNew = Lerp.lerp(y, zi, cF);
                    p[i] = Math.fma(yCoef, u, yNew);
                    z[i] = Math.fma(zCoef, u, zi);
                }
            };
        }
        float mu = momentum ? call.scalar("momentum") : 0f;
        float oneMinusMu = momentum ? call.scalar("one_minus_momentum") : 0f;
        float momentumCorrection = momentum ? call.scalar("momentum_correction") : 0f;
        int mSlot = momentum ? call.slot("exp_avg") : -1;
        return (p, g, s, from, to) -> {
            float[] z = s[zSlot];
            float[] v = s[vSlot];
            float[] m = momentum ? s[mSlot] : null;
            for (int i = from; i < to; i++) {
                float y = p[i];
                float zi = first ? y : z[i];
                float gi = gradScale * g[i];
                float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                v[i] = vi;
                float denom = (float) Math.sqrt(vi * invBc2) + epsF;
                float u;
                if (momentum) {
                    float mi = Math.fma(oneMinusMu, gi, m[i] * mu);
                    m[i] = mi;
                    u = (mi / momentumCorrection) / denom;
                } else {
                    u = gi / denom;
                }
                if (decays) {
                    u = Math.fma(lambda, y, u);
                }
                float yNew = Lerp.lerp(y, zi, cF);
                p[i] = Math.fma(yCoef, u, yNew);
                z[i] = Math.fma(zCoef, u, zi);
            }
        };
    }

    /**
     * {@code adamw_schedule_free} in its common configuration followed by {@code ema_blend}, in one
     * loop: the shadow blends θ_new while it is still in a register, so the most common composition
     * reads and writes each array once. The same bits as running the two one after the other.
     */
    static BlockLoop adamWWithEma(KernelCall call, KernelCall ema) {
        float cF = call.scalar("c");
        float yCoef = call.scalar("y_coefficient");
        float zCoef = call.scalar("z_coefficient");
        float b2 = call.scalar("beta2");
        float oneMinusB2 = call.scalar("one_minus_beta2");
        float invBc2 = call.scalar("inv_bias_correction2");
        float epsF = call.scalar("eps");
        boolean decays = call.flag("weight_decay");
        float lambda = call.scalar("weight_decay");
        float keep = ema.scalar("keep");
        float take = ema.scalar("take");
        int zSlot = call.slot("z");
        int vSlot = call.slot("exp_avg_sq");
        int emaSlot = ema.slot("shadow");
        return (p, g, s, from, to) -> {
            float[] z = s[zSlot];
            float[] v = s[vSlot];
            float[] e = s[emaSlot];
            for (int i = from; i < to; i++) {
                float y = p[i];
                float zi = z[i];
                float gi = g[i];
                float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                v[i] = vi;
                float u = gi / ((float) Math.sqrt(vi * invBc2) + epsF);
                if (decays) {
                    u = Math.fma(lambda, y, u);
                }
                float yNew = Math.fma(yCoef, u, Lerp.lerp(y, zi, cF));
                p[i] = yNew;
                z[i] = Math.fma(zCoef, u, zi);
                e[i] = Math.fma(take, yNew, keep * e[i]);
            }
        };
    }

    static BlockLoop radam(KernelCall call) {
        float cF = call.scalar("c");
        float yCoef = call.scalar("y_coefficient");
        float zCoef = call.scalar("z_coefficient");
        float b2 = call.scalar("beta2");
        float oneMinusB2 = call.scalar("one_minus_beta2");
        float invBc2 = call.scalar("inv_bias_correction2");
        float epsF = call.scalar("eps");
        boolean decays = call.flag("weight_decay");
        float lambda = call.scalar("weight_decay");
        float gradScale = call.scalar("grad_scale");
        boolean first = call.flag("first_step");
        boolean rectified = call.flag("rectified");
        int zSlot = call.slot("z");
        int vSlot = call.slot("exp_avg_sq");
        return (p, g, s, from, to) -> {
            float[] z = s[zSlot];
            float[] v = s[vSlot];
            for (int i = from; i < to; i++) {
                float y = p[i];
                float zi = first ? y : z[i];
                float gi = gradScale * g[i];
                float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                v[i] = vi;
                float u = rectified ? gi / ((float) Math.sqrt(vi * invBc2) + epsF) : gi;
                if (decays) {
                    u = Math.fma(lambda, y, u);
                }
                float yNew = Lerp.lerp(y, zi, cF);
                p[i] = Math.fma(yCoef, u, yNew);
                z[i] = Math.fma(zCoef, u, zi);
            }
        };
    }

    static BlockLoop radamPrescaled(KernelCall call) {
        float cF = call.scalar("c");
        float b2 = call.scalar("beta2");
        float oneMinusB2 = call.scalar("one_minus_beta2");
        float epsScaled = call.scalar("scaled_eps");
        float yCoefScaled = call.scalar("scaled_y_coefficient");
        float zCoefScaled = call.scalar("scaled_z_coefficient");
        int zSlot = call.slot("z");
        int vSlot = call.slot("exp_avg_sq");
        return (p, g, s, from, to) -> {
            float[] z = s[zSlot];
            float[] v = s[vSlot];
            for (int i = from; i < to; i++) {
                float y = p[i];
                float zi = z[i];
                float gi = g[i];
                float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                v[i] = vi;
                float uScaled = gi / ((float) Math.sqrt(vi) + epsScaled);
                float yNew = Lerp.lerp(y, zi, cF);
                p[i] = Math.fma(yCoefScaled, uScaled, yNew);
                z[i] = Math.fma(zCoefScaled, uScaled, zi);
            }
        };
    }

    /** x = lerp(y, z, 1 − 1/β), as the reference's eval(). */
    static ViewLoop evalView(KernelCall call) {
        float w = call.scalar("weight");
        int zSlot = call.slot("z");
        return (p, state, from, to, out, at) -> {
            float[] z = state[zSlot];
            for (int i = from; i < to; i++) {
                out[at + i - from] = Lerp.lerp(p[i], z[i], w);
            }
        };
    }

    /** y = lerp(x, z, 1 − β), as the reference's train(): for weights saved in eval mode. */
    static BlockLoop trainFromEval(KernelCall call) {
        float w = call.scalar("weight");
        int zSlot = call.slot("z");
        return (p, g, state, from, to) -> {
            float[] z = state[zSlot];
            for (int i = from; i < to; i++) {
                p[i] = Lerp.lerp(p[i], z[i], w);
            }
        };
    }
}
