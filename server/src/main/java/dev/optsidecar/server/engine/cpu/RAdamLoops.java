package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.engine.kernel.Lerp;

/** The CPU loops of torch's RAdam ({@code radam_*}) and the paper's ({@code radam_original_*}). */
final class RAdamLoops {
    private RAdamLoops() {}

    /** The first-moment update in the two float forms torch has used: 1.13's fused mul-add, 2.x's lerp. */
    private record FirstMoment(float beta1, float oneMinusBeta1, boolean lerp) {
        static FirstMoment of(KernelCall c, boolean lerp) {
            return new FirstMoment(c.scalar("beta1"), c.scalar("one_minus_beta1"), lerp);
        }

        float update(float m, float g) {
            return lerp ? Lerp.lerp(m, g, oneMinusBeta1) : Math.fma(oneMinusBeta1, g, m * beta1);
        }
    }

    static BlockLoop sgdPhase(KernelCall c) {
        float scale = c.scalar("grad_scale");
        boolean decays = c.flag("decoupled_weight_decay");
        boolean l2 = c.flag("coupled_weight_decay");
        float decay = c.scalar("decay_factor");
        float lambda = c.scalar("weight_decay");
        float b2 = c.scalar("beta2");
        float oneMinusB2 = c.scalar("one_minus_beta2");
        FirstMoment moment = FirstMoment.of(c, c.flag("lerp_first_moment"));
        float bc1F = c.scalar("bias_correction1");
        float lrF = c.scalar("lr");
        int mSlot = c.slot("exp_avg");
        int vSlot = c.slot("exp_avg_sq");
        return (p, g, s, from, to) -> {
            float[] m = s[mSlot];
            float[] v = s[vSlot];
            for (int i = from; i < to; i++) {
                float pi = decays ? p[i] * decay : p[i];
                float gi = l2 ? scale * g[i] + lambda * pi : scale * g[i];
                float mi = moment.update(m[i], gi);
                m[i] = mi;
                v[i] = v[i] * b2 + oneMinusB2 * gi * gi;
                p[i] = pi - (mi / bc1F) * lrF;
            }
        };
    }

    static BlockLoop rectified(KernelCall c) {
        float scale = c.scalar("grad_scale");
        boolean decays = c.flag("decoupled_weight_decay");
        boolean l2 = c.flag("coupled_weight_decay");
        boolean lerpFirstMoment = c.flag("lerp_first_moment");
        float decay = c.scalar("decay_factor");
        float lambda = c.scalar("weight_decay");
        float b2 = c.scalar("beta2");
        float oneMinusB2 = c.scalar("one_minus_beta2");
        FirstMoment moment = FirstMoment.of(c, lerpFirstMoment);
        float stepSize = c.scalar("step_size");
        float epsF = c.scalar("eps");
        int mSlot = c.slot("exp_avg");
        int vSlot = c.slot("exp_avg_sq");
        if (scale == 1f && !decays && !l2 && !lerpFirstMoment) {
            // The common configuration, kept free of every operation it does not need. Fused
            // multiply-adds (one rounding where torch's scalar tail rounds twice; its vector loops
            // use FMA too) trim the arithmetic that otherwise shows at cache-resident sizes.
            float b1 = c.scalar("beta1");
            float oneMinusB1 = c.scalar("one_minus_beta1");
            return (p, g, s, from, to) -> {
                float[] m = s[mSlot];
                float[] v = s[vSlot];
                for (int i = from; i < to; i++) {
                    float gi = g[i];
                    float mi = Math.fma(oneMinusB1, gi, m[i] * b1);
                    float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                    m[i] = mi;
                    v[i] = vi;
                    p[i] = Math.fma(-stepSize, mi / ((float) Math.sqrt(vi) + epsF), p[i]);
                }
            };
        }
        return (p, g, s, from, to) -> {
            float[] m = s[mSlot];
            float[] v = s[vSlot];
            for (int i = from; i < to; i++) {
                float pi = decays ? p[i] * decay : p[i];
                float gi = l2 ? scale * g[i] + lambda * pi : scale * g[i];
                float mi = moment.update(m[i], gi);
                float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                m[i] = mi;
                v[i] = vi;
                p[i] = Math.fma(-stepSize, mi / ((float) Math.sqrt(vi) + epsF), pi);
            }
        };
    }

    static BlockLoop originalRectified(KernelCall c) {
        float gradScale = c.scalar("grad_scale");
        FirstMoment moment = FirstMoment.of(c, false);
        float b2 = c.scalar("beta2");
        float oneMinusB2 = c.scalar("one_minus_beta2");
        float negDecay = c.scalar("neg_decay");
        float negStep = c.scalar("neg_step");
        float epsF = c.scalar("eps");
        int mSlot = c.slot("exp_avg");
        int vSlot = c.slot("exp_avg_sq");
        return (p, g, s, from, to) -> {
            float[] m = s[mSlot];
            float[] v = s[vSlot];
            for (int i = from; i < to; i++) {
                float gi = gradScale * g[i];
                float vi = v[i] * b2 + oneMinusB2 * gi * gi;
                float mi = moment.update(m[i], gi);
                v[i] = vi;
                m[i] = mi;
                float pi = p[i];
                pi = pi + negDecay * pi;
                p[i] = pi + negStep * (mi / ((float) Math.sqrt(vi) + epsF));
            }
        };
    }

    static BlockLoop originalSgdPhase(KernelCall c) {
        float gradScale = c.scalar("grad_scale");
        FirstMoment moment = FirstMoment.of(c, false);
        float b2 = c.scalar("beta2");
        float oneMinusB2 = c.scalar("one_minus_beta2");
        float negDecay = c.scalar("neg_decay");
        float negStep = c.scalar("neg_step");
        boolean moveParams = c.flag("degenerated_to_sgd");
        int mSlot = c.slot("exp_avg");
        int vSlot = c.slot("exp_avg_sq");
        return (p, g, s, from, to) -> {
            float[] m = s[mSlot];
            float[] v = s[vSlot];
            for (int i = from; i < to; i++) {
                float gi = gradScale * g[i];
                v[i] = v[i] * b2 + oneMinusB2 * gi * gi;
                float mi = moment.update(m[i], gi);
                m[i] = mi;
                if (moveParams) {
                    float pi = p[i];
                    pi = pi + negDecay * pi;
                    p[i] = pi + negStep * mi;
                }
            }
        };
    }
}
