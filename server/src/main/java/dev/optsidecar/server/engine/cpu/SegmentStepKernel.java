package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.nio.ByteBuffer;
import java.util.Objects;

/**
 * The native RAdam or Adam step over a segment piece ({@link NativeLoops#segmentStep}), bounds-checked:
 * one pass that reads the gradient and the trainer's weights from the segment, writes the new θ,
 * m and v into spare arrays and the new θ into the segment, and sums the gradient's squares.
 */
final class SegmentStepKernel {
    /** The step was applied to every element. */
    static final int APPLIED = 0;
    /** A weight in the segment was not θ's: the trainer changed it; the segment is as it was. */
    static final int EDITED = 1;
    /** A gradient value was NaN or infinite; the segment is as it was. */
    static final int NON_FINITE = 2;

    /** Whether the native kernel can run (the library loaded); else callers take the copying path. */
    static final boolean AVAILABLE = BulkLoops.NATIVE;
    /**
     * Whether it runs vectorised (AVX2 and up, with SSE4.2 for the CRC): the portable loop is
     * several times slower than the copying path's passes, so the engine steps in place only then.
     */
    static final boolean VECTORISED = AVAILABLE && NativeLoops.segmentStepIsa(-1) > 0;

    /** The native side's flag bits. */
    private static final int DECOUPLED = 1;
    private static final int COUPLED = 2;
    private static final int LERP = 4;
    private static final int ADAM = 8;

    private SegmentStepKernel() {}

    /** Whether {@code call} is a kernel this pass implements: {@link Kernel#RADAM_RECTIFIED} or {@link Kernel#ADAM}. */
    static boolean supports(KernelCall call) {
        return call.kernel() == Kernel.RADAM_RECTIFIED || call.kernel() == Kernel.ADAM;
    }

    /**
     * Runs {@code call} over elements {@code [from, to)}: their gradient is the little-endian
     * floats of {@code segment} from byte {@code gradientByte}, the trainer's weights those from
     * {@code weightsByte} (offsets from the buffer's start, whatever its position); θ, m, v are
     * read from {@code theta}, {@code m}, {@code v} (the tensor's exp_avg and exp_avg_sq) and their
     * new values written to the output arrays and, θ's, to the segment's weights. The gradient's
     * squares are added to {@code lanes} as {@link JavaLoops#addSquares} adds them.
     *
     * @return {@link #APPLIED}; or {@link #EDITED} or {@link #NON_FINITE}, with the segment's
     *         weights and {@code lanes} as they were and the output arrays holding anything
     * @throws IndexOutOfBoundsException a range outside its array or the segment, before anything is written
     * @throws IllegalArgumentException  a heap or read-only segment, regions that overlap, an output
     *                                   array that is also an input or another output, or a call
     *                                   this pass does not implement
     */
    static int run(ByteBuffer segment, long gradientByte, long weightsByte, float[] theta, float[] m, float[] v,
                   float[] thetaOut, float[] mOut, float[] vOut, int from, int to, KernelCall call, double[] lanes) {
        return run(segment, gradientByte, segment, weightsByte, theta, m, v, thetaOut, mOut, vOut, from, to, call,
                lanes, new int[2]);
    }

    /**
     * {@link #run(ByteBuffer, long, long, float[], float[], float[], float[], float[], float[], int, int,
     * KernelCall, double[]) run} with the gradient and the weights in two direct buffers, views of
     * the segment, each offset from its own start ({@code gradient} may be read-only), and the
     * CRC-32C of the weights written: {@code crc32c[0]}, continued (0 to start a piece), unless
     * {@code crc32c[1]} comes back 0 (no SSE4.2: the caller computes it).
     */
    static int run(ByteBuffer gradient, long gradientByte, ByteBuffer weights, long weightsByte, float[] theta,
                   float[] m, float[] v, float[] thetaOut, float[] mOut, float[] vOut, int from, int to,
                   KernelCall call, double[] lanes, int[] crc32c) {
        if (!AVAILABLE) {
            throw new IllegalStateException("no native segment step: " + NativeLoops.UNAVAILABLE);
        }
        if (!supports(call)) {
            throw new IllegalArgumentException("the segment step runs radam_rectified and adam, not "
                    + call.kernel().id());
        }
        Objects.checkFromToIndex(from, to, theta.length);
        Objects.checkFromToIndex(from, to, m.length);
        Objects.checkFromToIndex(from, to, v.length);
        Objects.checkFromToIndex(from, to, thetaOut.length);
        Objects.checkFromToIndex(from, to, mOut.length);
        Objects.checkFromToIndex(from, to, vOut.length);
        Objects.checkFromToIndex(0, JavaLoops.SUM_LANES, lanes.length);
        Objects.checkFromToIndex(0, 2, crc32c.length);
        if (!gradient.isDirect()) {
            throw new IllegalArgumentException("the gradient must be in a direct buffer: " + gradient);
        }
        if (!weights.isDirect() || weights.isReadOnly()) {
            throw new IllegalArgumentException("the weights must be in a writable direct buffer: " + weights);
        }
        long bytes = (long) (to - from) * Float.BYTES;
        Objects.checkFromIndexSize(gradientByte, bytes, gradient.capacity());
        Objects.checkFromIndexSize(weightsByte, bytes, weights.capacity());
        // The outputs are written while the inputs are still read, and θ restores the segment on failure.
        if (thetaOut == theta || thetaOut == m || thetaOut == v || mOut == theta || mOut == m || mOut == v
                || vOut == theta || vOut == m || vOut == v || thetaOut == mOut || thetaOut == vOut || mOut == vOut) {
            throw new IllegalArgumentException("the output arrays must be distinct from the inputs and each other");
        }
        boolean adam = call.kernel() == Kernel.ADAM;
        float[] scalars = {
            call.scalar("grad_scale"), call.scalar("decay_factor"), call.scalar("weight_decay"),
            call.scalar("beta1"), call.scalar("one_minus_beta1"), call.scalar("beta2"),
            call.scalar("one_minus_beta2"), call.scalar("step_size"), call.scalar("eps"),
            adam ? call.scalar("inv_sqrt_bias_correction2") : 1f,
        };
        int flags = (call.flag("decoupled_weight_decay") ? DECOUPLED : 0)
                | (call.flag("coupled_weight_decay") ? COUPLED : 0)
                | (adam ? ADAM : call.flag("lerp_first_moment") ? LERP : 0);
        // Regions that overlap (in one buffer, or in two views of one mapping) are refused natively,
        // where their addresses are known.
        return NativeLoops.segmentStep(gradient, gradientByte, weights, weightsByte, theta, m, v, thetaOut, mOut,
                vOut, from, to, scalars, flags, lanes, crc32c);
    }
}
