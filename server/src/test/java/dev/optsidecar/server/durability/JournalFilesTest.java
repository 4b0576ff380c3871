package dev.optsidecar.server.durability;

import dev.optsidecar.server.snapshot.SnapshotStore;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static dev.optsidecar.server.snapshot.SnapshotFixtures.snapshot;
import static org.junit.jupiter.api.Assertions.assertEquals;

/** Journal file names: made, recognised and listed in one place. */
class JournalFilesTest {
    @TempDir
    Path root;

    @Test
    void aJournalIsNamedAfterTheSnapshotItFollows() {
        Path modelDir = root.resolve("m");
        assertEquals(modelDir.resolve("journal-000007.log"), JournalFiles.path(modelDir, "000007"));
        assertEquals(7, JournalFiles.snapshotId("journal-000007.log"));
        assertEquals(1_234_567, JournalFiles.snapshotId("journal-1234567.log"));
        for (String other : List.of("journal-notes.txt", "journal-.log", "journal-000007.log.tmp", "000007",
                ".tmp-000007", "journal-1234567890123456789.log")) {
            assertEquals(-1, JournalFiles.snapshotId(other), other);
        }
    }

    @Test
    void journalsAreListedInSnapshotOrder() throws IOException {
        for (String name : List.of("journal-1000000.log", "journal-000007.log", "journal-999999.log",
                "journal-notes.txt", "000007")) {
            Files.writeString(root.resolve(name), "");
        }
        assertEquals(List.of(7L, 999_999L, 1_000_000L),
                JournalFiles.list(root).stream().map(JournalFiles.Journal::snapshotId).toList());
    }

    @Test
    void aJournalClaimsTheIdOfTheSnapshotItFollows() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 10, JournalFiles::snapshotId);
        assertEquals("000001", snapshot(store, "b", 1).getId());
        // Journals count too: a journal for an id means that id was used.
        Files.writeString(store.modelDir("b").resolve("journal-000007.log"), "");
        assertEquals("000008", snapshot(store, "b", 2).getId());
    }
}
