package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.Struct;

import java.util.List;

/** algorithms.md §8.1: f = 1, the base lr at every step. */
public record Constant() implements Schedule {
    public static final String TYPE = "constant";
    static final List<String> PARAMETERS = List.of();

    static Constant from(ScheduleParameters p) {
        return new Constant();
    }

    @Override
    public double lr(double baseLr, long s) {
        Schedule.checkStep(s);
        return baseLr;
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public Struct parameters() {
        return Struct.getDefaultInstance();
    }
}
