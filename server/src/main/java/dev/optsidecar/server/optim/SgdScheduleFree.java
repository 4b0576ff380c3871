package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.List;

/**
 * Schedule-Free SGD (Defazio et al. 2024; algorithms.md §5). θ holds y, where gradients are taken;
 * state z is the base iterate; the eval point x is computed on demand. Per step:
 * <pre>
 *   lr_k = lr · min(1, (k+1)/warmup_steps);  c from §5.2
 *   u = g + λ·y                    (weight decay at y)
 *   y = lerp(y, z, c)
 *   y = y + lr_k·(β(1 − c) − 1)·u
 *   z = z − lr_k·u
 * </pre>
 */
public final class SgdScheduleFree implements Algorithm {
    public static final AlgorithmDefinition DEFINITION = new AlgorithmDefinition("SGDScheduleFree",
            Hyperparameters.defaults("lr", 1.0, "momentum", 0.9, "weight_decay", 0.0, "warmup_steps", 0.0,
                    "r", 0.0, "weight_lr_power", 2.0),
            SgdScheduleFree::new);

    private final double beta;
    private final double weightDecay;
    private final long warmupSteps;
    private final double r;
    private final double weightLrPower;

    private SgdScheduleFree(Hyperparameters hp) {
        ScheduleFreeAveraging.check(hp);
        beta = hp.number("momentum");
        hp.check(beta > 0 && beta < 1, "momentum", "must be in (0, 1)");
        weightDecay = hp.number("weight_decay");
        warmupSteps = ScheduleFreeAveraging.wholeSteps(hp, "warmup_steps");
        r = hp.number("r");
        weightLrPower = hp.number("weight_lr_power");
    }

    @Override
    public List<GroupScalar> groupScalars() {
        return ScheduleFreeAveraging.GROUP_SCALARS;
    }

    @Override
    public List<String> stateSlots() {
        return List.of("z");
    }

    @Override
    public StepPlan plan(GroupScalars scalars, double lr, float gradScale) {
        long k = ScheduleFreeAveraging.steps(scalars);
        double lrK = lr * (k < warmupSteps ? (double) (k + 1) / warmupSteps : 1.0);
        ScheduleFreeAveraging.Advance advance = ScheduleFreeAveraging.advance(scalars, lrK, r, weightLrPower);
        double c = advance.c();
        KernelCall.Builder call = Kernel.SGD_SCHEDULE_FREE.call()
                .scalar("grad_scale", gradScale)
                .scalar("weight_decay", (float) weightDecay)
                .scalar("c", (float) c)
                .scalar("y_coefficient", (float) (lrK * (beta * (1 - c) - 1)))
                .scalar("z_coefficient", (float) -lrK)
                .flag("weight_decay", weightDecay != 0)
                .slots(0);
        return new StepPlan(ScheduleFreeAveraging.byFirstStep(call), advance.after(), lrK, c);
    }

    @Override
    public KernelCall evalView() {
        return ScheduleFreeAveraging.evalView(beta);
    }

    @Override
    public KernelCall trainFromEval() {
        return ScheduleFreeAveraging.trainFromEval(beta);
    }
}
