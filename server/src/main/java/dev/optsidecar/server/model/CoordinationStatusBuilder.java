package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.Coordination;
import dev.optsidecar.proto.v1.CoordinationStatus;

import java.util.List;

/** Counters of what trainers' contributions did; written under the model's write lock. */
final class CoordinationStatusBuilder {
    /** Staleness histogram buckets 0..LAST-1, and LAST for LAST and above. */
    static final int LAST = 16;
    long applied;
    long late;
    long rejected;
    long timedOut;
    private final long[] staleness = new long[LAST + 1];

    void applied(int contributions, long stalenessOfStep) {
        applied += contributions;
        // unsigned: a value that is negative as a long (never admitted, but never an index either) is the last bucket
        staleness[Long.compareUnsigned(stalenessOfStep, LAST) < 0 ? (int) stalenessOfStep : LAST] += contributions;
    }

    /** Takes the counters of the model {@code other} counted for (AddTensors: the model this one extends). */
    void copyFrom(CoordinationStatusBuilder other) {
        applied = other.applied;
        late = other.late;
        rejected = other.rejected;
        timedOut = other.timedOut;
        System.arraycopy(other.staleness, 0, staleness, 0, staleness.length);
    }

    synchronized CoordinationStatus build(Coordination config, List<String> trainers) {
        CoordinationStatus.Builder b = CoordinationStatus.newBuilder()
                .setConfig(config)
                .addAllTrainers(trainers)
                .setContributionsApplied(applied)
                .setContributionsLate(late)
                .setContributionsRejected(rejected)
                .setStepsTimedOut(timedOut);
        int used = staleness.length;
        while (used > 1 && staleness[used - 1] == 0) {
            used--;
        }
        for (int i = 0; i < used; i++) {
            b.addStalenessHistogram(staleness[i]);
        }
        return b.build();
    }
}
