package dev.optsidecar.server.api;

import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.observe.ServerMetrics;
import dev.optsidecar.server.observe.ServerMetrics.Phase;
import dev.optsidecar.server.observe.ServerMetrics.Transport;

import java.util.Locale;

/**
 * One Step stream's timings and byte counts, recorded in the server's metrics: when a step's
 * first chunk came, when it was committed, how long its sync round took, when its weights were out.
 * Used under the stream's lock.
 */
final class StepMeter {
    private final ServerMetrics metrics;
    private String model;
    private String dtype = label(WireType.FLOAT32);
    private long receiving = -1;
    private long committed;
    private long sending = -1;

    StepMeter(ServerMetrics metrics) {
        this.metrics = metrics;
    }

    void opened(String model, WireType wire) {
        this.model = model;
        this.dtype = label(wire);
    }

    /** A chunk of a step arrived with {@code bytes} of data. */
    void chunk(int bytes) {
        if (receiving < 0) {
            receiving = System.nanoTime();
        }
        metrics.received(model, Transport.GRPC, dtype, bytes);
    }

    /** A commit arrived: the step's receive phase ends (a commit without chunks had none). */
    void commit() {
        committed = System.nanoTime();
        if (receiving >= 0) {
            metrics.phase(model, Phase.RECEIVE, committed - receiving);
            receiving = -1;
        }
    }

    /** The step's data was read from a shared segment, from {@link #commit} until now. */
    void segmentRead(long bytes) {
        metrics.received(model, Transport.SHM, dtype, bytes);
        long now = System.nanoTime();
        metrics.phase(model, Phase.RECEIVE, now - committed);
        committed = now;
    }

    /** A gradient step over a shared segment went in place (one pass) or through copies. */
    void segmentStep(boolean inPlace) {
        metrics.segmentStep(model, inPlace);
    }

    /** The model took the commit: applied, or (sync) joined its round, which may wait. */
    void applied(boolean waits) {
        long now = System.nanoTime();
        metrics.phase(model, Phase.APPLY, now - committed);
        committed = now;
        if (!waits) {
            sending = now;
        }
    }

    /** The sync round the commit joined was applied. */
    void roundDone() {
        long now = System.nanoTime();
        metrics.syncWait(model, now - committed);
        sending = now;
    }

    /** What the step's result says: a late or skipped gradient counts as rejected. */
    void result(StepResult result) {
        if (result.getReplayed()) {
            return;
        }
        if (result.getLate()) {
            metrics.stepRejected(model, "late");
        } else if (result.getSkipped()) {
            metrics.stepRejected(model, "non_finite_skipped");
        }
    }

    void sentChunk(int bytes) {
        metrics.sent(model, Transport.GRPC, dtype, bytes);
    }

    void sentToSegment(long bytes) {
        metrics.sent(model, Transport.SHM, dtype, bytes);
    }

    /** The step's weights (if any) and result are out. */
    void sent() {
        if (sending >= 0) {
            metrics.phase(model, Phase.SEND, System.nanoTime() - sending);
            sending = -1;
        }
    }

    /** A chunk or commit failed the stream: counted by the error's reason. */
    void rejected(Throwable e) {
        if (model == null) {
            return;
        }
        String reason = e instanceof OptError oe ? oe.reason().name() : Statuses.toStatus(e).getStatus().getCode().name();
        if (!reason.equals(OptError.Reason.MODEL_NOT_FOUND.name())) { // a deleted model's series stay gone
            metrics.stepRejected(model, reason);
        }
        receiving = -1;
        sending = -1;
    }

    private static String label(WireType wire) {
        return wire.name().toLowerCase(Locale.ROOT);
    }
}
