package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.Contribution;

/**
 * One trainer of a model: its own gradient buffers (so several trainers' steps arrive at once),
 * the step arriving now, and, in sync mode, its contribution waiting for the step it is part of.
 * Created when a trainer opens a Step stream; attached while it has one open. Guarded by the
 * model's sessions lock, except the buffers' contents, which only its own step writes.
 */
public final class ClientSession {
    /** The client id, or a key of its own for a stream without one. */
    final String key;
    /** The id the ledger knows the client by; empty for an anonymous stream. */
    final String clientId;
    /** Gradient buffer handle per tensor; null until the first step. */
    int[] handles;
    int streams;
    volatile StepAssembly assembly;
    SyncRound.Contribution pending;

    ClientSession(String key, String clientId) {
        this.key = key;
        this.clientId = clientId;
    }

    public String clientId() {
        return clientId;
    }

    /** Step {@code stepId} of this trainer, as results and the history name it. */
    Contribution contribution(long stepId) {
        return Contribution.newBuilder().setClientId(clientId).setStepId(stepId).build();
    }
}
