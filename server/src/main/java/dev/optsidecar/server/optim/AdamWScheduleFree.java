package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

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
        boolean momentum = innerMomentum != 0;
        KernelCall.Builder call = (momentum ? Kernel.ADAMW_SCHEDULE_FREE_MOMENTUM : Kernel.ADAMW_SCHEDULE_FREE).call()
                .scalar("grad_scale", gradScale)
                .scalar("beta2", (float) beta2)
                .scalar("one_minus_beta2", (float) (1 - beta2))
                .scalar("inv_bias_correction2", (float) (1 / (1 - Math.pow(beta2, k + 1))))
                .scalar("eps", (float) eps)
                .scalar("weight_decay", (float) weightDecay)
                .scalar("c", (float) c)
                .scalar("y_coefficient", (float) (lrK * (beta1 * (1 - c) - 1)))
                .scalar("z_coefficient", (float) -lrK)
                .flag("weight_decay", weightDecay != 0);
        if (momentum) {
            call.scalar("momentum", (float) innerMomentum)
                    .scalar("one_minus_momentum", (float) (1 - innerMomentum))
                    .scalar("momentum_correction", (float) (1 - Math.pow(innerMomentum, k + 1)))
                    .slots(0, 1, 2);
        } else {
            call.slots(0, 1);
        }
        return new StepPlan(ScheduleFreeAveraging.byFirstStep(call), advance.after(), lrK, c);
    }

    @Override
    public KernelCall evalView() {
        return ScheduleFreeAveraging.evalView(beta1);
    }

    @Override
    public KernelCall trainFromEval() {
        return ScheduleFreeAveraging.trainFromEval(beta1);
    }
}
