package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.ClientProgress;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Each client's last applied step and its result: what makes a retried step exactly-once. A step
 * whose sequence number equals the client's last is a retry and is answered from here; an older
 * one is refused. Guarded by the model's lock (written under the write lock).
 */
final class ClientLedger {
    private final Map<String, ClientProgress> clients = new TreeMap<>();

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
            return p.getLastResult();
        }
        if (order < 0) {
            throw OptError.precondition("step_id: step %s of client '%s' is older than its last applied step %s"
                            + " of model '%s'; sequence numbers must grow", Long.toUnsignedString(stepId),
                    Echo.of(clientId), Long.toUnsignedString(p.getLastStepId()), Echo.of(model));
        }
        return null;
    }

    void record(String clientId, long stepId, StepResult result) {
        if (!clientId.isEmpty()) {
            clients.put(clientId, ClientProgress.newBuilder()
                    .setClientId(clientId).setLastStepId(stepId).setLastResult(result).build());
        }
    }

    List<ClientProgress> toProto() {
        return new ArrayList<>(clients.values());
    }

    void restore(List<ClientProgress> saved) {
        clients.clear();
        for (ClientProgress p : saved) {
            if (p.getClientId().isEmpty()) {
                throw OptError.invalid("spec.state.clients: a client id is required");
            }
            clients.put(p.getClientId(), p);
        }
    }
}
