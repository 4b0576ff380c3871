package dev.optsidecar.server.model;

import dev.optsidecar.server.observe.LogEvent;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.OptionalLong;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A model's trainers: one session each, attached while it has a Step stream open, with gradient
 * buffers of its own (reserved against the memory limit on its first step, given back when it
 * leaves with nothing waiting). Every method holds this object's lock; callers that also take the
 * model's lock take that first.
 */
final class Trainers {
    private static final java.util.logging.Logger LOG = java.util.logging.Logger.getLogger(Trainers.class.getName());
    private final String model;
    private final List<TensorEntry> tensors;
    private final ModelRegistry memory;
    /** Bytes of one trainer's gradient buffers. */
    private final long gradientBytes;
    private final Map<String, ClientSession> sessions = new HashMap<>();
    private final AtomicLong anonymousStreams = new AtomicLong();
    private boolean closed;

    Trainers(String model, List<TensorEntry> tensors, ModelRegistry memory) {
        this.model = model;
        this.tensors = tensors;
        this.memory = memory;
        this.gradientBytes = MemoryEstimates.TRAINER_BYTES + tensors.stream()
                .mapToLong(t -> t.numel * (long) Float.BYTES + MemoryEstimates.GRADIENT_BUFFER_BYTES).sum();
    }

    /** A trainer opened a Step stream: its session, created on first use, counts as attached. */
    synchronized ClientSession attach(String clientId) {
        int maxIdBytes = memory.limits().maxClientIdBytes();
        int idBytes = clientId.getBytes(java.nio.charset.StandardCharsets.UTF_8).length;
        if (idBytes > maxIdBytes) {
            throw OptError.invalid("open.client_id: %d bytes, longer than the server's limit of %d (raise it with"
                    + " --max-client-id-bytes)", idBytes, maxIdBytes);
        }
        String key = clientId.isEmpty() ? "\u0000anonymous-" + anonymousStreams.incrementAndGet() : clientId;
        ClientSession s = sessions.get(key);
        if (s == null) {
            int maxTrainers = memory.limits().maxTrainersPerModel();
            if (sessions.size() >= maxTrainers) {
                throw OptError.exhausted("open.model: model '%s' has %d trainers, the server's limit per model (raise"
                        + " it with --max-trainers-per-model)", model, sessions.size());
            }
            s = new ClientSession(key, clientId);
            sessions.put(key, s);
        }
        s.streams++;
        if (s.streams == 1) {
            trainerEvent("trainer_join", s, "joined");
        }
        return s;
    }

    /** Whether a trainer of that client id has a Step stream open. */
    synchronized boolean isAttached(String clientId) {
        ClientSession s = sessions.get(clientId);
        return s != null && s.streams > 0;
    }

    /** A trainer's stream ended: with none left, its half-sent step is dropped and, if nothing waits, its buffers freed. */
    synchronized void leave(ClientSession s) {
        s.streams--;
        if (s.streams == 0) {
            trainerEvent("trainer_leave", s, "left");
            s.assembly = null;
            if (s.pending == null) {
                release(s);
            }
        }
    }

    /** A trainer joined or left (a named one at INFO; a stream without a client id at FINE). */
    private void trainerEvent(String event, ClientSession s, String what) {
        java.util.logging.Level level = s.clientId.isEmpty() ? java.util.logging.Level.FINE
                : java.util.logging.Level.INFO;
        LogEvent.log(LOG, level, event, model, () -> String.format("model '%s': trainer '%s' %s",
                model, dev.optsidecar.server.Echo.of(s.clientId), what), "client_id", s.clientId);
    }

    /** The client ids of the trainers attached now, sorted. */
    synchronized List<String> attached() {
        List<String> ids = new ArrayList<>();
        sessions.values().stream().filter(s -> s.streams > 0).forEach(s -> ids.add(s.clientId));
        Collections.sort(ids);
        return ids;
    }

    /** Starts a step of {@code s} in its own buffers, allocated on its first step; replaces a step it left half-sent. */
    synchronized StepAssembly open(ClientSession s, long stepId) {
        if (s.pending != null) {
            throw OptError.precondition("step_id: client '%s' sent step %s while its step %s waits for the other"
                            + " trainers' contributions", Echo.of(s.clientId), Long.toUnsignedString(stepId),
                    Long.toUnsignedString(s.pending.stepId()))
                    .withReason(OptError.Reason.STEP_OUT_OF_ORDER);
        }
        if (s.handles == null) {
            memory.reserve(model, gradientBytes);
            int[] handles = new int[tensors.size()];
            for (TensorEntry t : tensors) {
                handles[t.index] = t.storage.newGradientBuffer();
            }
            s.handles = handles;
        }
        StepAssembly a = new StepAssembly(tensors, s, stepId);
        s.assembly = a;
        return a;
    }

    /** The sync contribution of step {@code stepId} that {@code s} has waiting, or null. */
    synchronized CompletableFuture<Model.StepOutcome> waiting(ClientSession s, long stepId) {
        SyncRound.Contribution c = s.pending;
        return c != null && c.stepId() == stepId ? c.result() : null;
    }

    /** The id of a step being assembled, if any (for diagnostics and tests). */
    synchronized OptionalLong assemblingStep() {
        return sessions.values().stream().map(s -> s.assembly).filter(Objects::nonNull)
                .mapToLong(StepAssembly::stepId).findFirst();
    }

    /** Drops an assembly unless a retry has replaced it already. */
    synchronized void abandon(StepAssembly a) {
        if (a.session().assembly == a) {
            a.session().assembly = null;
        }
    }

    /** The step of {@code c}'s session now waits in a sync round, holding its buffers. */
    synchronized void contributing(SyncRound.Contribution c) {
        c.session().assembly = null;
        c.session().pending = c;
    }

    /** A sync round is over: its contributors' buffers are theirs again, or freed if they left. */
    synchronized void contributed(List<SyncRound.Contribution> parts) {
        for (SyncRound.Contribution c : parts) {
            ClientSession s = c.session();
            s.pending = null;
            if (s.streams == 0) {
                release(s);
            }
        }
    }

    /** Bytes held for trainers' gradient buffers now. */
    synchronized long bytes() {
        return sessions.values().stream().filter(s -> s.handles != null).count() * gradientBytes;
    }

    /** The model is deleted (its tensors free every buffer): give the memory back once. */
    synchronized void close() {
        memory.release(bytes());
        sessions.clear();
        closed = true;
    }

    private void release(ClientSession s) {
        sessions.remove(s.key);
        if (s.handles != null && !closed) {
            for (TensorEntry t : tensors) {
                t.storage.freeGradientBuffer(s.handles[t.index]);
            }
            s.handles = null;
            memory.release(gradientBytes);
        }
    }
}
