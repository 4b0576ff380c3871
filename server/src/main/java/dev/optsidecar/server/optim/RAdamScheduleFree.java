package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;
import dev.optsidecar.server.engine.ViewKernel;

import java.util.List;

/**
 * Schedule-Free RAdam (algorithms.md §5.5): no warmup and no schedule; RAdam's rectification
 * scales the lr instead. θ holds y; state z and exp_avg_sq v. With t = k+1:
 * <pre>
 *   ρt > 4:  rect = sqrt((ρt−4)(ρt−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρt)),  u = g / (sqrt(v / bc2) + eps)
 *   else:    rect = 0 (silent_sgd_phase) or 1,                 u = g
 *   lr_k = lr · rect;  c from §5.2;  v = β2·v + (1 − β2)·g² on every step
 *   u = u + λ·y;  y = lerp(y, z, c);  y = y + lr_k·(β1(1 − c) − 1)·u;  z = z − lr_k·u
 * </pre>
 * In the silent phase lr_k = 0, so c = 0 and y, z stay put while v and k advance.
 */
public final class RAdamScheduleFree implements Algorithm {
    public static final AlgorithmDefinition DEFINITION = new AlgorithmDefinition("RAdamScheduleFree",
            Hyperparameters.defaults("lr", 0.0025, "betas", new double[] {0.9, 0.999}, "eps", 1e-8,
                    "weight_decay", 0.0, "r", 0.0, "weight_lr_power", 2.0, "silent_sgd_phase", true),
            RAdamScheduleFree::new);

    private final double beta1;
    private final double beta2;
    private final double eps;
    private final double weightDecay;
    private final double r;
    private final double weightLrPower;
    private final boolean silentSgdPhase;

    private RAdamScheduleFree(Hyperparameters hp) {
        ScheduleFreeAveraging.checkAdamFamily(hp);
        double[] betas = hp.numbers("betas");
        beta1 = betas[0];
        beta2 = betas[1];
        eps = hp.number("eps");
        weightDecay = hp.number("weight_decay");
        r = hp.number("r");
        weightLrPower = hp.number("weight_lr_power");
        silentSgdPhase = hp.flag("silent_sgd_phase");
    }

    @Override
    public List<GroupScalar> groupScalars() {
        return ScheduleFreeAveraging.GROUP_SCALARS;
    }

    @Override
    public List<String> stateSlots() {
        return List.of("z", "exp_avg_sq");
    }

    @Override
    public StepPlan plan(GroupScalars scalars, double lr, float gradScale) {
        long k = ScheduleFreeAveraging.steps(scalars);
        double rhoT = RAdam.rho(beta2, k + 1);
        boolean rectified = rhoT > 4;
        double rect = rectified ? RAdam.rectification(beta2, rhoT) : silentSgdPhase ? 0 : 1;
        double lrK = lr * rect;
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
        return new StepPlan(t -> {
            boolean first = t == 1;
            if (rectified && !first && gradScale == 1f && !decays) {
                // The common configuration (rectified, z set, no clipping, no decay) in a loop of
                // its own: beside the sqrt and divide every vector operation costs time once the
                // arrays sit in cache, so sqrt(bc2) moves out of the loop:
                // g / (sqrt(v / bc2) + eps) = sqrt(bc2) · g / (sqrt(v) + eps·sqrt(bc2)).
                double sqrtBc2 = Math.sqrt(1 - Math.pow(beta2, k + 1));
                float epsScaled = (float) (eps * sqrtBc2);
                float yCoefScaled = (float) (lrK * (beta1 * (1 - c) - 1) * sqrtBc2);
                float zCoefScaled = (float) (-lrK * sqrtBc2);
                FusedStep fast = (p, g, s, from, to) -> {
                    float[] z = s[0];
                    float[] v = s[1];
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
                return fast;
            }
            FusedStep step = (p, g, s, from, to) -> {
                float[] z = s[0];
                float[] v = s[1];
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
                    z[i] = Math.fma(-lrKF, u, zi);
                }
            };
            return step;
        }, advance.after(), lrK, c);
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
