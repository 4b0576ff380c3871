package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.AsyncOptions;
import dev.optsidecar.proto.v1.StalePolicy;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

/**
 * Async mode: how far a gradient computed some versions ago may still move the model. Within the
 * staleness bound it counts fully; past it, it is down-weighted by 1 / (1 + staleness) or refused,
 * as the model's stale policy says. Runs under the model's write lock.
 */
final class AsyncAdmission {
    private final AsyncOptions options;
    private final CoordinationStatusBuilder status;

    AsyncAdmission(AsyncOptions options, CoordinationStatusBuilder status) {
        this.options = options;
        this.status = status;
    }

    /**
     * The learning-rate factor for step {@code a}, whose gradient is {@code staleness} versions
     * behind the model's {@code version}; FAILED_PRECONDITION when the policy refuses it.
     */
    double lrScale(StepAssembly a, long staleness, long version) {
        if (options.getMaxStaleness() == 0 || staleness <= Integer.toUnsignedLong(options.getMaxStaleness())) {
            return 1.0;
        }
        if (options.getStale() == StalePolicy.STALE_DOWNWEIGHT) {
            return 1.0 / (1 + staleness);
        }
        status.rejected++;
        throw OptError.precondition("step %s of client '%s': its gradient was computed at version %d, %d versions"
                        + " behind the current version %d (the bound is %d); pull the weights and send a fresh one",
                Long.toUnsignedString(a.stepId()), Echo.of(a.clientId()), version - staleness, staleness, version,
                Integer.toUnsignedLong(options.getMaxStaleness()))
                .withReason(OptError.Reason.STALE_GRADIENT)
                .with("client_id", Echo.of(a.clientId())).with("step_id", Long.toUnsignedString(a.stepId()))
                .with("current_version", version).with("base_version", version - staleness)
                .with("staleness", staleness).with("max_staleness", Integer.toUnsignedLong(options.getMaxStaleness()));
    }
}
