package dev.optsidecar.server.model;

import com.google.protobuf.Struct;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ScheduledFuture;

/**
 * The contributions gathered for one sync-mode step (the step that makes version {@code version}).
 * It is applied once it has k contributions, or, after the straggler timeout, min_k.
 */
final class SyncRound {
    /** One trainer's gradient for the round, held in its session's buffers until the round applies. */
    record Contribution(ClientSession session, long stepId, boolean[] noGrad, Map<String, Struct> groupChanges,
                        Model.ResolvedView view, CompletableFuture<Model.StepOutcome> result) {}

    final long version;
    final List<Contribution> contributions = new ArrayList<>();
    boolean timedOut;
    ScheduledFuture<?> timer;

    SyncRound(long version) {
        this.version = version;
    }

    /** This round's contribution of {@code session}, if it sent one. */
    Contribution of(ClientSession session) {
        for (Contribution c : contributions) {
            if (c.session() == session) {
                return c;
            }
        }
        return null;
    }
}
