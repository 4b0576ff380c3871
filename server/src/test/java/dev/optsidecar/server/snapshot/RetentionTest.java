package dev.optsidecar.server.snapshot;

import dev.optsidecar.proto.v1.SnapshotInfo;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;

import static dev.optsidecar.server.snapshot.SnapshotFixtures.entries;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.ids;
import static dev.optsidecar.server.snapshot.SnapshotFixtures.snapshot;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/** Retention keeps the newest snapshots and removes what interrupted writes left. */
class RetentionTest {
    @TempDir
    Path root;

    @Test
    void leftoverTempDirectoriesAreIgnoredThenRemoved() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 3);
        snapshot(store, "m", 1);
        Path modelDir = store.modelDir("m");
        // A crash mid-commit: complete-looking contents, but still under its temporary name.
        Path leftover = modelDir.resolve(".tmp-000009");
        Files.createDirectory(leftover);
        for (String f : entries(modelDir.resolve("000001"))) {
            Files.copy(modelDir.resolve("000001").resolve(f), leftover.resolve(f));
        }
        Files.createDirectory(modelDir.resolve(".del-000000"));
        assertEquals(List.of("000001"), ids(store.list("m")));
        assertEquals(List.of("000001"), ids(store.listAll()));
        assertThrows(NoSuchFileException.class, () -> store.open("m", "000009"));
        assertThrows(NoSuchFileException.class, () -> store.open("m", ".tmp-000009"));
        assertEquals("000001", store.openLatestValid("m").id());

        SnapshotInfo next = snapshot(store, "m", 2);
        assertEquals("000010", next.getId(), "ids continue above the leftover");
        assertEquals(Set.of("000001", "000010"), entries(modelDir), "leftovers removed by the commit");
    }

    @Test
    void retentionKeepsTheNewestAndLeavesOtherFilesAlone() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 2);
        Path modelDir = store.modelDir("m");
        snapshot(store, "m", 1);
        Files.writeString(modelDir.resolve("journal-000001.log"), "steps since 000001");
        for (int v = 2; v <= 4; v++) {
            snapshot(store, "m", v);
        }
        assertEquals(List.of("000003", "000004"), ids(store.list("m")));
        assertEquals(Set.of("000003", "000004", "journal-000001.log"), entries(modelDir),
                "journals are deleted by the code that writes them");
    }
}
