package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;

import java.nio.file.Path;
import java.util.List;

/**
 * A snapshot written to its temporary directory by {@link SnapshotStore#stage} and not yet
 * committed or aborted. Pass it to exactly one of {@link SnapshotStore#commit} or
 * {@link SnapshotStore#abort}.
 */
public final class Pending {
    enum State { STAGED, COMMITTING, COMMITTED, ABORTED }

    private final String model;
    private final String modelDirName;
    private final String id;
    private final long version;
    private final String trigger;
    private final long createdUnixMillis;
    private final JsonNode modelMeta;
    private final Path tempDir;
    private final List<Manifest.FileEntry> files;
    private State state = State.STAGED;

    Pending(String model, String modelDirName, String id, long version, String trigger, long createdUnixMillis,
            JsonNode modelMeta, Path tempDir, List<Manifest.FileEntry> files) {
        this.model = model;
        this.modelDirName = modelDirName;
        this.id = id;
        this.version = version;
        this.trigger = trigger;
        this.createdUnixMillis = createdUnixMillis;
        this.modelMeta = modelMeta;
        this.tempDir = tempDir;
        this.files = List.copyOf(files);
    }

    /** The reserved snapshot id, e.g. {@code 000007}. */
    public String id() {
        return id;
    }

    public String model() {
        return model;
    }

    long version() {
        return version;
    }

    /** Bytes written so far: every data file together (the manifest comes at commit). */
    public long bytes() {
        long n = 0;
        for (Manifest.FileEntry f : files) {
            n += f.bytes();
        }
        return n;
    }

    String modelDirName() {
        return modelDirName;
    }

    Path tempDir() {
        return tempDir;
    }

    List<Manifest.FileEntry> files() {
        return files;
    }

    Manifest manifest() {
        return new Manifest(Manifest.FORMAT_VERSION, model, id, version, trigger, createdUnixMillis, modelMeta, files);
    }

    synchronized void transition(State from, State to) {
        if (state != from) {
            throw new IllegalStateException("snapshot " + id + " of model '" + model + "' is " + state.name()
                    .toLowerCase(java.util.Locale.ROOT) + ", not " + from.name().toLowerCase(java.util.Locale.ROOT));
        }
        state = to;
    }

    /** Moves from {@code from} to {@code to} if in {@code from}; returns whether it did. */
    synchronized boolean tryTransition(State from, State to) {
        if (state != from) {
            return false;
        }
        state = to;
        return true;
    }

    @Override
    public String toString() {
        return "Pending[" + model + " " + id + "]";
    }
}
