package dev.optsidecar.server.durability;

import dev.optsidecar.server.snapshot.SnapshotStore;

import java.io.IOException;
import java.nio.file.Files;
import java.util.OptionalLong;

/**
 * Deletes the journals no kept snapshot needs. Restoring from snapshot S replays S's journal and
 * the later ones, so once snapshot retention has run, the journals of snapshots older than the
 * oldest kept one chain onto nothing.
 */
final class JournalRetention {
    private JournalRetention() {}

    /**
     * Deletes the model's journals that follow snapshots older than its oldest committed one. No
     * fsync: a journal that a crash brings back is never replayed, and goes at the next snapshot.
     */
    static void apply(SnapshotStore store, String model) throws IOException {
        OptionalLong oldestKept = store.oldestId(model);
        if (oldestKept.isEmpty()) {
            return;
        }
        for (JournalFiles.Journal j : JournalFiles.list(store.modelDir(model))) {
            if (j.snapshotId() < oldestKept.getAsLong()) {
                Files.deleteIfExists(j.file());
            }
        }
    }
}
