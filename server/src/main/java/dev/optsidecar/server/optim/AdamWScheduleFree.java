package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;
import dev.optsidecar.server.engine.ViewKernel;

import java.util.List;

/**
 * Schedule-Free AdamW (schedule_free ≥ 1.3 semantics; algorithms.md §5.4). θ holds y; state z,
 * exp_avg_sq v and, with inner_momentum μ ≠ 0, exp_avg m. β1 only interpolates y. Per step:
 * <pre>
 *   lr_k = lr · min(1, (k+1)/warmup_steps);  c from §5.2;  bc2 = 1 − β2^(k+1)
 *   v = β2·v + (1 − β2)·g²
 *   denom = sqrt(v / bc2) + eps
 *   u = g / denom,  or with μ ≠ 0:  m = μ·m + (1 − μ)·g,  u = (m / (1 − μ^(k+1))) / denom
 *   u = u + λ·y                    (weight decay at y, not normalised)
 *   y = lerp(y, z, c);  y = y + lr_k·(β1(1 − c) − 1)·u;  z = z − lr_k·u
 * </pre>
 */
public final class AdamWScheduleFree implements Algorithm {
    public static final AlgorithmDefinition DEFINITION = new AlgorithmDefinition("AdamWScheduleFree",
            Hyperparameters.defaults("lr", 0.0025, "betas", new double[] {0.9, 0.999}, "eps", 1e-8,
                    "weight_decay", 0.0, "warmup_steps", 0.0, "r", 0.0, "weight_lr_power", 2.0,
                    "inner_momentum", 0.0),
            AdamWScheduleFree::new);

    private final double beta1;
    private final double beta2;
    private final double eps;
    private final double weightDecay;
    private final long warmupSteps;
    private final double r;
    private final double weightLrPower;
    private final double innerMomentum;

    private AdamWScheduleFree(Hyperparameters hp) {
        ScheduleFreeAveraging.checkAdamFamily(hp);
        double[] betas = hp.numbers("betas");
        beta1 = betas[0];
        beta2 = betas[1];
        eps = hp.number("eps");
        weightDecay = hp.number("weight_decay");
        warmupSteps = ScheduleFreeAveraging.wholeSteps(hp, "warmup_steps");
        r = hp.number("r");
        weightLrPower = hp.number("weight_lr_power");
        innerMomentum = hp.number("inner_momentum");
        hp.check(innerMomentum >= 0 && innerMomentum < 1, "inner_momentum", "must be in [0, 1)");
    }

    @Override
    public List<GroupScalar> groupScalars() {
        return ScheduleFreeAveraging.GROUP_SCALARS;
    }

    @Override
    public List<String> stateSlots() {
        return innerMomentum != 0 ? List.of("z", "exp_avg_sq", "exp_avg") : List.of("z", "exp_avg_sq");
    }

    @Override
    public StepPlan plan(GroupScalars scalars, double lr, float gradScale) {
        long k = ScheduleFreeAveraging.steps(scalars);
        double lrK = lr * (k < warmupSteps ? (double) (k + 1) / warmupSteps : 1.0);
        ScheduleFreeAveraging.Advance advance = ScheduleFreeAveraging.advance(scalars, lrK, r, weightLrPower);
        double c = advance.c();
        float cF = (float) c;
        float yCoef = (float) (lrK * (beta1 * (1 - c) - 1));
        float lrKF = (float) lrK;
        float b2 = (float) beta2;
        float oneMinusB2 = (float) (1 - beta2);
        float invBc2 = (float) (1 / (1 - Math.pow(beta2, k + 1)));
        float epsF = (float) eps;
        boolean decays = weightDecay != 0;
        float lambda = (float) weightDecay;
        boolean momentum = innerMomentum != 0;
        float mu = (float) innerMomentum;
        float oneMinusMu = (float) (1 - innerMomentum);
        float momentumCorrection = (float) (1 - Math.pow(innerMomentum, k + 1));
        // The common configuration (z set, no clipping, no inner momentum) has loops of its own,
        // without the gradScale multiply: beside the sqrt and divide, every vector operation costs
        // time once the arrays sit in cache. One of them also blends an EMA shadow.
        boolean common = gradScale == 1f && !momentum;
        StepPlan.WithEma withEma = !common ? null : (t, emaSlot, keep, take) -> t == 1 ? null
                : (p, g, s, from, to) -> {
                    float[] z = s[0];
                    float[] v = s[1];
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
                        z[i] = Math.fma(-lrKF, u, zi);
                        e[i] = Math.fma(take, yNew, keep * e[i]);
                    }
                };
        return new StepPlan(t -> {
            boolean first = t == 1;
            if (!first && common) {
                FusedStep fast = (p, g, s, from, to) -> {
                    float[] z = s[0];
                    float[] v = s[1];
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
                        z[i] = Math.fma(-lrKF, u, zi);
                    }
                };
                return fast;
            }
            FusedStep step = (p, g, s, from, to) -> {
                float[] z = s[0];
                float[] v = s[1];
                float[] m = momentum ? s[2] : null;
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
                    z[i] = Math.fma(-lrKF, u, zi);
                }
            };
            return step;
        }, advance.after(), lrK, c, withEma);
    }

    @Override
    public ViewKernel evalView() {
        return ScheduleFreeAveraging.evalView(beta1);
    }

    @Override
    public FusedStep trainFromEval() {
        return ScheduleFreeAveraging.trainFromEval(beta1);
    }
}
