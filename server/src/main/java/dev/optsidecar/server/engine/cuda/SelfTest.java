package dev.optsidecar.server.engine.cuda;

import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.engine.kernel.ReferenceKernels;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

/**
 * The CUDA engine's start-up check: every step kernel of the catalogue with every combination of
 * its flags, a chained program, the Schedule-Free eval view, the gradient combination and the
 * update's sum of squares run on the device and must give the reference loops' bits (the sums:
 * within the catalogue's relative 1e-12). It also proves the GPU can run the library's code at
 * all: a GPU the library has no binary for fails the first launch.
 */
final class SelfTest {
    /** Elements per test tensor: more than one block of threads, and odd. */
    private static final int N = 4099;

    private SelfTest() {}

    /** @return the number of kernel calls checked */
    static int run(CudaEngine engine) {
        SplittableRandom random = new SplittableRandom(20261206);
        int checked = 0;
        for (Kernel kernel : Kernel.values()) {
            if (kernel.kind() != Kernel.Kind.STEP) {
                continue;
            }
            for (int bits = 0; bits < 1 << kernel.flags().size(); bits++) {
                checkProgram(engine, List.of(randomCall(kernel, bits, random, 0)), kernel.slots().size(), random);
                checked++;
            }
        }
        checkProgram(engine, List.of(randomCall(Kernel.ADAMW_SCHEDULE_FREE, 2, random, 0),
                randomCall(Kernel.EMA_BLEND, 0, random, 2), randomCall(Kernel.LOOKAHEAD_SYNC, 0, random, 3)), 4, random);
        checked += 3;
        checkView(engine, random);
        checkCombine(engine, random);
        return checked + 2;
    }

    private static void checkProgram(CudaEngine engine, List<KernelCall> calls, int slotCount,
                                     SplittableRandom random) {
        float[] theta = values(random, -1, 1);
        float[] grad = values(random, -1, 1);
        float[][] state = new float[slotCount][];
        for (int s = 0; s < slotCount; s++) {
            state[s] = values(random, 0, 1);
        }
        float[] before = theta.clone();
        float[][] expectedState = new float[slotCount][];
        for (int s = 0; s < slotCount; s++) {
            expectedState[s] = state[s].clone();
        }
        float[] expected = theta.clone();
        for (KernelCall call : calls) {
            ReferenceKernels.step(call, expected, grad, expectedState);
        }
        EngineTensor t = engine.allocate(N, slotCount);
        try {
            t.writeParams(0, bytes(theta));
            t.writeGradient(0, bytes(grad));
            for (int s = 0; s < slotCount; s++) {
                t.writeSlot(s, 0, bytes(state[s]));
            }
            double squares = engine.runMeasuringUpdate(List.of(new TensorProgram(t, calls)));
            ByteBuffer out = ByteBuffer.allocate(N * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
            t.readParams(0, N, out);
            compare(expected, out, calls + " θ");
            for (int s = 0; s < slotCount; s++) {
                out.clear();
                t.readSlot(s, 0, N, out);
                compare(expectedState[s], out, calls + " slot " + s);
            }
            double reference = ReferenceKernels.updateSquares(before, expected);
            if (Math.abs(squares - reference) > Math.abs(reference) * 1e-12) {
                throw new AssertionError(calls + ": update squares " + squares + ", the reference " + reference);
            }
        } finally {
            t.free();
        }
    }

    private static void checkView(CudaEngine engine, SplittableRandom random) {
        KernelCall view = randomCall(Kernel.SCHEDULE_FREE_EVAL, 0, random, 1);
        float[] theta = values(random, -1, 1);
        float[][] state = {values(random, -1, 1), values(random, -1, 1)};
        float[] expected = new float[N];
        ReferenceKernels.view(view, theta, state, expected);
        EngineTensor t = engine.allocate(N, 2);
        try {
            t.writeParams(0, bytes(theta));
            t.writeSlot(0, 0, bytes(state[0]));
            t.writeSlot(1, 0, bytes(state[1]));
            ByteBuffer out = ByteBuffer.allocate(N * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
            t.readView(view, 0, N, out, WireType.FLOAT32);
            compare(expected, out, "schedule_free_eval");
        } finally {
            t.free();
        }
    }

    private static void checkCombine(CudaEngine engine, SplittableRandom random) {
        EngineTensor t = engine.allocate(N, 0);
        try {
            List<float[]> buffers = new ArrayList<>();
            int[] handles = new int[3];
            for (int h = 0; h < handles.length; h++) {
                buffers.add(values(random, -1, 1));
                handles[h] = t.newGradientBuffer();
                t.writeGradient(handles[h], 0, bytes(buffers.get(h)));
            }
            float[] expected = ReferenceKernels.combine(buffers, 3f);
            double squares = t.combineGradients(handles, 3f);
            ByteBuffer out = ByteBuffer.allocate(N * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
            t.readGradient(0, N, out);
            compare(expected, out, "combine_gradients");
            double reference = ReferenceKernels.sumOfSquares(expected);
            if (Math.abs(squares - reference) > reference * 1e-12) {
                throw new AssertionError("combine_gradients: sum of squares " + squares + ", the reference " + reference);
            }
        } finally {
            t.free();
        }
    }

    /** A call with scalars drawn in (0.05, 1), flags from {@code bits}, slots from {@code firstSlot} on. */
    static KernelCall randomCall(Kernel kernel, int bits, SplittableRandom random, int firstSlot) {
        KernelCall.Builder b = kernel.call();
        for (String name : kernel.scalars()) {
            b.scalar(name, (float) random.nextDouble(0.05, 1));
        }
        for (int f = 0; f < kernel.flags().size(); f++) {
            b.flag(kernel.flags().get(f), (bits >> f & 1) != 0);
        }
        int[] slots = new int[kernel.slots().size()];
        for (int s = 0; s < slots.length; s++) {
            slots[s] = firstSlot + s;
        }
        return b.slots(slots).build();
    }

    private static float[] values(SplittableRandom random, double from, double to) {
        float[] v = new float[N];
        for (int i = 0; i < N; i++) {
            v[i] = (float) random.nextDouble(from, to);
        }
        return v;
    }

    private static ByteBuffer bytes(float[] v) {
        ByteBuffer b = ByteBuffer.allocate(v.length * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        b.asFloatBuffer().put(v);
        return b;
    }

    private static void compare(float[] expected, ByteBuffer actual, String what) {
        for (int i = 0; i < expected.length; i++) {
            float a = actual.getFloat(i * Float.BYTES);
            if (Float.floatToIntBits(a) != Float.floatToIntBits(expected[i])) {
                throw new AssertionError(what + ": element " + i + " is " + a + " on the device, " + expected[i]
                        + " in the reference");
            }
        }
    }
}
