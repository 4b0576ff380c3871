package dev.optsidecar.server.model;

import java.time.Duration;

/**
 * What one client may make the server hold, beyond the bytes {@code --memory-limit} counts: each
 * bound is a server flag, so an error naming it says how to raise it. The defaults leave room for
 * real models and fleets of trainers.
 *
 * @param maxClientIdBytes        longest {@code StepOpen.client_id}, in UTF-8 bytes ({@code --max-client-id-bytes})
 * @param maxTensorsPerModel      most tensors in one model ({@code --max-tensors-per-model})
 * @param maxTrainersPerModel     most trainer sessions a model holds at once ({@code --max-trainers-per-model})
 * @param maxPendingRegistrations most models being registered, restored or forked at once ({@code --max-pending-registrations})
 * @param maxLedgerEntries        most clients whose last step a model remembers; the longest inactive is
 *                                forgotten first ({@code --max-ledger-entries})
 * @param historyVersions         most versions whose contributions a model keeps ({@code --history-versions})
 * @param historyBytes            most bytes of contributions a model keeps ({@code --history-bytes})
 * @param idleStreamTimeout       a Step stream that sends nothing this long is closed; zero: never ({@code --idle-stream-timeout})
 */
public record Limits(int maxClientIdBytes, int maxTensorsPerModel, int maxTrainersPerModel,
                     int maxPendingRegistrations, int maxLedgerEntries, int historyVersions, long historyBytes,
                     Duration idleStreamTimeout) {
    public static final Limits DEFAULTS = new Limits(256, 100_000, 1024, 64, 4096, 100_000, 64L << 20,
            Duration.ofMinutes(5));

    public Limits {
        if (maxClientIdBytes < 1 || maxTensorsPerModel < 1 || maxTrainersPerModel < 1 || maxPendingRegistrations < 1
                || maxLedgerEntries < 1 || historyVersions < 1 || historyBytes < 1) {
            throw new IllegalArgumentException("limits must be >= 1");
        }
        if (idleStreamTimeout.isNegative()) {
            throw new IllegalArgumentException("the idle stream timeout must be >= 0");
        }
    }

    public Limits withMaxClientIdBytes(int n) {
        return new Limits(n, maxTensorsPerModel, maxTrainersPerModel, maxPendingRegistrations, maxLedgerEntries,
                historyVersions, historyBytes, idleStreamTimeout);
    }

    public Limits withMaxTensorsPerModel(int n) {
        return new Limits(maxClientIdBytes, n, maxTrainersPerModel, maxPendingRegistrations, maxLedgerEntries,
                historyVersions, historyBytes, idleStreamTimeout);
    }

    public Limits withMaxTrainersPerModel(int n) {
        return new Limits(maxClientIdBytes, maxTensorsPerModel, n, maxPendingRegistrations, maxLedgerEntries,
                historyVersions, historyBytes, idleStreamTimeout);
    }

    public Limits withMaxPendingRegistrations(int n) {
        return new Limits(maxClientIdBytes, maxTensorsPerModel, maxTrainersPerModel, n, maxLedgerEntries,
                historyVersions, historyBytes, idleStreamTimeout);
    }

    public Limits withMaxLedgerEntries(int n) {
        return new Limits(maxClientIdBytes, maxTensorsPerModel, maxTrainersPerModel, maxPendingRegistrations, n,
                historyVersions, historyBytes, idleStreamTimeout);
    }

    public Limits withHistory(int versions, long bytes) {
        return new Limits(maxClientIdBytes, maxTensorsPerModel, maxTrainersPerModel, maxPendingRegistrations,
                maxLedgerEntries, versions, bytes, idleStreamTimeout);
    }

    public Limits withIdleStreamTimeout(Duration timeout) {
        return new Limits(maxClientIdBytes, maxTensorsPerModel, maxTrainersPerModel, maxPendingRegistrations,
                maxLedgerEntries, historyVersions, historyBytes, timeout);
    }
}
