package dev.optsidecar.server.shm;

import dev.optsidecar.server.OptError;
import org.junit.jupiter.api.io.TempDir;

import java.nio.ByteBuffer;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** A segment the client truncates under the server's reads or writes: the client's error, not the server's. */
class SegmentFileTest {
    private static final int FLOATS = 16 << 20;

    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(booleans = {false, true})
    void truncationUnderACopyBecomesASharedMemoryFault(boolean writing, @TempDir Path dir) throws Exception {
        for (int trial = 0; trial < 8; trial++) {
            String name = "optsidecar-race-" + trial;
            try (TestSegment file = new TestSegment(dir, name, new int[] {FLOATS})) {
                SharedMemory shm = SharedMemory.in(dir);
                try (SegmentFile segment = (SegmentFile) shm.open(file.message, new long[] {FLOATS}, "open.shared")) {
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
                    assertEquals(OptError.Reason.SHARED_MEMORY_FAULT, error.reason(), error::getMessage);
                    assertTrue(error.getMessage().contains("optsidecar-race-" + trial), error::getMessage);
                }
                assertEquals(0, shm.openSegments());
            }
        }
    }
}
