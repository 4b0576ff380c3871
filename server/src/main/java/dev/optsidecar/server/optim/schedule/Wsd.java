package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.Struct;

import java.util.List;

/**
 * algorithms.md §8.4, warmup–stable–decay (hf {@code get_wsd_schedule}): W warmup steps, S steps at
 * the base lr, D decay steps down towards the floor m, then m for good.
 */
public record Wsd(long warmupSteps, long stableSteps, long decaySteps, WarmupShape warmupType,
                  DecayShape decayType, double minLrRatio) implements Schedule {
    public static final String TYPE = "wsd";
    static final List<String> PARAMETERS = List.of("warmup_steps", "stable_steps", "decay_steps", "warmup_type",
            "decay_type", "min_lr_ratio");

    static Wsd from(ScheduleParameters p) {
        long warmup = p.steps("warmup_steps");
        long stable = p.steps("stable_steps");
        long decay = p.steps("decay_steps");
        WarmupShape warmupType = WarmupShape.byId(p.choice("warmup_type", "linear", WarmupShape.ids()));
        DecayShape decayType = DecayShape.byId(p.choice("decay_type", "cosine", DecayShape.ids()));
        double m = p.fraction("min_lr_ratio", 0);
        p.check(decayType != DecayShape.INVERSE_PROPORTIONAL || m > 0, "min_lr_ratio",
                "must be > 0 for decay_type inverse_proportional", m);
        return new Wsd(warmup, stable, decay, warmupType, decayType, m);
    }

    @Override
    public double lr(double baseLr, long s) {
        Schedule.checkStep(s);
        double f;
        if (s < warmupSteps) {
            f = warmupType.factor((double) s / Math.max(1, warmupSteps), minLrRatio);     // q = s/max(1,W)
        } else if (s < warmupSteps + stableSteps) {
            f = 1;
        } else if (s < warmupSteps + stableSteps + decaySteps) {
            long into = s - warmupSteps - stableSteps;
            f = decayType.factor((double) into / Math.max(1, decaySteps), minLrRatio);    // q = (s−W−S)/max(1,D)
        } else {
            f = minLrRatio;
        }
        return baseLr * f;
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public Struct parameters() {
        return ScheduleParameters.struct("warmup_steps", warmupSteps, "stable_steps", stableSteps,
                "decay_steps", decaySteps, "warmup_type", warmupType.id(), "decay_type", decayType.id(),
                "min_lr_ratio", minLrRatio);
    }
}
