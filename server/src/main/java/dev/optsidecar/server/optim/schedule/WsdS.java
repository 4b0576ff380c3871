package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.Struct;

import java.util.List;

/**
 * algorithms.md §8.5, WSD-S: linear warmup over W steps, then for each checkpoint C the base lr until
 * C − D and a decay over the D steps before C. Right after a checkpoint the lr jumps back to the base
 * lr with no new warmup; after the last checkpoint it stays at the floor m.
 *
 * <p>Each decay window must fit between the previous checkpoint (or the end of warmup) and its own
 * checkpoint, so that every restart really starts from the base lr.
 */
public record WsdS(long warmupSteps, List<Long> checkpoints, long decaySteps, DecayShape decayType,
                   double minLrRatio) implements Schedule {
    public static final String TYPE = "wsd_s";
    static final List<String> PARAMETERS = List.of("warmup_steps", "checkpoints", "decay_steps", "decay_type",
            "min_lr_ratio");

    public WsdS {
        checkpoints = List.copyOf(checkpoints);
    }

    static WsdS from(ScheduleParameters p) {
        long warmup = p.steps("warmup_steps");
        List<Long> checkpoints = p.stepList("checkpoints");
        long decay = p.steps("decay_steps");
        long previous = warmup;
        for (int i = 0; i < checkpoints.size(); i++) {
            long c = checkpoints.get(i);
            String after = i == 0 ? "warmup_steps = " + warmup : "checkpoints[" + (i - 1) + "] = " + previous;
            p.check(c > previous, "checkpoints", "checkpoints[" + i + "] must be > " + after, c);
            p.check(c - previous >= decay, "checkpoints",
                    "checkpoints[" + i + "] must leave decay_steps = " + decay + " steps after " + after, c);
            previous = c;
        }
        DecayShape decayType = DecayShape.byId(p.choice("decay_type", "cosine", DecayShape.ids()));
        double m = p.fraction("min_lr_ratio", 0);
        p.check(decayType != DecayShape.INVERSE_PROPORTIONAL || m > 0, "min_lr_ratio",
                "must be > 0 for decay_type inverse_proportional", m);
        return new WsdS(warmup, checkpoints, decay, decayType, m);
    }

    @Override
    public double lr(double baseLr, long s) {
        Schedule.checkStep(s);
        if (s < warmupSteps) {
            return baseLr * WarmupShape.LINEAR.factor((double) s / Math.max(1, warmupSteps), minLrRatio);
        }
        for (long c : checkpoints) {
            if (s < c) {                                   // the first C with s < C
                long decayStart = c - decaySteps;
                if (s < decayStart) {
                    return baseLr;                         // f = 1
                }
                double q = (double) (s - decayStart) / Math.max(1, decaySteps); // (s − (C−D))/max(1,D)
                return baseLr * decayType.factor(q, minLrRatio);
            }
        }
        return baseLr * minLrRatio;                        // s ≥ last C: f = m
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public Struct parameters() {
        return ScheduleParameters.struct("warmup_steps", warmupSteps, "checkpoints", checkpoints,
                "decay_steps", decaySteps, "decay_type", decayType.id(), "min_lr_ratio", minLrRatio);
    }
}
