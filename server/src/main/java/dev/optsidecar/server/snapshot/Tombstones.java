package dev.optsidecar.server.snapshot;

import dev.optsidecar.server.fileutil.Fsync;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * The {@code DELETED} marker in a model directory: the model was deleted, so a restore of every
 * model skips it, but its snapshots are kept and can still be listed and opened.
 */
final class Tombstones {
    private Tombstones() {}

    static void mark(Path modelDir) throws IOException {
        Fsync.createDir(modelDir);
        Path marker = modelDir.resolve(SnapshotFiles.TOMBSTONE);
        if (!Files.exists(marker)) {
            Fsync.write(marker, ("deleted_unix_millis " + System.currentTimeMillis() + "\n")
                    .getBytes(StandardCharsets.US_ASCII));
            Fsync.dir(modelDir);
        }
    }

    static void clear(Path modelDir) throws IOException {
        if (Files.deleteIfExists(modelDir.resolve(SnapshotFiles.TOMBSTONE))) {
            Fsync.dir(modelDir);
        }
    }

    static boolean isMarked(Path modelDir) {
        return Files.exists(modelDir.resolve(SnapshotFiles.TOMBSTONE));
    }
}
