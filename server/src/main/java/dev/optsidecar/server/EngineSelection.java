package dev.optsidecar.server;

import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.engine.cuda.CudaEngine;

import java.util.List;
import java.util.logging.Logger;

/**
 * {@code --engine auto|cpu|cuda} and {@code --device N}: {@code cpu} computes on the CPU;
 * {@code cuda} on CUDA device N once its start-up self-test passes, and the server does not start
 * otherwise, saying why; {@code auto} (the default) is {@code cuda} when that works, else the CPU
 * with one log line saying why not (no driver, no device, no binary for this GPU, out of memory).
 */
final class EngineSelection {
    private static final Logger LOG = Logger.getLogger(EngineSelection.class.getName());
    static final List<String> MODES = List.of("auto", "cpu", "cuda");

    private EngineSelection() {}

    /**
     * The engine chosen and the line that says so, logged by
     * {@link #log} once the server serves: a server that then fails to start says only why.
     */
    record Choice(Engine engine, String summary) {}

    /** @throws IllegalStateException with the reason, when {@code cuda} is asked for and cannot run */
    static Choice open(String mode, int device, int threads) {
        if (mode.equals("cpu")) {
            return new Choice(new CpuEngine(threads), "engine: cpu, " + CpuEngine.bulkLoops());
        }
        try {
            CudaEngine cuda = CudaEngine.open(device);
            return new Choice(cuda, "engine: cuda on " + cuda.device() + ", self-test passed");
        } catch (CudaEngine.Unavailable e) {
            if (mode.equals("cuda")) {
                throw new IllegalStateException("--engine cuda: " + e.getMessage());
            }
            return new Choice(new CpuEngine(threads),
                    "engine: cpu, " + CpuEngine.bulkLoops() + " (CUDA not used: " + e.getMessage() + ")");
        }
    }

    static void log(Choice choice) {
        if (choice.summary() != null) {
            LOG.info(choice.summary());
        }
    }
}
