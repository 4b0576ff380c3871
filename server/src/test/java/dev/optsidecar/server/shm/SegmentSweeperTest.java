package dev.optsidecar.server.shm;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.time.Duration;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Abandoned segments (a client killed before it removed its own) are removed, and nothing else. */
class SegmentSweeperTest {
    @Test
    void removesOnlyClientSegmentsNotOpenPastTheGracePeriod(@TempDir Path dir) throws Exception {
        FileTime old = FileTime.fromMillis(System.currentTimeMillis() - 120_000);
        Path abandoned = Files.createFile(dir.resolve("optsidecar-abandoned"));
        Path recent = Files.createFile(dir.resolve("optsidecar-recent"));
        Path foreign = Files.createFile(dir.resolve("someone-elses"));
        Path directory = Files.createDirectory(dir.resolve("optsidecar-directory"));
        Files.setLastModifiedTime(abandoned, old);
        Files.setLastModifiedTime(foreign, old);
        Files.setLastModifiedTime(directory, old);
        SharedMemory shm = SharedMemory.in(dir);
        try (TestSegment inUse = new TestSegment(dir, "optsidecar-in-use", new int[] {4});
             Segment mapped = shm.open(inUse.message, new long[] {4}, "open.shared")) {
            Files.setLastModifiedTime(inUse.path, old);
            assertEquals(1, new SegmentSweeper(shm, Duration.ofMinutes(1)).sweep());
            assertFalse(Files.exists(abandoned));
            assertTrue(Files.exists(recent));
            assertTrue(Files.exists(foreign));
            assertTrue(Files.exists(directory));
            assertTrue(Files.exists(inUse.path), "a mapped segment was removed");
        }
    }
}
