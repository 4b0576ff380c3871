package dev.optsidecar.server.durability;

import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.server.snapshot.SnapshotFixtures;
import dev.optsidecar.server.snapshot.SnapshotStore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;

import static dev.optsidecar.server.snapshot.SnapshotFixtures.entries;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.ids;
import static org.junit.jupiter.api.Assertions.assertEquals;

/** Journals go once no kept snapshot chains onto them. */
class JournalRetentionTest {
    @TempDir
    Path root;

    /** What Persistence does for each snapshot: commit (with the store's retention), then journal retention. */
    private static SnapshotInfo snapshot(SnapshotStore store, String model, long version) throws IOException {
        SnapshotInfo info = SnapshotFixtures.snapshot(store, model, version);
        JournalRetention.apply(store, model);
        return info;
    }

    @Test
    void retentionKeepsTheNewestAndTheirJournals() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 2, JournalFiles::snapshotId);
        Path modelDir = store.modelDir("m");
        for (int v = 1; v <= 4; v++) {
            SnapshotInfo info = snapshot(store, "m", v);
            Files.writeString(modelDir.resolve("journal-" + info.getId() + ".log"), "steps since " + info.getId());
        }
        assertEquals(List.of("000003", "000004"), ids(store.list("m")));
        // Each journal goes with the last snapshot before it; journal-000004 was written after the last commit.
        assertEquals(Set.of("000003", "000004", "journal-000003.log", "journal-000004.log"), entries(modelDir));
        snapshot(store, "m", 5);
        assertEquals(Set.of("000004", "000005", "journal-000004.log"), entries(modelDir));
        Files.writeString(modelDir.resolve("journal-notes.txt"), "not a journal");
        snapshot(store, "m", 6);
        assertEquals(Set.of("000005", "000006", "journal-notes.txt"), entries(modelDir));
        // Other models are not touched.
        snapshot(store, "other", 1);
        assertEquals(List.of("000005", "000006"), ids(store.list("m")));
    }

    @Test
    void aModelWithoutSnapshotsKeepsItsJournals() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 2, JournalFiles::snapshotId);
        Path modelDir = Files.createDirectories(store.modelDir("m"));
        Files.writeString(modelDir.resolve("journal-000001.log"), "");
        JournalRetention.apply(store, "m");
        JournalRetention.apply(store, "never-saved");
        assertEquals(Set.of("journal-000001.log"), entries(modelDir));
    }
}
