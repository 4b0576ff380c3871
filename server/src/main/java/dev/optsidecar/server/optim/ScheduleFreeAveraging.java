package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.function.LongFunction;

/**
 * What the three Schedule-Free optimizers share (algorithms.md §5.1–5.2): the averaging weight
 * c_t and the conversions between the train point y and the eval point x, with
 * y = (1−β)·z + β·x.
 */
final class ScheduleFreeAveraging {
    private ScheduleFreeAveraging() {}

    /** Steps the group has taken. */
    static final String K = "k";
    /** The running sum of averaging weights. */
    static final String WEIGHT_SUM = "weight_sum";
    /** The largest lr_k so far; −1 before the first step. */
    static final String LR_MAX = "lr_max";
    /** The group scalars every Schedule-Free optimizer declares. */
    static final java.util.List<GroupScalar> GROUP_SCALARS = java.util.List.of(
            new GroupScalar(K, 0.0), new GroupScalar(WEIGHT_SUM, 0.0), new GroupScalar(LR_MAX, -1.0));

    /** The group scalars after a step at lr_k, and that step's averaging weight c. */
    record Advance(GroupScalars after, double c) {}

    /** k, the steps taken before this one. */
    static long steps(GroupScalars scalars) {
        return (long) scalars.get(K);
    }

    /**
     * lr_max ← max(lr_max, lr_k); w = (k+1)^r · lr_max^power; weight_sum ← weight_sum + w;
     * c = w / weight_sum, or 0 while weight_sum is 0 (RAdam's silent phase); k ← k+1.
     */
    static Advance advance(GroupScalars before, double lrK, double r, double weightLrPower) {
        long k = steps(before);
        double lrMax = Math.max(before.get(LR_MAX), lrK);
        double weight = Math.pow(k + 1, r) * Math.pow(lrMax, weightLrPower);
        double weightSum = before.get(WEIGHT_SUM) + weight;
        double c = weightSum == 0 ? 0 : weight / weightSum;
        return new Advance(before.with(K, k + 1).with(WEIGHT_SUM, weightSum).with(LR_MAX, lrMax), c);
    }

    /**
     * The call for a tensor at its step t, from a builder with everything but the first_step flag:
     * at a tensor's first step z starts as a copy of y.
     */
    static LongFunction<KernelCall> byFirstStep(KernelCall.Builder call) {
        KernelCall first = call.flag("first_step", true).build();
        KernelCall later = call.flag("first_step", false).build();
        return t -> t == 1 ? first : later;
    }

    /** x = lerp(y, z, 1 − 1/β), as the reference's eval(); z is state slot 0. */
    static KernelCall evalView(double beta) {
        return Kernel.SCHEDULE_FREE_EVAL.call().scalar("weight", (float) (1 - 1 / beta)).slots(0).build();
    }

    /** y = lerp(x, z, 1 − β), as the reference's train(): for weights saved in eval mode. */
    static KernelCall trainFromEval(double beta) {
        return Kernel.SCHEDULE_FREE_TRAIN_FROM_EVAL.call().scalar("weight", (float) (1 - beta)).slots(0).build();
    }

    /** Checks Schedule-Free's common hyperparameters. */
    static void check(Hyperparameters hp) {
        hp.check(hp.number("lr") >= 0, "lr", "must be >= 0");
        hp.check(hp.number("weight_decay") >= 0, "weight_decay", "must be >= 0");
        hp.check(hp.number("weight_lr_power") >= 0, "weight_lr_power", "must be >= 0");
        hp.check(hp.number("r") >= 0, "r", "must be >= 0");
    }

    /** The Adam-family checks, plus β1 > 0: Schedule-Free uses it to interpolate y between z and x. */
    static void checkAdamFamily(Hyperparameters hp) {
        hp.checkAdamFamily();
        check(hp);
        hp.check(hp.numbers("betas")[0] > 0, "betas", "betas[0] must be in (0, 1): it interpolates y between z and x");
    }

    /** A hyperparameter that counts steps: a whole number >= 0. */
    static long wholeSteps(Hyperparameters hp, String name) {
        double v = hp.number(name);
        hp.check(v >= 0 && v == Math.rint(v) && v < 1e15, name, "must be a whole number >= 0");
        return (long) v;
    }
}
