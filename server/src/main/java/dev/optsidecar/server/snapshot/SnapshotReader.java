package dev.optsidecar.server.snapshot;

import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.Echo;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Locale;
import java.util.logging.Logger;

/**
 * Finds and opens committed snapshots, each verified first: listing with validity, opening one,
 * falling back to the newest valid one, and the models that have any.
 */
final class SnapshotReader {
    private static final Logger LOG = Logger.getLogger(SnapshotReader.class.getName());

    private final SnapshotFiles files;
    private final SnapshotVerifier verifier;

    SnapshotReader(SnapshotFiles files) {
        this.files = files;
        this.verifier = new SnapshotVerifier(files);
    }

    /** The model's committed snapshots, oldest first; with {@code readData} false the data's CRC32C is not checked. */
    List<SnapshotInfo> list(String model, boolean readData) {
        return listDir(model, ModelNames.encode(model), readData);
    }

    /** Every model's snapshots, tombstoned models included, ordered by model then id. */
    List<SnapshotInfo> listAll() {
        List<SnapshotInfo> all = new ArrayList<>();
        for (String dirName : files.modelDirNames()) {
            String model = modelName(dirName);
            all.addAll(listDir(model == null ? dirName : model, dirName, true));
        }
        all.sort(Comparator.comparing(SnapshotInfo::getModel).thenComparingLong(i -> Long.parseLong(i.getId())));
        return all;
    }

    private List<SnapshotInfo> listDir(String model, String dirName, boolean readData) {
        Path modelDir = files.modelDir(dirName);
        if (!Files.isDirectory(modelDir)) {
            return List.of();
        }
        List<SnapshotInfo> out = new ArrayList<>();
        try {
            for (long id : SnapshotFiles.committedIds(modelDir)) {
                SnapshotVerifier.Verified v = verifier.verify(model, dirName, SnapshotFiles.formatId(id), readData,
                        false);
                if (v != null) {
                    out.add(v.info());
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out;
    }

    /**
     * Opens one snapshot after verifying the manifest and every file's size, CRC32C and header.
     *
     * @throws NoSuchFileException       if the model has no committed snapshot of that id
     * @throws CorruptSnapshotException  if it fails verification
     */
    Snapshot open(String model, String id) throws IOException {
        String dirName = ModelNames.encode(model);
        if (!SnapshotFiles.isId(id)) { // before it is resolved: a NUL would fail as InvalidPathException
            throw new NoSuchFileException(dirName + "/" + id, null, "model '" + Echo.of(model) + "' has no snapshot " + Echo.of(id));
        }
        Path dir = files.modelDir(dirName).resolve(id);
        SnapshotVerifier.Verified v = null;
        if (Files.isDirectory(dir)) {
            v = verifier.verify(model, dirName, id, true, true);
        }
        if (v == null) {
            throw new NoSuchFileException(dirName + "/" + id, null, "model '" + Echo.of(model) + "' has no snapshot " + id);
        }
        if (v.problem() != null) {
            throw new CorruptSnapshotException(model, id, v.problem());
        }
        return new Snapshot(v.info(), v.manifest(), dir, v.files());
    }

    /**
     * Opens the newest snapshot that passes verification, logging a warning for each newer one
     * that does not.
     *
     * @throws NoSuchFileException      if the model has no snapshots
     * @throws CorruptSnapshotException if none is valid
     */
    Snapshot openLatestValid(String model) throws IOException {
        return loadLatestValid(model, snapshot -> snapshot);
    }

    /**
     * Like {@link #openLatestValid}, then hands the snapshot to {@code loader}: a snapshot the
     * loader refuses with a {@link CorruptSnapshotException} (valid checksums, contents that
     * cannot be loaded) is skipped for an older one, just as one that fails verification.
     */
    <T> T loadLatestValid(String model, SnapshotStore.Loader<T> loader) throws IOException {
        String dirName = ModelNames.encode(model);
        Path modelDir = files.modelDir(dirName);
        List<Long> ids = Files.isDirectory(modelDir) ? SnapshotFiles.committedIds(modelDir) : List.of();
        List<String> problems = new ArrayList<>();
        // Logged once a snapshot loads; when none does, the exception lists them all and the caller
        // reports it once (one line for a failed start, one warning for a model left out).
        List<String> fallbacks = new ArrayList<>();
        for (int i = ids.size() - 1; i >= 0; i--) {
            String id = SnapshotFiles.formatId(ids.get(i));
            try {
                T loaded = loader.load(open(model, id));
                fallbacks.forEach(LOG::warning);
                return loaded;
            } catch (CorruptSnapshotException e) {
                if (i > 0) {
                    fallbacks.add(String.format(Locale.ROOT, "snapshot %s of model '%s' is corrupt (%s); falling back to %s",
                            id, model, e.problem(), SnapshotFiles.formatId(ids.get(i - 1))));
                }
                problems.add(id + " (" + e.problem() + ")");
            } catch (NoSuchFileException e) {
                // Removed by retention meanwhile; older ones follow.
            }
        }
        if (problems.isEmpty()) {
            throw new NoSuchFileException(dirName, null, "model '" + Echo.of(model) + "' has no snapshots");
        }
        throw CorruptSnapshotException.noneValid(model, String.join(", ", problems));
    }

    /** Names of the models that have committed snapshots and are not tombstoned, sorted. */
    List<String> models() {
        List<String> out = new ArrayList<>();
        for (String dirName : files.modelDirNames()) {
            if (Tombstones.isMarked(files.modelDir(dirName))) {
                continue;
            }
            String model = modelName(dirName);
            if (model != null) {
                out.add(model);
            }
        }
        out.sort(null);
        return out;
    }

    /** The real model name for a model directory, from its newest readable manifest, else decoded from the name. */
    private String modelName(String dirName) {
        Path modelDir = files.modelDir(dirName);
        List<Long> ids;
        try {
            ids = SnapshotFiles.committedIds(modelDir);
        } catch (IOException e) {
            return null;
        }
        if (ids.isEmpty()) {
            return null;
        }
        for (int i = ids.size() - 1; i >= 0; i--) {
            try {
                Manifest m = SnapshotVerifier.readManifest(modelDir.resolve(SnapshotFiles.formatId(ids.get(i))));
                if (ModelNames.encode(m.model()).equals(dirName)) {
                    return m.model();
                }
            } catch (SnapshotVerifier.Problem | IOException | IllegalArgumentException e) {
                // Try an older one.
            }
        }
        return ModelNames.decode(dirName);
    }
}
