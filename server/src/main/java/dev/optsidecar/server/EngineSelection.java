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

    /** @throws IllegalStateException with the reason, when {@code cuda} is asked for and cannot run */
    static Engine open(String mode, int device, int threads) {
        if (mode.equals("cpu")) {
            return new CpuEngine(threads);
        }
        try {
            CudaEngine cuda = CudaEngine.open(device);
            LOG.info(() -> "engine: cuda on " + cuda.device() + ", self-test passed");
            return cuda;
        } catch (CudaEngine.Unavailable e) {
            if (mode.equals("cuda")) {
                throw new IllegalStateException("--engine cuda: " + e.getMessage());
            }
            LOG.info(() -> "engine: cpu (CUDA not used: " + e.getMessage() + ")");
            return new CpuEngine(threads);
        }
    }
}
