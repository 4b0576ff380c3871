package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.Struct;

import java.util.List;

/**
 * algorithms.md §8.3 (hf {@code get_cosine_schedule_with_warmup}, and its min-lr variant): linear
 * warmup over W steps, then a cosine from 1 down to the floor m at s = T. As in hf, progress is not
 * clamped at T: with the default half cycle the lr rises again if training continues past T.
 */
public record CosineWithWarmup(long warmupSteps, long totalSteps, double numCycles, double minLrRatio)
        implements Schedule {
    public static final String TYPE = "cosine";
    static final List<String> PARAMETERS = List.of("warmup_steps", "total_steps", "num_cycles", "min_lr_ratio");

    static CosineWithWarmup from(ScheduleParameters p) {
        long warmup = p.steps("warmup_steps");
        long total = p.steps("total_steps");
        p.check(total > warmup, "total_steps", "must be > warmup_steps = " + warmup, total);
        double cycles = p.number("num_cycles", 0.5);
        p.check(cycles > 0, "num_cycles", "must be > 0", cycles);
        return new CosineWithWarmup(warmup, total, cycles, p.fraction("min_lr_ratio", 0));
    }

    @Override
    public double lr(double baseLr, long s) {
        Schedule.checkStep(s);
        if (s < warmupSteps) {
            return baseLr * ((double) s / Math.max(1, warmupSteps));             // s/max(1,W)
        }
        double p = (double) (s - warmupSteps) / Math.max(1, totalSteps - warmupSteps); // (s−W)/max(1,T−W)
        double f = 0.5 * (1 + Math.cos(Math.PI * numCycles * 2 * p));            // ½(1 + cos(2π·cycles·p))
        f = Math.max(0, f * (1 - minLrRatio) + minLrRatio);                      // max(0, f·(1−m) + m)
        return baseLr * f;
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public Struct parameters() {
        return ScheduleParameters.struct("warmup_steps", warmupSteps, "total_steps", totalSteps,
                "num_cycles", numCycles, "min_lr_ratio", minLrRatio);
    }
}
