package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

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
        double yCoefficient = lrK * (beta1 * (1 - c) - 1);
        if (rectified && gradScale == 1f && weightDecay == 0) {
            // The common configuration (rectified, no clipping, no decay) has a kernel of its own
            // once z is set: sqrt(bc2) moves out of the loop,
            // g / (sqrt(v / bc2) + eps) = sqrt(bc2) · g / (sqrt(v) + eps·sqrt(bc2)).
            double sqrtBc2 = Math.sqrt(1 - Math.pow(beta2, k + 1));
            KernelCall prescaled = Kernel.RADAM_SCHEDULE_FREE_PRESCALED.call()
                    .scalar("beta2", (float) beta2)
                    .scalar("one_minus_beta2", (float) (1 - beta2))
                    .scalar("scaled_eps", (float) (eps * sqrtBc2))
                    .scalar("c", (float) c)
                    .scalar("scaled_y_coefficient", (float) (yCoefficient * sqrtBc2))
                    .scalar("scaled_z_coefficient", (float) (-lrK * sqrtBc2))
                    .slots(0, 1)
                    .build();
            KernelCall first = generalCall(k, lrK, c, yCoefficient, gradScale, true).flag("first_step", true).build();
            return new StepPlan(t -> t == 1 ? first : prescaled, advance.after(), lrK, c);
        }
        KernelCall.Builder call = generalCall(k, lrK, c, yCoefficient, gradScale, rectified);
        return new StepPlan(ScheduleFreeAveraging.byFirstStep(call), advance.after(), lrK, c);
    }

    private KernelCall.Builder generalCall(long k, double lrK, double c, double yCoefficient, float gradScale,
                                           boolean rectified) {
        return Kernel.RADAM_SCHEDULE_FREE.call()
                .scalar("grad_scale", gradScale)
                .scalar("beta2", (float) beta2)
                .scalar("one_minus_beta2", (float) (1 - beta2))
                .scalar("inv_bias_correction2", (float) (1 / (1 - Math.pow(beta2, k + 1))))
                .scalar("eps", (float) eps)
                .scalar("weight_decay", (float) weightDecay)
                .scalar("c", (float) c)
                .scalar("y_coefficient", (float) yCoefficient)
                .scalar("z_coefficient", (float) -lrK)
                .flag("rectified", rectified)
                .flag("weight_decay", weightDecay != 0)
                .slots(0, 1);
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
