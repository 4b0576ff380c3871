package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

import java.util.List;

/**
 * Adam and AdamW, as torch's {@code _single_tensor_adam} / {@code _single_tensor_adamw}:
 * <pre>
 *   θ = θ(1 − lr·λ)                  (AdamW: decoupled decay)
 *   g = g + λθ                       (Adam: coupled L2)
 *   m = β1·m + (1 − β1)·g
 *   v = β2·v + (1 − β2)·g²
 *   v̂max = max(v̂max, v)             (amsgrad; used in place of v below)
 *   θ = θ − (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps)
 * </pre>
 * eps is added after the bias correction of v. Scalars are computed once per step in double; the
 * loop multiplies by 1/sqrt(bc2) where torch divides by sqrt(bc2), an ulp apart, to keep one
 * divide per element.
 */
public final class Adam extends TensorwiseAlgorithm {
    public static final AlgorithmDefinition ADAM = definition("Adam", 0.0, false);
    public static final AlgorithmDefinition ADAMW = definition("AdamW", 1e-2, true);

    private static AlgorithmDefinition definition(String name, double defaultWeightDecay, boolean decoupled) {
        return new AlgorithmDefinition(name,
                Hyperparameters.defaults("lr", 1e-3, "betas", new double[] {0.9, 0.999}, "eps", 1e-8,
                        "weight_decay", defaultWeightDecay, "amsgrad", false, "maximize", false),
                hp -> new Adam(hp, decoupled));
    }

    private final double beta1;
    private final double beta2;
    private final double eps;
    private final double weightDecay;
    private final boolean decoupled;
    private final boolean amsgrad;
    private final boolean maximize;

    private Adam(Hyperparameters hp, boolean decoupled) {
        hp.checkAdamFamily();
        double[] betas = hp.numbers("betas");
        beta1 = betas[0];
        beta2 = betas[1];
        eps = hp.number("eps");
        weightDecay = hp.number("weight_decay");
        amsgrad = hp.flag("amsgrad");
        maximize = hp.flag("maximize");
        this.decoupled = decoupled;
    }

    @Override
    public List<String> stateSlots() {
        return amsgrad ? List.of("exp_avg", "exp_avg_sq", "max_exp_avg_sq") : List.of("exp_avg", "exp_avg_sq");
    }

    @Override
    FusedStep step(long t, double lr, float gradScale) {
        float scale = maximize ? -gradScale : gradScale; // maximize and clipping, on g
        // As torch: a zero weight_decay touches neither θ nor g.
        boolean decays = weightDecay != 0 && decoupled;
        boolean l2 = weightDecay != 0 && !decoupled;
        float decay = (float) (1 - lr * weightDecay);
        float lambda = (float) weightDecay;
        float b1 = (float) beta1;
        float oneMinusB1 = (float) (1 - beta1);
        float b2 = (float) beta2;
        float oneMinusB2 = (float) (1 - beta2);
        double bc1 = 1 - Math.pow(beta1, t);
        double bc2 = 1 - Math.pow(beta2, t);
        float stepSize = (float) (lr / bc1);
        // sqrt(v)/sqrt(bc2) as a multiply: one divide per element is left, in m / denom. Fused
        // multiply-adds as in RAdam, an ulp from torch's scalar rounding.
        float invSqrtBc2 = (float) (1 / Math.sqrt(bc2));
        float epsF = (float) eps;
        if (amsgrad) {
            return (p, g, s, from, to) -> {
                float[] m = s[0];
                float[] v = s[1];
                float[] vmax = s[2];
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
            float[] m = s[0];
            float[] v = s[1];
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
