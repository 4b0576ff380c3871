package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.kernel.KernelCall;

/** The CPU loops of {@code adam} and {@code adam_amsgrad}. */
final class AdamLoops {
    private AdamLoops() {}

    static BlockLoop adam(KernelCall c, boolean amsgrad) {
        float scale = c.scalar("grad_scale");
        boolean decays = c.flag("decoupled_weight_decay");
        boolean l2 = c.flag("coupled_weight_decay");
        float decay = c.scalar("decay_factor");
        float lambda = c.scalar("weight_decay");
        float b1 = c.scalar("beta1");
        float oneMinusB1 = c.scalar("one_minus_beta1");
        float b2 = c.scalar("beta2");
        float oneMinusB2 = c.scalar("one_minus_beta2");
        float stepSize = c.scalar("step_size");
        float invSqrtBc2 = c.scalar("inv_sqrt_bias_correction2");
        float epsF = c.scalar("eps");
        int mSlot = c.slot("exp_avg");
        int vSlot = c.slot("exp_avg_sq");
        if (amsgrad) {
            int maxSlot = c.slot("max_exp_avg_sq");
            return (p, g, s, from, to) -> {
                float[] m = s[mSlot];
                float[] v = s[vSlot];
                float[] vmax = s[maxSlot];
                for (int i = from; i < to; i++) {
                    float pi = decays ? p[i] * decay : p[i];
                    float gi = l2 ? scale * g[i] + lambda * pi : scale * g[i];
                    float mi = Math.fma(oneMinusB1, gi, m[i] * b1);
                    float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                    float vm = Math.max(vmax[i], vi);
                    m[i] = mi;
                    v[i] = vi;
                    vmax[i] = vm;
                    p[i] = Math.fma(-stepSize, mi / Math.fma((float) Math.sqrt(vm), invSqrtBc2, epsF), pi);
                }
            };
        }
        return (p, g, s, from, to) -> {
            float[] m = s[mSlot];
            float[] v = s[vSlot];
            for (int i = from; i < to; i++) {
                float pi = decays ? p[i] * decay : p[i];
                float gi = l2 ? scale * g[i] + lambda * pi : scale * g[i];
                float mi = Math.fma(oneMinusB1, gi, m[i] * b1);
                float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                m[i] = mi;
                v[i] = vi;
                p[i] = Math.fma(-stepSize, mi / Math.fma((float) Math.sqrt(vi), invSqrtBc2, epsF), pi);
            }
        };
    }
}
