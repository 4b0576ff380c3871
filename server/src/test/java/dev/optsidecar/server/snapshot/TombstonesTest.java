package dev.optsidecar.server.snapshot;

import dev.optsidecar.proto.v1.SnapshotInfo;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static dev.optsidecar.server.snapshot.SnapshotFixtures.snapshot;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A deleted model's marker. */
class TombstonesTest {
    @TempDir
    Path root;

    @Test
    void tombstoneHidesTheModelButKeepsItsSnapshots() throws IOException {
        SnapshotStore store = new SnapshotStore(root, 5);
        snapshot(store, "gone", 1);
        snapshot(store, "kept", 1);
        store.tombstone("gone");
        store.tombstone("gone");
        assertTrue(store.isTombstoned("gone"));
        assertTrue(Files.exists(store.modelDir("gone").resolve("DELETED")));
        assertEquals(List.of("kept"), store.models());
        assertEquals(1, store.list("gone").size());
        assertEquals("000001", store.open("gone", "000001").id());
        assertEquals(2, store.listAll().size());
        SnapshotInfo next = snapshot(store, "gone", 2);
        assertEquals("000002", next.getId());
        assertEquals(List.of("kept"), store.models(), "still tombstoned after a snapshot");
        store.clearTombstone("gone");
        store.clearTombstone("gone");
        assertFalse(store.isTombstoned("gone"));
        assertEquals(List.of("gone", "kept"), store.models());
        store.tombstone("never-saved");
        assertEquals(List.of("gone", "kept"), store.models());
    }
}
