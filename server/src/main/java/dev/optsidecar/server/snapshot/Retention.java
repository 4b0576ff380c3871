package dev.optsidecar.server.snapshot;

import dev.optsidecar.server.fileutil.FileTrees;
import dev.optsidecar.server.fileutil.Fsync;

import java.io.IOException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.List;

/**
 * Keeps the newest {@code keep} committed snapshots of a model, and removes what interrupted
 * writes and deletes left behind. Other code's files in the model directory are not touched.
 */
final class Retention {
    private final int keep;

    Retention(int keep) {
        if (keep < 1) {
            throw new IllegalArgumentException("keep must be at least 1, got " + keep);
        }
        this.keep = keep;
    }

    int keep() {
        return keep;
    }

    /** Runs holding {@code reservations}' monitor, so that the snapshots being written are known. */
    void apply(Path modelDir, Reservations reservations) throws IOException {
        List<Long> ids = SnapshotFiles.committedIds(modelDir);
        int excess = Math.max(0, ids.size() - keep);
        for (int i = 0; i < excess; i++) {
            String id = SnapshotFiles.formatId(ids.get(i));
            // Renamed first, so that a half-deleted directory never looks like a snapshot.
            Path doomed = modelDir.resolve(SnapshotFiles.DEL_PREFIX + id);
            Files.move(modelDir.resolve(id), doomed, StandardCopyOption.ATOMIC_MOVE);
            FileTrees.delete(doomed);
        }
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(modelDir)) {
            for (Path e : entries) {
                String name = e.getFileName().toString();
                if (name.startsWith(SnapshotFiles.DEL_PREFIX) || name.startsWith(SnapshotFiles.TMP_PREFIX)
                        && !reservations.inFlight.contains(name.substring(SnapshotFiles.TMP_PREFIX.length()))) {
                    FileTrees.delete(e);
                }
            }
        }
        Fsync.dir(modelDir);
    }
}
