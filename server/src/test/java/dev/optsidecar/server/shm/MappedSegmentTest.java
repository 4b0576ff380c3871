package dev.optsidecar.server.shm;

import dev.optsidecar.server.OptError;
import org.junit.jupiter.api.io.TempDir;

import java.nio.ByteBuffer;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A mapping whose file the client truncates under a copy: the fault is the client's error, not the server's. */
class MappedSegmentTest {
    private static final int FLOATS = 16 << 20;

    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(booleans = {false, true})
    void truncationUnderACopyBecomesASharedMemoryFault(boolean writing, @TempDir Path dir) throws Exception {
        int pageFaults = 0;
        for (int trial = 0; trial < 8; trial++) {
            String name = "optsidecar-race-" + trial;
            try (TestSegment file = new TestSegment(dir, name, new int[] {FLOATS})) {
                SharedMemory shm = SharedMemory.in(dir);
                try (MappedSegment segment = shm.map(file.message, new long[] {FLOATS}, "open.shared")) {
                    Thread truncator = new Thread(() -> {
                        try {
                            Thread.sleep(5);
                            file.truncate(0);
                        } catch (Exception e) {
                            throw new IllegalStateException(e);
                        }
                    });
                    truncator.start();
                    ByteBuffer slice = ByteBuffer.allocate(1 << 20);
                    OptError error = assertThrows(OptError.class, () -> {
                        while (true) { // reads until the truncation stops it
                            for (long at = 0; at < FLOATS; at += slice.capacity() / 4) {
                                slice.clear();
                                if (writing) {
                                    segment.writeWeights(0, at, slice);
                                } else {
                                    segment.readGradient(0, at, slice);
                                }
                            }
                        }
                    });
                    truncator.join();
                    assertEquals(OptError.Reason.SHARED_MEMORY_FAULT, error.reason());
                    if (error.getMessage().contains("faulted")) {
                        pageFaults++;
                    }
                }
                assertEquals(0, shm.mappedSegments());
            }
        }
        assertTrue(pageFaults > 0, "no truncation landed inside a copy");
    }
}
