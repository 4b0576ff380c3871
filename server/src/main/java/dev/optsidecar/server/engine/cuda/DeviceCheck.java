package dev.optsidecar.server.engine.cuda;

import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.cpu.CpuEngine;
import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;

/**
 * What only a GPU can show, run by {@code src/main/cuda/device-check.sh}: the start-up self-test;
 * every step kernel with every flag combination on the CUDA engine against the CPU engine (its
 * fast loops, not the reference), bit for bit, over a tensor large enough to use the whole GPU;
 * determinism (the same steps twice give the same bits and the same update norm); and the fused
 * step's speed against a device-to-device copy of the same bytes.
 *
 * <p>{@code java -cp optsidecar-server.jar dev.optsidecar.server.engine.cuda.DeviceCheck [DEVICE [SIZES]]};
 * SIZES is a comma-separated list of element counts for the bench (default 10M,100M,1B). Exit 0
 * when every check passed.
 */
public final class DeviceCheck {
    private static final int COMPARE_N = 3_000_017;

    private DeviceCheck() {}

    public static void main(String[] args) throws Exception {
        int device = args.length > 0 ? Integer.parseInt(args[0]) : 0;
        long[] sizes = args.length > 1 ? Arrays.stream(args[1].split(",")).mapToLong(Long::parseLong).toArray()
                : new long[] {10_000_000L, 100_000_000L, 1_000_000_000L};
        PrintStream out = System.out;
        CudaEngine cuda;
        long t0 = System.nanoTime();
        try {
            cuda = CudaEngine.open(device);
        } catch (CudaEngine.Unavailable e) {
            out.println("FAIL engine: " + e.getMessage());
            System.exit(1);
            return;
        }
        out.printf("PASS self-test on %s (%.1f s)%n", cuda.device(), (System.nanoTime() - t0) / 1e9);
        int failures = 0;
        try (CpuEngine cpu = new CpuEngine(Runtime.getRuntime().availableProcessors())) {
            failures += againstCpuEngine(cuda, cpu, out);
            failures += determinism(cuda, out);
            bench(cuda, sizes, out);
        } catch (RuntimeException | Error e) {
            out.println("FAIL " + e);
            failures++;
        } finally {
            cuda.close();
        }
        out.println(failures == 0 ? "device check: all passed" : "device check: " + failures + " failed");
        System.exit(failures == 0 ? 0 : 1);
    }

    private static int againstCpuEngine(CudaEngine cuda, CpuEngine cpu, PrintStream out) {
        SplittableRandom random = new SplittableRandom(1414);
        int failures = 0;
        int checked = 0;
        for (Kernel kernel : Kernel.values()) {
            if (kernel.kind() != Kernel.Kind.STEP) {
                continue;
            }
            for (int bits = 0; bits < 1 << kernel.flags().size(); bits++) {
                List<KernelCall> calls = List.of(SelfTest.randomCall(kernel, bits, random, 0));
                String mismatch = compare(cuda, cpu, calls, kernel.slots().size(), random.nextLong());
                checked++;
                if (mismatch != null) {
                    out.println("FAIL " + calls + ": " + mismatch);
                    failures++;
                }
            }
        }
        List<KernelCall> chain = List.of(SelfTest.randomCall(Kernel.ADAMW_SCHEDULE_FREE, 2, random, 0),
                SelfTest.randomCall(Kernel.EMA_BLEND, 0, random, 2));
        String mismatch = compare(cuda, cpu, chain, 3, random.nextLong());
        if (mismatch != null) {
            out.println("FAIL fused " + chain + ": " + mismatch);
            failures++;
        }
        out.println((failures == 0 ? "PASS" : "FAIL") + " CUDA engine against the CPU engine: " + (checked + 1)
                + " programs of " + COMPARE_N + " elements, " + failures + " differing");
        return failures;
    }

    /** Runs the same program on both engines from the same state; null when every bit agrees. */
    private static String compare(Engine a, Engine b, List<KernelCall> calls, int slots, long seed) {
        EngineTensor ta = a.allocate(COMPARE_N, slots);
        EngineTensor tb = b.allocate(COMPARE_N, slots);
        try {
            SplittableRandom random = new SplittableRandom(seed);
            fill(ta, tb, -1, 1, random, -1);
            fill(ta, tb, -1, 1, random, -2);
            for (int s = 0; s < slots; s++) {
                fill(ta, tb, 0, 1, random, s);
            }
            double ua = a.runMeasuringUpdate(List.of(new TensorProgram(ta, calls)));
            double ub = b.runMeasuringUpdate(List.of(new TensorProgram(tb, calls)));
            String d = firstDifference(ta, tb, -1);
            for (int s = 0; d == null && s < slots; s++) {
                d = firstDifference(ta, tb, s);
            }
            if (d == null && Math.abs(ua - ub) > Math.abs(ub) * 1e-12) {
                d = "update squares " + ua + " against " + ub;
            }
            return d;
        } finally {
            ta.free();
            tb.free();
        }
    }

    /** Writes the same random values into both tensors: slot s, or the parameters (−1) or gradient (−2). */
    private static void fill(EngineTensor a, EngineTensor b, double from, double to, SplittableRandom random,
                             int which) {
        ByteBuffer values = ByteBuffer.allocate(COMPARE_N * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < COMPARE_N; i++) {
            values.putFloat(i * Float.BYTES, (float) random.nextDouble(from, to));
        }
        for (EngineTensor t : List.of(a, b)) {
            if (which == -1) {
                t.writeParams(0, values.duplicate());
            } else if (which == -2) {
                t.writeGradient(0, values.duplicate());
            } else {
                t.writeSlot(which, 0, values.duplicate());
            }
        }
    }

    private static String firstDifference(EngineTensor a, EngineTensor b, int slot) {
        ByteBuffer x = ByteBuffer.allocate(COMPARE_N * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        ByteBuffer y = ByteBuffer.allocate(COMPARE_N * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        if (slot < 0) {
            a.readParams(0, COMPARE_N, x);
            b.readParams(0, COMPARE_N, y);
        } else {
            a.readSlot(slot, 0, COMPARE_N, x);
            b.readSlot(slot, 0, COMPARE_N, y);
        }
        int at = x.flip().mismatch(y.flip());
        if (at < 0) {
            return null;
        }
        int i = at / Float.BYTES;
        return (slot < 0 ? "θ" : "slot " + slot) + " element " + i + ": " + x.getFloat(i * Float.BYTES) + " against "
                + y.getFloat(i * Float.BYTES);
    }

    /** Twenty Adam steps, twice from the same start: the same bits and the same update norms. */
    private static int determinism(CudaEngine cuda, PrintStream out) {
        double[] first = adamRun(cuda);
        double[] second = adamRun(cuda);
        boolean same = Arrays.equals(first, second);
        out.println((same ? "PASS" : "FAIL") + " determinism: 20 Adam steps twice, update norms and final θ "
                + (same ? "identical" : "differ"));
        return same ? 0 : 1;
    }

    private static double[] adamRun(CudaEngine cuda) {
        int steps = 20;
        EngineTensor t = cuda.allocate(COMPARE_N, 2);
        try {
            SplittableRandom random = new SplittableRandom(99);
            ByteBuffer values = ByteBuffer.allocate(COMPARE_N * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
            for (int i = 0; i < COMPARE_N; i++) {
                values.putFloat(i * Float.BYTES, (float) random.nextDouble(-1, 1));
            }
            t.writeParams(0, values.duplicate());
            double[] result = new double[steps + 1];
            for (int k = 1; k <= steps; k++) {
                t.writeGradient(0, values.duplicate());
                result[k - 1] = cuda.runMeasuringUpdate(List.of(new TensorProgram(t, List.of(adam(k)))));
            }
            ByteBuffer theta = ByteBuffer.allocate(COMPARE_N * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
            t.readParams(0, COMPARE_N, theta);
            result[steps] = Arrays.hashCode(theta.array());
            return result;
        } finally {
            t.free();
        }
    }

    /** torch's AdamW step t with lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01. */
    private static KernelCall adam(int t) {
        double lr = 1e-3;
        double beta1 = 0.9;
        double beta2 = 0.999;
        return Kernel.ADAM.call().scalar("grad_scale", 1f).scalar("decay_factor", (float) (1 - lr * 0.01))
                .scalar("weight_decay", 0.01f).scalar("beta1", (float) beta1).scalar("one_minus_beta1", (float) (1 - beta1))
                .scalar("beta2", (float) beta2).scalar("one_minus_beta2", (float) (1 - beta2))
                .scalar("step_size", (float) (lr / (1 - Math.pow(beta1, t))))
                .scalar("inv_sqrt_bias_correction2", (float) (1 / Math.sqrt(1 - Math.pow(beta2, t))))
                .scalar("eps", 1e-8f).flag("decoupled_weight_decay", true).flag("coupled_weight_decay", false)
                .slots(0, 1).build();
    }

    /**
     * The fused AdamW step (reads θ, g, m, v; writes θ, m, v: 28 bytes an element) against a
     * device-to-device copy of 4 bytes an element (8 bytes moved), as bandwidth.
     */
    private static void bench(CudaEngine cuda, long[] sizes, PrintStream out) {
        out.println("bench: n, AdamW step ms, step GB/s, copy GB/s, step as a fraction of copy bandwidth");
        for (long n : sizes) {
            if (cuda.bytesFor(n, 2) > cuda.freeBytes() * 0.9) {
                out.println("bench: " + n + " skipped, too large for the free device memory");
                continue;
            }
            CudaTensor t = (CudaTensor) cuda.allocate(n, 2);
            try {
                List<TensorProgram> step = List.of(new TensorProgram(t, List.of(adam(1))));
                cuda.run(step);
                double stepSeconds = median(() -> cuda.run(step));
                double copySeconds = median(() -> {
                    synchronized (cuda) {
                        cuda.enter();
                        CudaNative.copyDevice(t.grad(), t.theta(), n * Float.BYTES, cuda.stream());
                        CudaNative.streamSynchronize(cuda.stream());
                    }
                });
                double stepBandwidth = 28.0 * n / stepSeconds / 1e9;
                double copyBandwidth = 8.0 * n / copySeconds / 1e9;
                out.printf("bench: %d, %.3f, %.0f, %.0f, %.2f%n", n, stepSeconds * 1e3, stepBandwidth, copyBandwidth,
                        stepBandwidth / copyBandwidth);
            } finally {
                t.free();
            }
        }
    }

    private static double median(Runnable r) {
        List<Double> times = new ArrayList<>();
        for (int i = 0; i < 11; i++) {
            long start = System.nanoTime();
            r.run();
            times.add((System.nanoTime() - start) / 1e9);
        }
        times.sort(null);
        return times.get(times.size() / 2);
    }
}
