package dev.optsidecar.server;

import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Handler;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeFalse;

/**
 * On a machine without a GPU driver, {@code --engine auto} runs on the CPU and logs one line with
 * the reason, and {@code --engine cuda} refuses to start with the same reason. The reason names
 * what is missing: the driver when this build carries the CUDA library, the library otherwise.
 */
class EngineSelectionTest {
    @BeforeAll
    static void onlyWithoutAGpuDriver() {
        assumeFalse(Files.exists(Path.of("/proc/driver/nvidia")) || Files.exists(Path.of("/dev/nvidiactl")),
                "this machine has an NVIDIA driver");
    }

    /** What the fallback must name here: the absent driver, or the absent library. */
    static String expectedReason() {
        return EngineSelection.class.getResource("/native/linux-x86_64/liboptsidecar_cuda.so") != null
                ? "no usable CUDA driver: none is installed"
                : "this build has no CUDA library";
    }

    @Test
    void autoFallsBackToTheCpuWithOneLineSayingWhy() {
        List<String> lines = new CopyOnWriteArrayList<>();
        Logger log = Logger.getLogger(EngineSelection.class.getName());
        Handler capture = new Handler() {
            @Override
            public void publish(LogRecord r) {
                lines.add(r.getMessage());
            }

            @Override
            public void flush() {}

            @Override
            public void close() {}
        };
        log.addHandler(capture);
        try (Engine engine = EngineSelection.open("auto", 0, 1)) {
            assertInstanceOf(CpuEngine.class, engine);
            assertEquals("cpu", engine.name());
            assertEquals("", engine.device());
        } finally {
            log.removeHandler(capture);
        }
        assertEquals(1, lines.size(), lines::toString);
        assertTrue(lines.get(0).startsWith("engine: cpu (CUDA not used: " + expectedReason()), lines::toString);
    }

    @Test
    void cudaFailsFastWithTheReason() {
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> EngineSelection.open("cuda", 0, 1));
        assertTrue(e.getMessage().startsWith("--engine cuda: " + expectedReason()), e.getMessage());
    }

    @Test
    void cpuDoesNotLookForCuda() {
        try (Engine engine = EngineSelection.open("cpu", 0, 1)) {
            assertInstanceOf(CpuEngine.class, engine);
        }
    }
}
