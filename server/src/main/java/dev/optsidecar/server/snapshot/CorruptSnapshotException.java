package dev.optsidecar.server.snapshot;

import java.io.IOException;

/**
 * A snapshot failed verification: a file is missing, has the wrong size or checksum, or the
 * manifest is unreadable. Such a snapshot is never loaded.
 */
public final class CorruptSnapshotException extends IOException {
    private final String model;
    private final String id;
    private final String problem;

    public CorruptSnapshotException(String model, String id, String problem) {
        this("snapshot " + id + " of model '" + model + "' is corrupt: " + problem, model, id, problem);
    }

    private CorruptSnapshotException(String message, String model, String id, String problem) {
        super(message);
        this.model = model;
        this.id = id;
        this.problem = problem;
    }

    /** None of a model's snapshots is valid; {@code problems} lists each one's id and problem. */
    static CorruptSnapshotException noneValid(String model, String problems) {
        return new CorruptSnapshotException("model '" + model + "' has no valid snapshot: " + problems, model, null,
                problems);
    }

    public String model() {
        return model;
    }

    /** The snapshot's id; null when no snapshot of the model is valid. */
    public String id() {
        return id;
    }

    /** What is wrong, naming the file first, e.g. {@code weights.safetensors: CRC32C mismatch}. */
    public String problem() {
        return problem;
    }
}
