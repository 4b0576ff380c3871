package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.ClientProgress;
import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.VersionContributions;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.LongConsumer;
import java.util.function.Predicate;

/**
 * Each client's last applied step and its result: what makes a retried step exactly-once. A step
 * whose sequence number equals the client's last is a retry and is answered from here; an older
 * one is refused. Guarded by the model's lock (written under the write lock).
 *
 * <p>It remembers at most {@code maxEntries} clients, counted against the memory limit; when full,
 * the client whose last step is oldest and that has no Step stream open is forgotten. A step from a
 * forgotten client is taken for a new client's: a retry of its last step would be applied again.
 *
 * <p>A stored result leaves out its contributions, which History keeps: in a sync step every
 * contributor's result lists them all, so keeping them here would make the ledger (and Describe,
 * and snapshots) grow with the square of the trainers. A retry gets them back from History while
 * it still keeps that version.
 */
final class ClientLedger {
    private final int maxEntries;
    private final Predicate<String> attached;
    private final History history;
    /** Counts bytes against the memory limit (negative: gives them back). */
    private final LongConsumer memory;
    /** In the order of each client's last step, oldest first. */
    private final Map<String, ClientProgress> clients = new LinkedHashMap<>();
    private long bytes;

    ClientLedger(int maxEntries, Predicate<String> attached, History history, LongConsumer memory) {
        this.maxEntries = maxEntries;
        this.attached = attached;
        this.history = history;
        this.memory = memory;
    }

    /**
     * The stored result if step {@code stepId} of {@code clientId} was the client's last applied
     * step, or null if it is new.
     *
     * @throws OptError FAILED_PRECONDITION when the step is older than the client's last
     */
    StepResult applied(String model, String clientId, long stepId) {
        if (clientId.isEmpty()) {
            return null;
        }
        ClientProgress p = clients.get(clientId);
        if (p == null) {
            return null;
        }
        int order = Long.compareUnsigned(stepId, p.getLastStepId());
        if (order == 0) {
            return withContributions(clientId, p.getLastResult());
        }
        if (order < 0) {
            throw OptError.precondition("step_id: step %s of client '%s' is older than its last applied step %s"
                            + " of model '%s'; sequence numbers must grow", Long.toUnsignedString(stepId),
                    Echo.of(clientId), Long.toUnsignedString(p.getLastStepId()), Echo.of(model))
                    .withReason(OptError.Reason.STEP_OUT_OF_ORDER).with("model", Echo.of(model)).with("client_id", Echo.of(clientId));
        }
        return null;
    }

    void record(String clientId, long stepId, StepResult result) {
        if (!clientId.isEmpty()) {
            put(ClientProgress.newBuilder().setClientId(clientId).setLastStepId(stepId).setLastResult(result).build());
            evictOverLimit();
        }
    }

    /**
     * The stored result with the contributions of its version, when History still keeps the version
     * and it is the one this client's step made (a skipped or late step made none).
     */
    private StepResult withContributions(String clientId, StepResult stored) {
        if (stored.getSkipped() || stored.getLate()) {
            return stored;
        }
        VersionContributions v = history.get(stored.getVersion());
        if (v == null || !v.getContributionsList().contains(Contribution.newBuilder()
                .setClientId(clientId).setStepId(stored.getStepId()).build())) {
            return stored;
        }
        return stored.toBuilder().addAllContributions(v.getContributionsList()).build();
    }

    /** Every client's progress, by client id, each result without its contributions. */
    List<ClientProgress> toProto() {
        List<ClientProgress> out = new ArrayList<>(clients.values());
        out.sort(Comparator.comparing(ClientProgress::getClientId));
        return out;
    }

    void restore(List<ClientProgress> saved) {
        clear();
        for (ClientProgress p : saved) {
            if (p.getClientId().isEmpty()) {
                throw OptError.invalid("spec.state.clients: a client id is required");
            }
            put(p);
        }
        evictOverLimit();
    }

    int size() {
        return clients.size();
    }

    /** Bytes counted for the clients remembered. */
    long bytes() {
        return bytes;
    }

    /** The model is deleted: gives its bytes back. */
    void clear() {
        clients.clear();
        memory.accept(-bytes);
        bytes = 0;
    }

    /** Stores a client's progress as its most recent, its result's contributions left to History. */
    private void put(ClientProgress progress) {
        ClientProgress p = progress.getLastResult().getContributionsCount() == 0 ? progress
                : progress.toBuilder().setLastResult(progress.getLastResult().toBuilder().clearContributions()).build();
        ClientProgress old = clients.remove(p.getClientId());
        if (old != null) {
            bytes -= MemoryEstimates.ledgerEntry(old);
            memory.accept(-MemoryEstimates.ledgerEntry(old));
        }
        clients.put(p.getClientId(), p);
        bytes += MemoryEstimates.ledgerEntry(p);
        memory.accept(MemoryEstimates.ledgerEntry(p));
    }

    /** Forgets the longest inactive clients (the oldest attached ones only if every client is attached). */
    private void evictOverLimit() {
        while (clients.size() > maxEntries) {
            String victim = null;
            for (String id : clients.keySet()) {
                if (!attached.test(id)) {
                    victim = id;
                    break;
                }
            }
            if (victim == null) {
                victim = clients.keySet().iterator().next();
            }
            ClientProgress p = clients.remove(victim);
            bytes -= MemoryEstimates.ledgerEntry(p);
            memory.accept(-MemoryEstimates.ledgerEntry(p));
        }
    }
}
