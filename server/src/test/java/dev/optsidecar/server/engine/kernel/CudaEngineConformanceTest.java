package dev.optsidecar.server.engine.kernel;

import dev.optsidecar.server.engine.cuda.CudaEngine;
import dev.optsidecar.server.engine.cuda.EmulatedCuda;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The kernel matrix (every algorithm, wrapper and flag value, as the planners build the programs)
 * run step after step through the CUDA engine's Java side and the real per-element arithmetic, on
 * the CPU emulation of its device: the reference loops' bits for θ, every state slot, the eval
 * view and the way back from it.
 */
class CudaEngineConformanceTest {
    private static final int[] SIZES = {1, 700, 5003};
    private static CudaEngine engine;

    @BeforeAll
    static void open() throws Exception {
        engine = EmulatedCuda.open(1L << 30);
    }

    @AfterAll
    static void close() {
        engine.close();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.optsidecar.server.engine.kernel.KernelMatrix#cases")
    void cudaEngineGivesTheReferenceBits(KernelMatrix.Case c) {
        KernelConformanceTest.assertReferenceBits(engine, c, SIZES, program -> { });
    }
}
