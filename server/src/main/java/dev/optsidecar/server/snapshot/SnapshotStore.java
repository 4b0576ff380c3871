package dev.optsidecar.server.snapshot;

import com.fasterxml.jackson.databind.JsonNode;
import dev.optsidecar.proto.v1.ExportInfo;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.View;

import java.io.IOException;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.List;
import java.util.OptionalLong;

/**
 * Model snapshots and exports on disk, through one entry point; the layout and format are
 * described in {@link dev.optsidecar.server.snapshot the package documentation}. Each job is its
 * own class: {@link SnapshotWriter} (stage and commit), {@link Retention}, {@link SnapshotReader}
 * (verify, list, open), {@link Tombstones} and {@link Exports}.
 *
 * <p>Thread-safe. Id allocation and the cleanup of temporary directories are coordinated for all
 * stores on the same root within one process.
 */
public final class SnapshotStore {
    private final SnapshotFiles files;
    private final Retention retention;
    private final SnapshotWriter writer;
    private final SnapshotReader reader;
    private final Exports exports;

    /**
     * @param root the state directory, created if absent
     * @param keep how many committed snapshots to keep per model (at least 1)
     */
    public SnapshotStore(Path root, int keep) throws IOException {
        this(root, keep, IdClaims.NONE);
    }

    /** As {@link #SnapshotStore(Path, int)}; {@code claims} names the ids other code's files hold. */
    public SnapshotStore(Path root, int keep, IdClaims claims) throws IOException {
        this.retention = new Retention(keep);
        this.files = new SnapshotFiles(root, claims);
        this.writer = new SnapshotWriter(files, retention);
        this.reader = new SnapshotReader(files);
        this.exports = new Exports(files.root());
    }

    public Path root() {
        return files.root();
    }

    /** Retained snapshots per model. */
    public int keep() {
        return retention.keep();
    }

    /** Directory of one model (it may not exist yet); it also holds other code's journal files. */
    public Path modelDir(String model) {
        return files.modelDir(ModelNames.encode(model));
    }

    /** Phase 1 of writing a snapshot: see {@link SnapshotWriter#stage}. */
    public Pending stage(String model, String trigger, long version, JsonNode modelMeta, List<FileOut> files)
            throws IOException {
        return writer.stage(model, trigger, version, modelMeta, files);
    }

    /**
     * Phase 2: makes a staged snapshot durable and visible, then applies retention; see
     * {@link SnapshotWriter#commit}.
     */
    public SnapshotInfo commit(Pending p) throws IOException {
        return writer.commit(p);
    }

    /** Deletes a staged snapshot; never throws, a no-op once its commit has begun. */
    public void abort(Pending p) {
        writer.abort(p);
    }

    /** The model's committed snapshots, oldest first, each verified (sizes and CRC32C of every file). */
    public List<SnapshotInfo> list(String model) {
        return list(model, true);
    }

    /**
     * As {@link #list(String)}; with {@code readData} false only the manifest's checksum and the
     * files' presence and sizes are checked, without reading the data.
     */
    public List<SnapshotInfo> list(String model, boolean readData) {
        return reader.list(model, readData);
    }

    /** Every model's snapshots, tombstoned models included, ordered by model then id. */
    public List<SnapshotInfo> listAll() {
        return reader.listAll();
    }

    /**
     * Opens one snapshot after verifying the manifest and every file's size, CRC32C and header.
     *
     * @throws NoSuchFileException       if the model has no committed snapshot of that id
     * @throws CorruptSnapshotException  if it fails verification
     */
    public Snapshot open(String model, String id) throws IOException {
        return reader.open(model, id);
    }

    /**
     * Opens the newest snapshot that passes verification, logging a warning for each newer one
     * that does not.
     *
     * @throws NoSuchFileException      if the model has no snapshots
     * @throws CorruptSnapshotException if none is valid
     */
    /** Whether {@code id} is a snapshot id as the store spells it, e.g. {@code 000007}. */
    public static boolean isId(String id) {
        return SnapshotFiles.isId(id);
    }

    public Snapshot openLatestValid(String model) throws IOException {
        return reader.openLatestValid(model);
    }

    /** Loads a model from one opened snapshot; throws {@link CorruptSnapshotException} for one it cannot load. */
    @FunctionalInterface
    public interface Loader<T> {
        T load(Snapshot snapshot) throws IOException;
    }

    /** The newest snapshot that passes verification and that {@code loader} can load; see {@link #openLatestValid}. */
    public <T> T loadLatestValid(String model, Loader<T> loader) throws IOException {
        return reader.loadLatestValid(model, loader);
    }

    /** The id of the model's oldest committed snapshot (unverified), if it has any. */
    public OptionalLong oldestId(String model) throws IOException {
        List<Long> ids = SnapshotFiles.committedIds(modelDir(model));
        return ids.isEmpty() ? OptionalLong.empty() : OptionalLong.of(ids.get(0));
    }

    /** Names of the models that have committed snapshots and are not tombstoned, sorted. */
    public List<String> models() {
        return reader.models();
    }

    /** Marks a model deleted: {@link #models()} skips it; its snapshots stay and can still be listed and opened. */
    public void tombstone(String model) throws IOException {
        Tombstones.mark(modelDir(model));
    }

    public void clearTombstone(String model) throws IOException {
        Tombstones.clear(modelDir(model));
    }

    public boolean isTombstoned(String model) {
        return Tombstones.isMarked(modelDir(model));
    }

    /** Writes a view of a model's weights under exports/; see {@link Exports#export}. */
    public ExportInfo export(String model, long version, View label, FileOut file) throws IOException {
        return exports.export(model, version, label, file);
    }
}
