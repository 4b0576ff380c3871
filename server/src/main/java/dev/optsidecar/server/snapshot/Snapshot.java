package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.proto.v1.SnapshotInfo;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * An opened snapshot whose manifest and files all passed verification. Its files' headers are
 * parsed; their data is read on demand through {@link SafetensorsFile#readAll}.
 */
public final class Snapshot {
    private final SnapshotInfo info;
    private final Manifest manifest;
    private final Path dir;
    private final Map<String, SafetensorsFile> files;

    Snapshot(SnapshotInfo info, Manifest manifest, Path dir, Map<String, SafetensorsFile> files) {
        this.info = info;
        this.manifest = manifest;
        this.dir = dir;
        this.files = Collections.unmodifiableMap(files);
    }

    public SnapshotInfo info() {
        return info;
    }

    public String id() {
        return info.getId();
    }

    /** Model version (steps applied) the snapshot holds. */
    public long version() {
        return manifest.version();
    }

    /** The manifest format version the snapshot was written in (package-info: what each one changed). */
    public int formatVersion() {
        return manifest.formatVersion();
    }

    /** The model metadata given to {@link SnapshotStore#stage}, as stored. */
    public JsonNode modelMeta() {
        return manifest.modelMeta();
    }

    public String trigger() {
        return manifest.trigger();
    }

    /** The file of that name, or null if the snapshot has none. */
    public SafetensorsFile file(String name) {
        return files.get(name);
    }

    /** The snapshot's file names, in the order they were staged. */
    public List<String> fileNames() {
        return new ArrayList<>(files.keySet());
    }

    /** The snapshot's directory. */
    public Path dir() {
        return dir;
    }

    @Override
    public String toString() {
        return "Snapshot[" + info.getModel() + " " + info.getId() + ", version " + manifest.version() + "]";
    }
}
