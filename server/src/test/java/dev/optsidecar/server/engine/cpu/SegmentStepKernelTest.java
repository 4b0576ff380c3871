package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.zip.CRC32C;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The native segment step gives RAdamLoops.rectified's and AdamLoops.adam's bits and
 * JavaLoops.addSquares' sums at every instruction-set level this CPU has, and leaves the segment
 * as it found it when it stops.
 */
class SegmentStepKernelTest {
    private static final int N = 5_040;
    /** Not multiples of 64 (nor of 4, for the weights): a segment's layout puts pieces anywhere. */
    private static final int GRADIENT_BASE = 72;
    private static final int WEIGHTS_BASE = GRADIENT_BASE + N * Float.BYTES + 37;
    private static final int[][] RANGES = {{0, 16}, {3, 1000}, {0, 5000}, {5, 4093}, {1, 2}, {9, 9}, {2, 37},
        {13, 13 + 257}};

    private float[] theta;
    private float[] m;
    private float[] v;
    private float[] gradient;
    private ByteBuffer segment;

    @BeforeEach
    void data() {
        assumeTrue(SegmentStepKernel.AVAILABLE, "native loops: " + NativeLoops.UNAVAILABLE);
        Random random = new Random(17);
        theta = awkward(random, true);
        m = awkward(random, false);
        v = awkward(random, false);
        for (int i = 0; i < N; i++) {
            float x = v[i];
            v[i] = switch (i % 7) {
                case 0 -> 0f;
                case 1 -> Float.MIN_VALUE * random.nextInt(100); // tiny: subnormal or zero
                case 2 -> 1e-30f * random.nextFloat();
                default -> x * x;
            };
        }
        gradient = awkward(random, false);
        segment = ByteBuffer.allocateDirect(WEIGHTS_BASE + N * Float.BYTES + 29).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < segment.capacity(); i++) {
            segment.put(i, (byte) random.nextInt());
        }
        for (int i = 0; i < N; i++) {
            segment.putFloat(GRADIENT_BASE + i * Float.BYTES, gradient[i]);
            segment.putFloat(WEIGHTS_BASE + i * Float.BYTES, theta[i]);
        }
    }

    @AfterEach
    void bestIsa() {
        if (SegmentStepKernel.AVAILABLE) {
            NativeLoops.segmentStepIsa(-1);
        }
    }

    /** Finite values of every scale: normals, zeros of both signs, subnormals, near the largest float. */
    private static float[] awkward(Random random, boolean nearMax) {
        float[] values = new float[N];
        for (int i = 0; i < N; i++) {
            values[i] = switch (random.nextInt(10)) {
                case 0 -> 0f;
                case 1 -> -0f;
                case 2 -> Float.intBitsToFloat(random.nextInt(1 << 23) | (random.nextBoolean() ? 0x80000000 : 0));
                case 3 -> nearMax ? (random.nextBoolean() ? 1 : -1) * Float.MAX_VALUE * (1 - random.nextFloat() / 8)
                        : (float) random.nextGaussian() * 1e30f;
                default -> (float) (random.nextGaussian() * Math.pow(10, random.nextInt(16) - 8));
            };
        }
        return values;
    }

    /** The levels this CPU has, each left in force by the call that found it. */
    private static List<Integer> isas() {
        List<Integer> levels = new ArrayList<>();
        for (int isa = 0; isa <= 2; isa++) {
            if (NativeLoops.segmentStepIsa(isa) == isa) {
                levels.add(isa);
            }
        }
        return levels;
    }

    /** The scalars RAdam's and Adam's calls share: lr 1e-3, weight decay 0.01, beta2 0.999. */
    private static KernelCall.Builder moments(Kernel kernel, float gradScale, double beta1) {
        double lr = 1e-3;
        double weightDecay = 0.01;
        return kernel.call()
                .scalar("grad_scale", gradScale)
                .scalar("decay_factor", (float) (1 - lr * weightDecay))
                .scalar("weight_decay", (float) weightDecay)
                .scalar("beta1", (float) beta1)
                .scalar("one_minus_beta1", (float) (1 - beta1))
                .scalar("beta2", 0.999f)
                .scalar("one_minus_beta2", (float) (1 - 0.999));
    }

    private static KernelCall call(boolean decoupled, boolean coupled, boolean lerp, float gradScale, double beta1) {
        return moments(Kernel.RADAM_RECTIFIED, gradScale, beta1)
                .flag("decoupled_weight_decay", decoupled)
                .flag("coupled_weight_decay", coupled)
                .flag("lerp_first_moment", lerp)
                .slots(0, 1)
                .scalar("step_size", 3.7e-4f)
                .scalar("eps", 1e-8f)
                .build();
    }

    /** Adam's call at step 3 (AdamW's with {@code decoupled}). */
    private static KernelCall adamCall(boolean decoupled, boolean coupled, float gradScale) {
        double lr = 1e-3;
        return moments(Kernel.ADAM, gradScale, 0.9)
                .scalar("step_size", (float) (lr / (1 - Math.pow(0.9, 3))))
                .scalar("inv_sqrt_bias_correction2", (float) (1 / Math.sqrt(1 - Math.pow(0.999, 3))))
                .scalar("eps", 1e-8f)
                .flag("decoupled_weight_decay", decoupled)
                .flag("coupled_weight_decay", coupled)
                .slots(0, 1)
                .build();
    }

    /** The engine's own loop for {@code call}, the reference. */
    private static BlockLoop reference(KernelCall call) {
        return call.kernel() == Kernel.ADAM ? AdamLoops.adam(call, false) : RAdamLoops.rectified(call);
    }

    private static List<KernelCall> calls() {
        return List.of(
                adamCall(false, false, 1f),
                adamCall(true, false, 1f), // AdamW
                adamCall(false, true, 0.5f),
                call(false, false, false, 1f, 0.9),
                call(true, false, false, 1f, 0.9),
                call(false, true, false, 1f, 0.9),
                call(false, false, true, 1f, 0.9),
                call(false, false, true, 1f, 0.3), // lerp's second form: 1 − beta1 ≥ 0.5
                call(false, false, false, 0.5f, 0.9),
                call(false, false, false, -1f, 0.9), // maximize
                call(true, true, true, 0.5f, 0.9));
    }

    /** Equal bits; any NaN for a NaN (Java may not keep the hardware's NaN through Math.fma). */
    private static void assertSameFloat(float expected, float actual, String what) {
        if (Float.isNaN(expected)) {
            assertTrue(Float.isNaN(actual), what + ": " + actual + " for NaN");
        } else {
            assertEquals(Float.floatToRawIntBits(expected), Float.floatToRawIntBits(actual),
                    what + ": " + actual + " for " + expected);
        }
    }

    private static byte[] bytesOf(ByteBuffer buffer) {
        byte[] bytes = new byte[buffer.capacity()];
        buffer.duplicate().clear().get(bytes);
        return bytes;
    }

    private static float[] filled(float value) {
        float[] a = new float[N];
        Arrays.fill(a, value);
        return a;
    }

    /** The outcome of one run on fresh output arrays. */
    private record Run(int result, float[] thetaOut, float[] mOut, float[] vOut, double[] lanes) {}

    private Run run(int from, int to, KernelCall call, double[] lanes) {
        float[] thetaOut = filled(Float.intBitsToFloat(0x7fc0dead));
        float[] mOut = filled(Float.intBitsToFloat(0x7fc0beef));
        float[] vOut = filled(Float.intBitsToFloat(0x7fc0f00d));
        double[] sums = lanes.clone();
        int result = SegmentStepKernel.run(segment, GRADIENT_BASE + (long) from * Float.BYTES,
                WEIGHTS_BASE + (long) from * Float.BYTES, theta, m, v, thetaOut, mOut, vOut, from, to, call, sums);
        return new Run(result, thetaOut, mOut, vOut, sums);
    }

    private static double[] someLanes(Random random) {
        double[] lanes = new double[JavaLoops.SUM_LANES + 1];
        for (int i = 0; i < lanes.length; i++) {
            lanes[i] = random.nextDouble() * 10;
        }
        return lanes;
    }

    @Test
    void appliesTheEngineLoopsBitsAtEveryLevel() {
        float[] thetaBefore = theta.clone();
        float[] mBefore = m.clone();
        float[] vBefore = v.clone();
        byte[] original = bytesOf(segment);
        Random random = new Random(3);
        List<Integer> levels = isas();
        assertTrue(levels.contains(0));
        for (int isa : levels) {
            assertEquals(isa, NativeLoops.segmentStepIsa(isa));
            for (KernelCall call : calls()) {
                for (int[] range : RANGES) {
                    int from = range[0];
                    int to = range[1];
                    String where = "isa " + isa + ", " + call + ", [" + from + ", " + to + ")";
                    float[] p = theta.clone();
                    float[][] state = {m.clone(), v.clone()};
                    reference(call).apply(p, gradient, state, from, to);
                    double[] lanes = someLanes(random);
                    double[] expectedLanes = lanes.clone();
                    JavaLoops.addSquares(gradient, from, to, expectedLanes);

                    Run run = run(from, to, call, lanes);

                    assertEquals(SegmentStepKernel.APPLIED, run.result(), where);
                    for (int i = 0; i < N; i++) {
                        boolean in = i >= from && i < to;
                        float segmentWeight = segment.getFloat(WEIGHTS_BASE + i * Float.BYTES);
                        if (in) {
                            assertSameFloat(p[i], run.thetaOut()[i], where + " θ " + i);
                            assertSameFloat(state[0][i], run.mOut()[i], where + " m " + i);
                            assertSameFloat(state[1][i], run.vOut()[i], where + " v " + i);
                            assertEquals(Float.floatToRawIntBits(run.thetaOut()[i]),
                                    Float.floatToRawIntBits(segmentWeight), where + " segment weight " + i);
                        } else {
                            assertEquals(0x7fc0dead, Float.floatToRawIntBits(run.thetaOut()[i]), where + " θ " + i);
                            assertEquals(0x7fc0beef, Float.floatToRawIntBits(run.mOut()[i]), where + " m " + i);
                            assertEquals(0x7fc0f00d, Float.floatToRawIntBits(run.vOut()[i]), where + " v " + i);
                            assertEquals(Float.floatToRawIntBits(theta[i]), Float.floatToRawIntBits(segmentWeight),
                                    where + " segment weight " + i);
                        }
                    }
                    for (int lane = 0; lane < lanes.length; lane++) {
                        assertEquals(Double.doubleToRawLongBits(expectedLanes[lane]),
                                Double.doubleToRawLongBits(run.lanes()[lane]), where + " lane " + lane);
                    }
                    assertArrayEquals(thetaBefore, theta, where + ": θ is only read");
                    assertArrayEquals(mBefore, m, where + ": m is only read");
                    assertArrayEquals(vBefore, v, where + ": v is only read");
                    // Back to θ for the next run; then every byte but the weights' must be as it was.
                    for (int i = from; i < to; i++) {
                        segment.putFloat(WEIGHTS_BASE + i * Float.BYTES, theta[i]);
                    }
                    assertArrayEquals(original, bytesOf(segment), where + ": the rest of the segment");
                }
            }
        }
    }

    @Test
    void aNaNWeightEqualToThetasIsNotAnEdit() {
        theta[100] = Float.intBitsToFloat(0x7fc01234);
        segment.putInt(WEIGHTS_BASE + 100 * Float.BYTES, 0x7fc01234);
        for (int isa : isas()) {
            NativeLoops.segmentStepIsa(isa);
            Run run = run(0, 1000, call(false, false, false, 1f, 0.9), new double[8]);
            assertEquals(SegmentStepKernel.APPLIED, run.result(), "isa " + isa);
            assertTrue(Float.isNaN(run.thetaOut()[100]));
            for (int i = 0; i < 1000; i++) {
                segment.putFloat(WEIGHTS_BASE + i * Float.BYTES, theta[i]);
            }
        }
    }

    /** Element j spoiled by {@code spoil}: the call must return {@code expected} and change nothing in the segment. */
    private void assertStopsWithoutATrace(int expected, String what, Runnable spoil) {
        KernelCall call = call(true, false, true, 0.5f, 0.9);
        Random random = new Random(11);
        for (int isa : isas()) {
            NativeLoops.segmentStepIsa(isa);
            for (int[] range : RANGES) {
                int from = range[0];
                int to = range[1];
                if (to == from) {
                    continue;
                }
                int[] places = {from, from + 1, from + (to - from) / 2, from + 16, from + 17, to - 17, to - 2, to - 1};
                for (int j : places) {
                    if (j < from || j >= to) {
                        continue;
                    }
                    String where = what + " at " + j + ", isa " + isa + ", [" + from + ", " + to + ")";
                    spoiled = j;
                    byte[] clean = bytesOf(segment);
                    float[] cleanTheta = theta.clone();
                    spoil.run();
                    byte[] before = bytesOf(segment);
                    float[] thetaBefore = theta.clone();
                    double[] lanes = someLanes(random);
                    Run run = run(from, to, call, lanes);
                    assertEquals(expected, run.result(), where);
                    assertArrayEquals(before, bytesOf(segment), where + ": the segment");
                    assertArrayEquals(lanes, run.lanes(), where + ": the lanes");
                    assertArrayEquals(thetaBefore, theta, where + ": θ");
                    segment.clear();
                    segment.put(clean).clear();
                    theta = cleanTheta;
                }
            }
        }
    }

    private int spoiled;

    @Test
    void anEditedWeightStopsTheStep() {
        assertStopsWithoutATrace(SegmentStepKernel.EDITED, "weight + 1 ulp", () -> {
            int at = WEIGHTS_BASE + spoiled * Float.BYTES;
            segment.putInt(at, segment.getInt(at) ^ 1);
        });
        assertStopsWithoutATrace(SegmentStepKernel.EDITED, "-0.0 for +0.0", () -> {
            theta[spoiled] = 0f;
            segment.putFloat(WEIGHTS_BASE + spoiled * Float.BYTES, -0f);
        });
        assertStopsWithoutATrace(SegmentStepKernel.EDITED, "+0.0 for -0.0", () -> {
            theta[spoiled] = -0f;
            segment.putFloat(WEIGHTS_BASE + spoiled * Float.BYTES, 0f);
        });
        assertStopsWithoutATrace(SegmentStepKernel.EDITED, "another NaN", () -> {
            theta[spoiled] = Float.intBitsToFloat(0x7fc00001);
            segment.putInt(WEIGHTS_BASE + spoiled * Float.BYTES, 0x7fc00002);
        });
        // The first failing element decides, whatever vector it is in.
        assertStopsWithoutATrace(SegmentStepKernel.EDITED, "edited and non-finite", () -> {
            int at = WEIGHTS_BASE + spoiled * Float.BYTES;
            segment.putInt(at, segment.getInt(at) ^ 1);
            segment.putFloat(GRADIENT_BASE + spoiled * Float.BYTES, Float.NaN);
        });
    }

    @Test
    void aNonFiniteGradientStopsTheStep() {
        for (float bad : new float[] {Float.NaN, Float.intBitsToFloat(0xffc01234), Float.intBitsToFloat(0x7f800001),
            Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
            assertStopsWithoutATrace(SegmentStepKernel.NON_FINITE, "gradient " + bad,
                    () -> segment.putFloat(GRADIENT_BASE + spoiled * Float.BYTES, bad));
        }
        assertStopsWithoutATrace(SegmentStepKernel.NON_FINITE, "non-finite, then edited", () -> {
            segment.putFloat(GRADIENT_BASE + spoiled * Float.BYTES, Float.POSITIVE_INFINITY);
            int next = spoiled + 1 < N ? spoiled + 1 : spoiled;
            if (next != spoiled) {
                int at = WEIGHTS_BASE + next * Float.BYTES;
                segment.putInt(at, segment.getInt(at) ^ 0x80000000);
            }
        });
    }

    /** Views of the gradient and weights regions, as a mapped segment hands pieces out. */
    private Run runOnViews(int from, int to, KernelCall call, double[] lanes, int[] crc32c) {
        int bytes = (to - from) * Float.BYTES;
        ByteBuffer gradientView = segment.slice(GRADIENT_BASE + from * Float.BYTES, bytes).asReadOnlyBuffer();
        ByteBuffer weightsView = segment.slice(WEIGHTS_BASE + from * Float.BYTES, bytes);
        float[] thetaOut = new float[N];
        float[] mOut = new float[N];
        float[] vOut = new float[N];
        double[] sums = lanes.clone();
        int result = SegmentStepKernel.run(gradientView, 0, weightsView, 0, theta, m, v, thetaOut, mOut, vOut, from,
                to, call, sums, crc32c);
        return new Run(result, thetaOut, mOut, vOut, sums);
    }

    /** With SSE4.2 (the vector levels) the pass took the CRC-32C of the weights it wrote, as java.util.zip's. */
    private void assertWeightsCrc32c(int isa, int from, int to, int[] crc32c, String where) {
        if (isa == 0) {
            assertEquals(0, crc32c[1], where + ": the portable level leaves the CRC to the caller");
            return;
        }
        assertEquals(1, crc32c[1], where + ": the CRC was taken");
        CRC32C expected = new CRC32C();
        expected.update(segment.slice(WEIGHTS_BASE + from * Float.BYTES, (to - from) * Float.BYTES));
        assertEquals((int) expected.getValue(), crc32c[0], where + ": CRC-32C of the weights written");
    }

    @Test
    void aPieceRunInTwoCallsContinuesItsCrc() {
        KernelCall call = call(false, false, false, 1f, 0.9);
        byte[] original = bytesOf(segment);
        for (int isa : isas()) {
            if (isa == 0) {
                continue;
            }
            NativeLoops.segmentStepIsa(isa);
            segment.clear();
            segment.put(original).clear();
            int[] crc32c = new int[2];
            assertEquals(SegmentStepKernel.APPLIED, runOnViews(3, 517, call, new double[8], crc32c).result());
            assertEquals(SegmentStepKernel.APPLIED, runOnViews(517, 4000, call, new double[8], crc32c).result());
            assertWeightsCrc32c(isa, 3, 4000, crc32c, "isa " + isa + ", [3, 517) then [517, 4000)");
        }
        NativeLoops.segmentStepIsa(-1);
    }

    @Test
    void viewsOfTheSegmentGiveTheSameBits() {
        KernelCall call = call(true, false, true, 0.5f, 0.9);
        double[] lanes = someLanes(new Random(5));
        for (int isa : isas()) {
            NativeLoops.segmentStepIsa(isa);
            for (int[] range : RANGES) {
                int from = range[0];
                int to = range[1];
                String where = "isa " + isa + ", [" + from + ", " + to + ")";
                byte[] original = bytesOf(segment);
                Run whole = run(from, to, call, lanes);
                byte[] after = bytesOf(segment);
                segment.clear();
                segment.put(original).clear();
                int[] crc32c = new int[2];
                Run views = runOnViews(from, to, call, lanes, crc32c);
                assertEquals(SegmentStepKernel.APPLIED, views.result(), where);
                assertArrayEquals(after, bytesOf(segment), where + ": the segment");
                assertWeightsCrc32c(isa, from, to, crc32c, where);
                for (int i = from; i < to; i++) {
                    assertEquals(Float.floatToRawIntBits(whole.thetaOut()[i]), Float.floatToRawIntBits(views.thetaOut()[i]));
                    assertEquals(Float.floatToRawIntBits(whole.mOut()[i]), Float.floatToRawIntBits(views.mOut()[i]));
                    assertEquals(Float.floatToRawIntBits(whole.vOut()[i]), Float.floatToRawIntBits(views.vOut()[i]));
                }
                assertArrayEquals(whole.lanes(), views.lanes(), where);
                segment.clear();
                segment.put(original).clear();
            }
        }
        int at = WEIGHTS_BASE + 700 * Float.BYTES;
        segment.putInt(at, segment.getInt(at) ^ 1);
        byte[] before = bytesOf(segment);
        assertEquals(SegmentStepKernel.EDITED, runOnViews(3, 1000, call, lanes, new int[2]).result());
        assertArrayEquals(before, bytesOf(segment), "the views' weights restored");

        // Two views over the same bytes: only their addresses show it.
        ByteBuffer first = segment.slice(WEIGHTS_BASE, 4000);
        ByteBuffer second = segment.slice(WEIGHTS_BASE + 2000, 4000);
        float[] out1 = new float[N];
        float[] out2 = new float[N];
        float[] out3 = new float[N];
        assertThrows(IllegalArgumentException.class, () -> SegmentStepKernel.run(first, 0, second, 0, theta, m, v,
                out1, out2, out3, 0, 1000, call, new double[8], new int[2]));
        assertArrayEquals(before, bytesOf(segment), "nothing written");
        assertThrows(IllegalArgumentException.class, () -> SegmentStepKernel.run(first, 0, second.asReadOnlyBuffer(), 0,
                theta, m, v, out1, out2, out3, 0, 10, call, new double[8], new int[2]), "read-only weights");
        assertThrows(IndexOutOfBoundsException.class, () -> SegmentStepKernel.run(first, 4, second, 0, theta, m, v,
                out1, out2, out3, 0, 1000, call, new double[8], new int[2]), "past the gradient view");
    }

    @Test
    void theIsaHookRefusesWhatTheCpuLacks() {
        int best = NativeLoops.segmentStepIsa(-1);
        assertTrue(best >= 0 && best <= 2, "level " + best);
        assertEquals(0, NativeLoops.segmentStepIsa(0));
        assertEquals(0, NativeLoops.segmentStepIsa(7), "an unknown level is refused");
        assertEquals(best, NativeLoops.segmentStepIsa(-1));
        if (best < 2) {
            assertEquals(best, NativeLoops.segmentStepIsa(2), "a level this CPU lacks is refused");
        }
    }

    @Test
    void supportsRAdamRectifiedAndAdamOnly() {
        assertTrue(SegmentStepKernel.supports(call(false, false, false, 1f, 0.9)));
        assertTrue(SegmentStepKernel.supports(adamCall(true, false, 1f)));
        assertFalse(SegmentStepKernel.supports(Kernel.ADAM_AMSGRAD.call()
                .scalar("grad_scale", 1).scalar("decay_factor", 1).scalar("weight_decay", 0).scalar("beta1", 0.9f)
                .scalar("one_minus_beta1", 0.1f).scalar("beta2", 0.999f).scalar("one_minus_beta2", 0.001f)
                .scalar("step_size", 1e-3f).scalar("inv_sqrt_bias_correction2", 1f).scalar("eps", 1e-8f)
                .flag("decoupled_weight_decay", false).flag("coupled_weight_decay", false).slots(0, 1, 2).build()));
        assertFalse(SegmentStepKernel.supports(Kernel.RADAM_SGD_PHASE.call()
                .scalar("grad_scale", 1).scalar("decay_factor", 1).scalar("weight_decay", 0).scalar("beta1", 0.9f)
                .scalar("one_minus_beta1", 0.1f).scalar("beta2", 0.999f).scalar("one_minus_beta2", 0.001f)
                .scalar("bias_correction1", 0.1f).scalar("lr", 1e-3f)
                .flag("decoupled_weight_decay", false).flag("coupled_weight_decay", false)
                .flag("lerp_first_moment", false).slots(0, 1).build()));
    }

    @Test
    void checksEveryRangeBeforeGoingNative() {
        KernelCall call = call(false, false, false, 1f, 0.9);
        byte[] before = bytesOf(segment);
        float[] out1 = new float[N];
        float[] out2 = new float[N];
        float[] out3 = new float[N];
        float[] shortArray = new float[999];
        double[] lanes = new double[8];
        long g = GRADIENT_BASE;
        long w = WEIGHTS_BASE;
        List<Executable> outOfBounds = List.of(
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, out1, out2, out3, -1, 10, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, out1, out2, out3, 10, 9, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, out1, out2, out3, 0, N + 1, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, shortArray, m, v, out1, out2, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, shortArray, v, out1, out2, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, shortArray, out1, out2, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, shortArray, out2, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, out1, shortArray, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, out1, out2, shortArray, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, out1, out2, out3, 0, 1000, call, new double[7]),
                () -> SegmentStepKernel.run(segment, -4, w, theta, m, v, out1, out2, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, -1, theta, m, v, out1, out2, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, segment.capacity() - 3999, w, theta, m, v, out1, out2, out3, 0, 1000,
                        call, lanes),
                () -> SegmentStepKernel.run(segment, g, segment.capacity() - 3999, theta, m, v, out1, out2, out3, 0, 1000,
                        call, lanes),
                () -> SegmentStepKernel.run(segment, g, Long.MAX_VALUE - 10, theta, m, v, out1, out2, out3, 0, 1000,
                        call, lanes));
        for (Executable e : outOfBounds) {
            assertThrows(IndexOutOfBoundsException.class, e);
        }
        ByteBuffer heap = ByteBuffer.allocate(segment.capacity()).order(ByteOrder.LITTLE_ENDIAN);
        List<Executable> illegal = List.of(
                () -> SegmentStepKernel.run(heap, g, w, theta, m, v, out1, out2, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment.asReadOnlyBuffer(), g, w, theta, m, v, out1, out2, out3, 0, 1000,
                        call, lanes),
                () -> SegmentStepKernel.run(segment, g, g + 3996, theta, m, v, out1, out2, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, theta, out2, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, out1, out1, out3, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, out1, out2, v, 0, 1000, call, lanes),
                () -> SegmentStepKernel.run(segment, g, w, theta, m, v, out1, out2, out3, 0, 1000,
                        Kernel.SET_PARAMS.call().build(), lanes));
        for (int i = 0; i < illegal.size(); i++) {
            assertThrows(IllegalArgumentException.class, illegal.get(i), "case " + i);
        }
        assertArrayEquals(before, bytesOf(segment), "nothing written");
        assertArrayEquals(new double[8], lanes);
        for (float[] out : new float[][] {out1, out2, out3}) {
            assertArrayEquals(new float[N], out);
        }
    }
}
