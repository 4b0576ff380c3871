package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

import java.util.List;
import java.util.Map;

/**
 * RAdam with torch semantics ({@code _single_tensor_radam}), including torch 2.x's
 * decoupled_weight_decay:
 * <pre>
 *   θ = θ(1 − lr·λ)  (decoupled, every step)   or   g = g + λθ  (coupled)
 *   m = β1·m + (1 − β1)·g        (torch 1.13: mul + add; torch 2.x: lerp(m, g, 1 − β1))
 *   v = β2·v + (1 − β2)·g²
 *   m̂ = m / bc1
 *   ρ∞ = 2/(1 − β2) − 1,  ρt = ρ∞ − 2t·β2^t / bc2
 *   ρt > 5:  θ = θ − m̂·lr·(sqrt(bc2) / (sqrt(v) + eps))·r,  r = sqrt((ρt−4)(ρt−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρt))
 *   else:    θ = θ − m̂·lr
 * </pre>
 * eps is added to the uncorrected sqrt(v), unlike Adam.
 */
public final class RAdam implements Algorithm {
    public static final AlgorithmDefinition TORCH = definition("RAdam", false);
    public static final AlgorithmDefinition TORCH_2X = definition("RAdam(torch2.x)", true);

    private static AlgorithmDefinition definition(String name, boolean lerpFirstMoment) {
        return new AlgorithmDefinition() {
            @Override
            public String name() {
                return name;
            }

            @Override
            public Map<String, Object> defaults() {
                return Hyperparameters.defaults("lr", 1e-3, "betas", new double[] {0.9, 0.999}, "eps", 1e-8,
                        "weight_decay", 0.0, "decoupled_weight_decay", false, "maximize", false);
            }

            @Override
            public Algorithm create(Hyperparameters hp) {
                return new RAdam(hp, lerpFirstMoment);
            }
        };
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
    public FusedStep step(long t, double lr) {
        float sign = maximize ? -1f : 1f;
        float decay = decoupled ? (float) (1 - lr * weightDecay) : 1f;
        float l2 = decoupled ? 0f : (float) weightDecay;
        float b2 = (float) beta2;
        float oneMinusB2 = (float) (1 - beta2);
        double bc1 = 1 - Math.pow(beta1, t);
        double bc2 = 1 - Math.pow(beta2, t);
        float bc1F = (float) bc1;
        float lrF = (float) lr;
        FirstMoment moment = FirstMoment.of(beta1, lerpFirstMoment);
        double rhoT = rho(beta2, t);
        if (!(rhoT > 5)) {
            return (p, g, s, from, to) -> {
                float[] m = s[0];
                float[] v = s[1];
                for (int i = from; i < to; i++) {
                    float pi = p[i] * decay;
                    float gi = sign * g[i] + l2 * pi;
                    float mi = moment.update(m[i], gi);
                    m[i] = mi;
                    v[i] = v[i] * b2 + oneMinusB2 * gi * gi;
                    p[i] = pi - (mi / bc1F) * lrF;
                }
            };
        }
        float rect = (float) rectification(beta2, rhoT);
        float sqrtBc2 = (float) Math.sqrt(bc2);
        float epsF = (float) eps;
        if (sign == 1f && decay == 1f) {
            // The usual configuration (no maximize, no decoupled decay) with its multiplications by
            // exactly 1 left out: x·1 = x, so results are bitwise the same. Even at memory speed the
            // arithmetic here (two divides and a sqrt among ~20 vector ops per element) slows the
            // loads down, so the two multiplies are worth ~3% of a 10M-parameter step.
            return (p, g, s, from, to) -> {
                float[] m = s[0];
                float[] v = s[1];
                for (int i = from; i < to; i++) {
                    float pi = p[i];
                    float gi = g[i] + l2 * pi;
                    float mi = moment.update(m[i], gi);
                    float vi = v[i] * b2 + oneMinusB2 * gi * gi;
                    m[i] = mi;
                    v[i] = vi;
                    // torch evaluates scalar / tensor as reciprocal(tensor) * scalar.
                    float adaptive = (1f / ((float) Math.sqrt(vi) + epsF)) * sqrtBc2;
                    p[i] = pi - (mi / bc1F) * lrF * adaptive * rect;
                }
            };
        }
        return (p, g, s, from, to) -> {
            float[] m = s[0];
            float[] v = s[1];
            for (int i = from; i < to; i++) {
                float pi = p[i] * decay;
                float gi = sign * g[i] + l2 * pi;
                float mi = moment.update(m[i], gi);
                float vi = v[i] * b2 + oneMinusB2 * gi * gi;
                m[i] = mi;
                v[i] = vi;
                // torch evaluates scalar / tensor as reciprocal(tensor) * scalar.
                float adaptive = (1f / ((float) Math.sqrt(vi) + epsF)) * sqrtBc2;
                p[i] = pi - (mi / bc1F) * lrF * adaptive * rect;
            }
        };
    }
}
