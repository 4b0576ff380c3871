package dev.optsidecar.server.engine.cuda;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.engine.kernel.ReferenceKernels;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * The CUDA engine's per-element arithmetic, compiled for the CPU, gives the Java reference loops'
 * bits for every kernel of the catalogue and every combination of its flags, alone and chained in
 * programs; its combine and view give the reference's bits, and its fixed-order sum of squares is
 * within the catalogue's bound of the reference's.
 */
class DeviceArithmeticTest {
    private static final int N = 1031;
    /** Runs per flag combination: each draws new scalars, so both branches of every lerp are reached. */
    private static final int TRIALS = 8;

    @BeforeAll
    static void compileHarness() throws Exception {
        HostKernels.load();
    }

    @Test
    void nativeCatalogueIsTheJavaCatalogue() {
        NativeProgram.checkCatalogue(HostKernels.catalogue());
    }

    @Test
    void everyStepKernelGivesTheReferenceBitsForEveryFlagCombination() {
        SplittableRandom random = new SplittableRandom(14);
        int checked = 0;
        for (Kernel kernel : Kernel.values()) {
            if (kernel.kind() != Kernel.Kind.STEP) {
                continue;
            }
            for (int bits = 0; bits < 1 << kernel.flags().size(); bits++) {
                for (int trial = 0; trial < TRIALS; trial++) {
                    KernelCall call = SelfTest.randomCall(kernel, bits, random, 0);
                    compareProgram(List.of(call), kernel.slots().size(), random);
                    checked++;
                }
            }
        }
        assertTrue(checked > 300, "checked " + checked + " calls");
    }

    @Test
    void chainedProgramsGiveTheBitsOfTheirCallsInSequence() {
        SplittableRandom random = new SplittableRandom(41);
        for (int trial = 0; trial < TRIALS; trial++) {
            // Schedule-Free AdamW (z, v at 0, 1), an EMA shadow of y at 2, a second shadow at 3.
            compareProgram(List.of(SelfTest.randomCall(Kernel.ADAMW_SCHEDULE_FREE, 2, random, 0),
                    SelfTest.randomCall(Kernel.EMA_BLEND, 0, random, 2), SelfTest.randomCall(Kernel.EMA_BLEND, 0, random, 3)), 4, random);
            // SGD with momentum (buffer at 0) inside Lookahead (slow at 1, cached momentum at 2), then an EMA.
            compareProgram(List.of(SelfTest.randomCall(Kernel.SGD_MOMENTUM, 1, random, 0),
                    Kernel.LOOKAHEAD_SYNC_PULLBACK.call().scalar("alpha", 0.5f).scalar("one_minus_alpha", 0.5f)
                            .slots(1, 0, 2).build(),
                    SelfTest.randomCall(Kernel.EMA_BLEND, 0, random, 3)), 4, random);
            // RAdam, Lookahead that zeroes the momentum, copy of θ into a fresh shadow.
            compareProgram(List.of(SelfTest.randomCall(Kernel.RADAM_RECTIFIED, 7, random, 0),
                    Kernel.LOOKAHEAD_SYNC_RESET.call().scalar("alpha", 0.8f).scalar("one_minus_alpha", 0.2f)
                            .slots(2, 0).build(),
                    SelfTest.randomCall(Kernel.COPY_PARAMS, 0, random, 3)), 4, random);
        }
    }

    @Test
    void scheduleFreeEvalViewGivesTheReferenceBits() {
        SplittableRandom random = new SplittableRandom(7);
        for (int trial = 0; trial < TRIALS; trial++) {
            KernelCall view = SelfTest.randomCall(Kernel.SCHEDULE_FREE_EVAL, 0, random, 1);
            float[] theta = values(random, -1, 1);
            float[][] state = {values(random, -1, 1), values(random, -1, 1)};
            float[] expected = new float[N];
            ReferenceKernels.view(view, theta, state, expected);
            NativeProgram p = NativeProgram.of(List.of(view));
            float[] actual = new float[N];
            HostKernels.runView(p.codes()[0], p.slots(), p.scalars(), theta, state, actual);
            assertBits(expected, actual, "schedule_free_eval");
        }
    }

    @Test
    void combineGivesTheReferenceBits() {
        SplittableRandom random = new SplittableRandom(3);
        List<float[]> buffers = new ArrayList<>();
        for (int h = 0; h < 5; h++) {
            buffers.add(values(random, -10, 10));
        }
        for (float divisor : new float[] {1f, 3f, 5f}) {
            assertBits(ReferenceKernels.combine(buffers, divisor),
                    HostKernels.combine(buffers.toArray(float[][]::new), divisor), "combine / " + divisor);
        }
    }

    @Test
    void fixedOrderSumOfSquaresIsWithinTheCatalogueBound() {
        SplittableRandom random = new SplittableRandom(11);
        // Past one pass of the reduction grid (262144 threads), so threads add several elements each.
        for (int n : new int[] {1, 1000, 262_145, 1_000_003}) {
            float[] g = new float[n];
            for (int i = 0; i < n; i++) {
                g[i] = (float) (random.nextDouble(-1, 1) * Math.scalb(1.0, random.nextInt(-20, 20)));
            }
            double expected = ReferenceKernels.sumOfSquares(g);
            double actual = HostKernels.sumOfSquaresInOrder(g);
            assertEquals(expected, actual, Math.abs(expected) * 1e-12, "n = " + n);
            assertEquals(actual, HostKernels.sumOfSquaresInOrder(g), 0.0, "the same bits again");
        }
    }

    /** Runs the calls through the reference (call after call) and the harness (element by element). */
    private static void compareProgram(List<KernelCall> calls, int slotCount, SplittableRandom random) {
        float[] theta = values(random, -1, 1);
        float[] grad = values(random, -1, 1);
        float[][] state = new float[slotCount][];
        for (int s = 0; s < slotCount; s++) {
            state[s] = values(random, 0, 1); // non-negative: some slots are second moments
        }
        float[] expectedTheta = theta.clone();
        float[][] expectedState = deepCopy(state);
        for (KernelCall call : calls) {
            ReferenceKernels.step(call, expectedTheta, grad, expectedState);
        }
        NativeProgram p = NativeProgram.of(calls);
        float[] gradCopy = grad.clone();
        HostKernels.runProgram(p.codes(), p.flags(), p.slots(), p.scalars(), p.count(), theta, grad, state);
        String what = calls.toString();
        assertBits(expectedTheta, theta, what + " θ");
        assertBits(gradCopy, grad, what + " g (read only)");
        for (int s = 0; s < slotCount; s++) {
            assertBits(expectedState[s], state[s], what + " slot " + s);
        }
    }

    private static float[] values(SplittableRandom random, double from, double to) {
        float[] v = new float[N];
        for (int i = 0; i < N; i++) {
            v[i] = (float) random.nextDouble(from, to);
        }
        return v;
    }

    private static float[][] deepCopy(float[][] a) {
        float[][] c = new float[a.length][];
        for (int i = 0; i < a.length; i++) {
            c[i] = a[i].clone();
        }
        return c;
    }

    private static void assertBits(float[] expected, float[] actual, String what) {
        for (int i = 0; i < expected.length; i++) {
            if (Float.floatToIntBits(expected[i]) != Float.floatToIntBits(actual[i])) {
                fail(what + ": element " + i + " is " + actual[i] + ", the reference " + expected[i]);
            }
        }
    }
}
