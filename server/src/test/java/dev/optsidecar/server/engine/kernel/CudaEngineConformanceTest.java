package dev.optsidecar.server.engine.kernel;

import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.cuda.CudaEngine;
import dev.optsidecar.server.engine.cuda.EmulatedCuda;
import dev.optsidecar.server.optim.Algorithm;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;

import static dev.optsidecar.server.engine.kernel.KernelConformanceTest.assertSameBits;

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
        List<List<KernelCall>> programs = c.programs();
        Algorithm alg = c.create();
        for (int n : SIZES) {
            int slots = c.slotCount();
            float[] theta = TestData.random(n, 1);
            float[][] state = new float[slots][n];
            EngineTensor tensor = engine.allocate(n, slots);
            try {
                tensor.writeParams(0, TestData.le(theta));
                for (int t = 0; t < programs.size(); t++) {
                    List<KernelCall> calls = programs.get(t);
                    if (calls.isEmpty()) {
                        continue;
                    }
                    float[] grad = TestData.random(n, 100 + t);
                    tensor.writeGradient(0, TestData.le(grad));
                    engine.run(List.of(new TensorProgram(tensor, calls)));
                    for (KernelCall call : calls) {
                        ReferenceKernels.step(call, theta, grad, state);
                    }
                    String at = c + ", " + n + " elements, step " + t;
                    assertSameBits(theta, TestData.params(tensor), at + ": θ");
                    for (int s = 0; s < slots; s++) {
                        assertSameBits(state[s], slot(tensor, s, n), at + ": slot " + s);
                    }
                }
                if (alg.evalView() != null) {
                    float[] expected = new float[n];
                    ReferenceKernels.view(alg.evalView(), theta, state, expected);
                    ByteBuffer out = ByteBuffer.allocate(n * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
                    tensor.readView(alg.evalView(), 0, n, out);
                    assertSameBits(expected, floats(out.flip(), n), c + ", " + n + " elements: eval view");
                    KernelCall toTrain = alg.trainFromEval();
                    engine.run(List.of(new TensorProgram(tensor, List.of(toTrain))));
                    ReferenceKernels.step(toTrain, theta, new float[n], state);
                    assertSameBits(theta, TestData.params(tensor), c + ", " + n + " elements: train from eval");
                }
            } finally {
                tensor.free();
            }
        }
    }

    private static float[] slot(EngineTensor t, int s, int n) {
        ByteBuffer b = ByteBuffer.allocate(n * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        t.readSlot(s, 0, n, b);
        return floats(b.flip(), n);
    }

    private static float[] floats(ByteBuffer b, int n) {
        float[] v = new float[n];
        b.order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(v);
        return v;
    }
}
