package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

import java.util.List;

/**
 * RAdam with torch semantics ({@code _single_tensor_radam}), including torch 2.x's
 * decoupled_weight_decay:
 * <pre>
 *   θ = θ(1 − lr·λ)  (decoupled, every step)   or   g = g + λθ  (coupled)
 *   m = β1·m + (1 − β1)·g        (torch 1.13: mul + add; torch 2.x: lerp(m, g, 1 − β1))
 *   v = β2·v + (1 − β2)·g²
 *   m̂ = m / bc1
 *   ρ∞ = 2/(1 − β2) − 1,  ρt = ρ∞ − 2t·β2^t / bc2
 *   ρt > 5:  θ = θ − lr·r·sqrt(bc2)/bc1 · m / (sqrt(v) + eps),  r = sqrt((ρt−4)(ρt−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρt))
 *   else:    θ = θ − m̂·lr
 * </pre>
 * eps is added to the uncorrected sqrt(v), unlike Adam. The rectified step folds its scalars into
 * one coefficient computed in double (as the paper's code does), which leaves a single divide per
 * element; torch multiplies them in float one by one, a difference of an ulp or two. Math.fma
 * compiles to one instruction on x86-64 with FMA3 (every server CPU since 2013) and on AArch64.
 */
public final class RAdam extends TensorwiseAlgorithm {
    public static final AlgorithmDefinition TORCH = definition("RAdam", false);
    public static final AlgorithmDefinition TORCH_2X = definition("RAdam(torch2.x)", true);

    private static AlgorithmDefinition definition(String name, boolean lerpFirstMoment) {
        return new AlgorithmDefinition(name,
                Hyperparameters.defaults("lr", 1e-3, "betas", new double[] {0.9, 0.999}, "eps", 1e-8,
                        "weight_decay", 0.0, "decoupled_weight_decay", false, "maximize", false),
                hp -> new RAdam(hp, lerpFirstMoment));
    }

    private final double beta1;
    private final double beta2;
    private final double eps;
    private final double weightDecay;
    private final boolean decoupled;
    private final boolean maximize;
    private final boolean lerpFirstMoment;

    private RAdam(Hyperparameters hp, boolean lerpFirstMoment) {
        hp.checkAdamFamily();
        double[] betas = hp.numbers("betas");
        beta1 = betas[0];
        beta2 = betas[1];
        eps = hp.number("eps");
        weightDecay = hp.number("weight_decay");
        decoupled = hp.flag("decoupled_weight_decay");
        maximize = hp.flag("maximize");
        this.lerpFirstMoment = lerpFirstMoment;
    }

    @Override
    public List<String> stateSlots() {
        return List.of("exp_avg", "exp_avg_sq");
    }

    /** ρt, the length of the approximated SMA, for 1-based step t. */
    static double rho(double beta2, long t) {
        double rhoInf = 2 / (1 - beta2) - 1;
        double beta2t = Math.pow(beta2, t);
        return rhoInf - 2 * t * beta2t / (1 - beta2t);
    }

    /** The variance rectification term r(ρt). */
    static double rectification(double beta2, double rhoT) {
        double rhoInf = 2 / (1 - beta2) - 1;
        return Math.sqrt((rhoT - 4) * (rhoT - 2) * rhoInf / ((rhoInf - 4) * (rhoInf - 2) * rhoT));
    }

    @Override
    FusedStep step(long t, double lr, float gradScale) {
        float scale = maximize ? -gradScale : gradScale; // maximize and clipping, on g
        // As torch: with weight_decay = 0 neither decay form touches θ or g at all.
        boolean decays = weightDecay != 0 && decoupled;
        boolean l2 = weightDecay != 0 && !decoupled;
        float decay = (float) (1 - lr * weightDecay);
        float lambda = (float) weightDecay;
        float b2 = (float) beta2;
        float oneMinusB2 = (float) (1 - beta2);
        double bc1 = 1 - Math.pow(beta1, t);
        double bc2 = 1 - Math.pow(beta2, t);
        FirstMoment moment = FirstMoment.of(beta1, lerpFirstMoment);
        double rhoT = rho(beta2, t);
        if (!(rhoT > 5)) {
            float bc1F = (float) bc1;
            float lrF = (float) lr;
            return (p, g, s, from, to) -> {
                float[] m = s[0];
                float[] v = s[1];
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
        // lr · r · sqrt(bc2) / bc1 in double, once: the loop keeps one sqrt and one divide per element.
        float stepSize = (float) (lr * rectification(beta2, rhoT) * Math.sqrt(bc2) / bc1);
        float epsF = (float) eps;
        if (scale == 1f && !decays && !l2 && !lerpFirstMoment) {
            // The common configuration, kept free of every operation it does not need. Fused
            // multiply-adds (one rounding where torch's scalar tail rounds twice; its vector loops
            // use FMA too) trim the arithmetic that otherwise shows at cache-resident sizes.
            return (p, g, s, from, to) -> {
                float[] m = s[0];
                float[] v = s[1];
                for (int i = from; i < to; i++) {
                    float gi = g[i];
                    float mi = moment.update(m[i], gi);
                    float vi = Math.fma(oneMinusB2 * gi, gi, v[i] * b2);
                    m[i] = mi;
                    v[i] = vi;
                    p[i] = Math.fma(-stepSize, mi / ((float) Math.sqrt(vi) + epsF), p[i]);
                }
            };
        }
        return (p, g, s, from, to) -> {
            float[] m = s[0];
            float[] v = s[1];
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
}
