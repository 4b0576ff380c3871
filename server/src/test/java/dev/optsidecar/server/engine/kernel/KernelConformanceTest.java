package dev.optsidecar.server.engine.kernel;

import dev.optsidecar.server.TestData;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.optim.Algorithm;
import dev.optsidecar.server.optim.Algorithms;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Consumer;
import java.util.stream.Collectors;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The CPU engine's loops, specialised and fused, against the plain reference loop of every
 * kernel: over the whole configuration matrix, on tensors of 1 element, of less than a block, and
 * across block boundaries and thread ranges, every bit of θ, of each state slot and of the eval
 * view must be the reference's. Also checks that the matrix reaches every kernel, both values of
 * every flag, and both the fused and the chained EMA.
 */
class KernelConformanceTest {
    /** A small block, so that tensors cross blocks; 40 000 elements also split over threads. */
    private static final int BLOCK = 1 << 10;
    private static final int[] SIZES = {1, 700, 5003, 40_000};

    private static final Set<Kernel> KERNELS_RUN = ConcurrentHashMap.newKeySet();
    private static final Set<String> FLAG_VALUES_RUN = ConcurrentHashMap.newKeySet();
    private static final Set<String> COMPOSITIONS_RUN = ConcurrentHashMap.newKeySet();

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.optsidecar.server.engine.kernel.KernelMatrix#cases")
    void cpuLoopsGiveTheReferenceBits(KernelMatrix.Case c) {
        try (CpuEngine engine = new CpuEngine(2, BLOCK)) {
            assertReferenceBits(engine, c, SIZES, KernelConformanceTest::note);
        }
    }

    /**
     * Runs case {@code c}'s programs step after step on {@code engine} for tensors of each of
     * {@code sizes} elements, and after them its eval view and the way back: every bit of θ, of
     * each state slot and of the view must be the reference loops'. {@code ran} sees each program run.
     */
    static void assertReferenceBits(Engine engine, KernelMatrix.Case c, int[] sizes,
                                    Consumer<List<KernelCall>> ran) {
        List<List<KernelCall>> programs = c.programs();
        programs.forEach(ran);
        Algorithm alg = c.create();
        for (int n : sizes) {
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
                        assertSameBits(state[s], slot(tensor, s), at + ": slot " + s);
                    }
                }
                if (alg.evalView() != null) {
                    float[] expected = new float[n];
                    ReferenceKernels.view(alg.evalView(), theta, state, expected);
                    ByteBuffer out = ByteBuffer.allocate(n * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
                    tensor.readView(alg.evalView(), 0, n, out);
                    assertSameBits(expected, floats(out.flip()), c + ", " + n + " elements: eval view");
                    ran.accept(List.of(alg.evalView()));
                    KernelCall toTrain = alg.trainFromEval();
                    engine.run(List.of(new TensorProgram(tensor, List.of(toTrain))));
                    ReferenceKernels.step(toTrain, theta, new float[n], state);
                    assertSameBits(theta, TestData.params(tensor), c + ", " + n + " elements: train from eval");
                    ran.accept(List.of(toTrain));
                }
            } finally {
                tensor.free();
            }
        }
    }

    /** Every registered algorithm is in the matrix. */
    @Test
    void theMatrixCoversEveryRegisteredAlgorithm() {
        Set<String> inMatrix = KernelMatrix.cases().map(KernelMatrix.Case::algorithm).collect(Collectors.toSet());
        Set<String> missing = new TreeSet<>(Algorithms.names());
        missing.removeAll(inMatrix);
        assertTrue(missing.isEmpty(), "algorithms missing from the kernel matrix: " + missing);
    }

    /** Runs after the matrix: it must have reached every kernel, both values of every flag and both EMA compositions. */
    @AfterAll
    static void theMatrixReachesEveryBranch() {
        if (KERNELS_RUN.isEmpty()) {
            return; // the matrix was filtered out of this run
        }
        Set<Kernel> notRun = EnumSet.allOf(Kernel.class);
        notRun.removeAll(KERNELS_RUN);
        assertTrue(notRun.isEmpty(), "kernels the matrix never runs: " + notRun);
        List<String> missing = new ArrayList<>();
        for (Kernel k : Kernel.values()) {
            for (String flag : k.flags()) {
                for (boolean v : new boolean[] {false, true}) {
                    if (!FLAG_VALUES_RUN.contains(k.id() + "." + flag + "=" + v)) {
                        missing.add(k.id() + "." + flag + "=" + v);
                    }
                }
            }
        }
        assertTrue(missing.isEmpty(), "flag values the matrix never takes: " + missing);
        for (String composition : List.of("ema folded", "ema chained", "clipped")) {
            assertTrue(COMPOSITIONS_RUN.contains(composition), "the matrix never runs: " + composition);
        }
    }

    private static void note(List<KernelCall> calls) {
        for (int i = 0; i < calls.size(); i++) {
            KernelCall call = calls.get(i);
            KERNELS_RUN.add(call.kernel());
            for (String flag : call.kernel().flags()) {
                FLAG_VALUES_RUN.add(call.kernel().id() + "." + flag + "=" + call.flag(flag));
            }
            if (call.kernel().scalars().contains("grad_scale") && call.scalar("grad_scale") != 1f
                    && call.scalar("grad_scale") != -1f) {
                COMPOSITIONS_RUN.add("clipped");
            }
            if (call.kernel() == Kernel.EMA_BLEND && i > 0) {
                KernelCall before = calls.get(i - 1);
                boolean folds = before.kernel() == Kernel.ADAMW_SCHEDULE_FREE && !before.flag("first_step")
                        && before.scalar("grad_scale") == 1f;
                COMPOSITIONS_RUN.add(folds ? "ema folded" : "ema chained");
            }
        }
    }

    private static float[] slot(EngineTensor t, int s) {
        ByteBuffer b = ByteBuffer.allocate((int) t.numel() * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        t.readSlot(s, 0, (int) t.numel(), b);
        return floats(b.flip());
    }

    private static float[] floats(ByteBuffer b) {
        float[] out = new float[b.remaining() / Float.BYTES];
        b.order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }

    static void assertSameBits(float[] expected, float[] actual, String what) {
        assertEquals(expected.length, actual.length, what + ": length");
        for (int i = 0; i < expected.length; i++) {
            if (Float.floatToRawIntBits(expected[i]) != Float.floatToRawIntBits(actual[i])) {
                fail(what + "[" + i + "]: reference " + expected[i] + ", engine " + actual[i]);
            }
        }
    }
}
