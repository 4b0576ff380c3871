package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.HalfFloats;
import dev.optsidecar.server.engine.Ingest;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.ShortBuffer;

/**
 * A tensor stored as float[] blocks of {@code blockSize} elements (the last one shorter), so that
 * tensors of more than 2^31 elements work. Parameters, gradient and state slots share the layout,
 * so a kernel sees the same index range in every array of a block.
 */
final class CpuTensor implements EngineTensor {
    private final long numel;
    private final int blockSize;
    private final int blockShift;
    private float[][] params;
    private float[][] grads;
    /** state[slot][block]. */
    private float[][][] state;
    /** The same arrays by block: slotsByBlock[block][slot], as kernels take them. */
    private float[][][] slotsByBlock;
    /** Trainers' own gradient buffers by handle (null: free); replaced, never mutated, when it grows. */
    private volatile float[][][] gradientBuffers = new float[0][][];

    CpuTensor(long numel, int slots, int blockSize) {
        if (Integer.bitCount(blockSize) != 1) {
            throw new IllegalArgumentException("block size must be a power of two: " + blockSize);
        }
        this.numel = numel;
        this.blockSize = blockSize;
        this.blockShift = Integer.numberOfTrailingZeros(blockSize);
        this.params = newBlocks();
        this.grads = newBlocks();
        this.state = new float[slots][][];
        for (int s = 0; s < slots; s++) {
            state[s] = newBlocks();
        }
        this.slotsByBlock = new float[blockCount()][slots][];
        for (int b = 0; b < slotsByBlock.length; b++) {
            for (int s = 0; s < slots; s++) {
                slotsByBlock[b][s] = state[s][b];
            }
        }
    }

    private float[][] newBlocks() {
        int count = blockCount();
        float[][] blocks = new float[count][];
        for (int b = 0; b < count; b++) {
            blocks[b] = new float[blockLength(b)];
        }
        return blocks;
    }

    int blockCount() {
        return (int) ((numel + blockSize - 1) >>> blockShift);
    }

    int blockLength(int block) {
        long start = (long) block << blockShift;
        return (int) Math.min(blockSize, numel - start);
    }

    float[] paramBlock(int b) {
        return params[b];
    }

    float[] gradBlock(int b) {
        return grads[b];
    }

    /** The state slots of one block, in slot order. */
    float[][] stateBlock(int b) {
        return slotsByBlock[b];
    }

    @Override
    public long numel() {
        return numel;
    }

    @Override
    public int slotCount() {
        return state.length;
    }

    @Override
    public long bytes() {
        return CpuEngine.bytes(numel, state.length);
    }

    @Override
    public void writeParams(long offset, ByteBuffer src) {
        copyIn(params, offset, src.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer());
    }

    @Override
    public void writeSlot(int slot, long offset, ByteBuffer src) {
        copyIn(state[slot], offset, src.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer());
    }

    @Override
    public Ingest writeGradient(long offset, ByteBuffer src) {
        return ingest(grads, offset, src);
    }

    /** Copies gradient values in, noting the first NaN or Inf and their sum of squares. */
    private Ingest ingest(float[][] into, long offset, ByteBuffer src) {
        FloatBuffer in = src.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
        int count = in.remaining();
        copyIn(into, offset, in);
        long bad = firstNonFinite(into, offset, count);
        return new Ingest(bad, bad >= 0 ? Double.NaN : sumOfSquares(into, offset, count));
    }

    /**
     * The 16-bit ingest: each element is widened, stored, and seen by the non-finite check and the
     * sum of squares in one pass. The squares are summed in the float32 ingest's order (two
     * interleaved sums per block piece), so a step over 16-bit gradients has the norm, to the bit,
     * of one over the same values sent as float32.
     */
    private Ingest ingestWidening(float[][] into, long offset, ByteBuffer src, WireType wire) {
        ShortBuffer in = src.slice().order(ByteOrder.LITTLE_ENDIAN).asShortBuffer();
        int count = in.remaining();
        short[] bits = shortScratch(count);
        in.get(bits, 0, count);
        boolean bfloat16 = wire == WireType.BFLOAT16;
        long[] first = {-1};
        double[] sums = new double[2];
        forEachSegment(offset, count, (b, from, to, done) -> {
            float[] a = into[b];
            int maxMagnitude = 0;
            double s0 = 0;
            double s1 = 0;
            int k = done - from;
            int i = from;
            for (; i + 1 < to; i += 2) {
                float v0 = bfloat16 ? HalfFloats.bfloat16ToFloat(bits[k + i]) : HalfFloats.float16ToFloat(bits[k + i]);
                float v1 = bfloat16 ? HalfFloats.bfloat16ToFloat(bits[k + i + 1])
                        : HalfFloats.float16ToFloat(bits[k + i + 1]);
                a[i] = v0;
                a[i + 1] = v1;
                maxMagnitude = Math.max(maxMagnitude, Math.max(Float.floatToRawIntBits(v0) & 0x7fffffff,
                        Float.floatToRawIntBits(v1) & 0x7fffffff));
                s0 += (double) v0 * v0;
                s1 += (double) v1 * v1;
            }
            if (i < to) {
                float v = bfloat16 ? HalfFloats.bfloat16ToFloat(bits[k + i]) : HalfFloats.float16ToFloat(bits[k + i]);
                a[i] = v;
                maxMagnitude = Math.max(maxMagnitude, Float.floatToRawIntBits(v) & 0x7fffffff);
                s0 += (double) v * v;
            }
            sums[0] += s0;
            sums[1] += s1;
            if (first[0] < 0 && maxMagnitude >= 0x7f800000) {
                for (int j = from; j < to && first[0] < 0; j++) {
                    if (!Float.isFinite(a[j])) {
                        first[0] = ((long) b << blockShift) + j;
                    }
                }
            }
        });
        return new Ingest(first[0], first[0] >= 0 ? Double.NaN : sums[0] + sums[1]);
    }

    /** Scratch for 16-bit elements, one per thread, grown to the largest chunk. */
    private static final ThreadLocal<short[]> SHORT_SCRATCH = ThreadLocal.withInitial(() -> new short[0]);

    private static short[] shortScratch(int count) {
        short[] scratch = SHORT_SCRATCH.get();
        if (scratch.length < count) {
            scratch = new short[count];
            SHORT_SCRATCH.set(scratch);
        }
        return scratch;
    }

    @Override
    public synchronized int newGradientBuffer() {
        float[][][] buffers = gradientBuffers;
        int handle = 0;
        while (handle < buffers.length && buffers[handle] != null) {
            handle++;
        }
        float[][][] grown = java.util.Arrays.copyOf(buffers, Math.max(buffers.length, handle + 1));
        grown[handle] = newBlocks();
        gradientBuffers = grown;
        return handle;
    }

    @Override
    public synchronized void freeGradientBuffer(int handle) {
        float[][][] copy = gradientBuffers.clone();
        copy[handle] = null;
        gradientBuffers = copy;
    }

    @Override
    public Ingest writeGradient(int handle, long offset, ByteBuffer src, WireType wire) {
        return wire == WireType.FLOAT32 ? ingest(gradientBuffers[handle], offset, src)
                : ingestWidening(gradientBuffers[handle], offset, src, wire);
    }

    @Override
    public void readGradient(int handle, long offset, int count, ByteBuffer dst) {
        copyOut(gradientBuffers[handle], offset, count, dst);
    }

    @Override
    public synchronized void useGradient(int handle) {
        float[][][] copy = gradientBuffers.clone();
        float[][] step = grads;
        grads = copy[handle];
        copy[handle] = step;
        gradientBuffers = copy;
    }

    @Override
    public double combineGradients(int[] handles, float divisor) {
        float[][][] buffers = gradientBuffers;
        double squares = 0;
        for (int b = 0; b < grads.length; b++) {
            float[] out = grads[b];
            int n = out.length;
            System.arraycopy(buffers[handles[0]][b], 0, out, 0, n);
            for (int h = 1; h < handles.length; h++) {
                float[] add = buffers[handles[h]][b];
                for (int i = 0; i < n; i++) {
                    out[i] += add[i];
                }
            }
            if (divisor != 1f) {
                for (int i = 0; i < n; i++) {
                    out[i] /= divisor;
                }
            }
            double blockSquares = 0;
            for (int i = 0; i < n; i++) {
                blockSquares += (double) out[i] * out[i];
            }
            squares += blockSquares;
        }
        return squares;
    }

    @Override
    public void readParams(long offset, int count, ByteBuffer dst, WireType wire) {
        copyOut(params, offset, count, dst, wire);
    }

    @Override
    public void readGradient(long offset, int count, ByteBuffer dst) {
        copyOut(grads, offset, count, dst);
    }

    @Override
    public void readSlot(int slot, long offset, int count, ByteBuffer dst, WireType wire) {
        copyOut(state[slot], offset, count, dst, wire);
    }

    /** Scratch for computed views, one per reading thread, grown to the largest chunk read. */
    private static final ThreadLocal<float[]> VIEW_SCRATCH = ThreadLocal.withInitial(() -> new float[0]);

    @Override
    public void readView(KernelCall call, long offset, int count, ByteBuffer dst, WireType wire) {
        ViewLoop view = CpuKernels.view(call);
        float[] scratch = VIEW_SCRATCH.get();
        if (scratch.length < count) {
            scratch = new float[count];
            VIEW_SCRATCH.set(scratch);
        }
        float[] out = scratch;
        forEachSegment(offset, count, (b, from, to, done) -> view.compute(params[b], slotsByBlock[b], from, to, out, done));
        if (wire == WireType.FLOAT32) {
            dst.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().put(scratch, 0, count);
            dst.position(dst.position() + count * Float.BYTES);
            return;
        }
        short[] bits = shortScratch(count);
        narrow(scratch, 0, count, bits, 0, wire);
        putShorts(bits, count, dst);
    }

    @Override
    public void free() {
        params = null;
        grads = null;
        gradientBuffers = new float[0][][];
        state = null;
        slotsByBlock = null;
    }

    /** One piece of a range that lies within a single block. */
    @FunctionalInterface
    private interface Segment {
        /** Elements [from, to) of block b; {@code done} elements of the range precede them. */
        void visit(int b, int from, int to, int done);
    }

    /** Visits the block pieces of elements [offset, offset + count), in order. */
    private void forEachSegment(long offset, int count, Segment segment) {
        checkRange(offset, count);
        long at = offset;
        int done = 0;
        while (done < count) {
            int b = (int) (at >>> blockShift);
            int from = (int) (at & (blockSize - 1));
            int n = Math.min(count - done, blockLength(b) - from);
            segment.visit(b, from, from + n, done);
            at += n;
            done += n;
        }
    }

    private void copyIn(float[][] blocks, long offset, FloatBuffer in) {
        forEachSegment(offset, in.remaining(), (b, from, to, done) -> in.get(blocks[b], from, to - from));
    }

    private void copyOut(float[][] blocks, long offset, int count, ByteBuffer dst) {
        FloatBuffer out = dst.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
        forEachSegment(offset, count, (b, from, to, done) -> out.put(blocks[b], from, to - from));
        dst.position(dst.position() + count * Float.BYTES);
    }

    /** As {@link #copyOut(float[][], long, int, ByteBuffer)}, each value rounded to {@code wire} in the copy. */
    private void copyOut(float[][] blocks, long offset, int count, ByteBuffer dst, WireType wire) {
        if (wire == WireType.FLOAT32) {
            copyOut(blocks, offset, count, dst);
            return;
        }
        short[] bits = shortScratch(count);
        forEachSegment(offset, count, (b, from, to, done) -> narrow(blocks[b], from, to, bits, done, wire));
        putShorts(bits, count, dst);
    }

    /** Rounds {@code from[start, end)} into {@code to} from {@code at} on. */
    private static void narrow(float[] from, int start, int end, short[] to, int at, WireType wire) {
        if (wire == WireType.BFLOAT16) {
            narrowToBfloat16(from, start, end, to, at);
        } else {
            narrowToFloat16(from, start, end, to, at);
        }
    }

    private static void narrowToBfloat16(float[] from, int start, int end, short[] to, int at) {
        int k = at - start;
        for (int i = start; i < end; i++) {
            to[k + i] = HalfFloats.floatToBfloat16(from[i]);
        }
    }

    private static void narrowToFloat16(float[] from, int start, int end, short[] to, int at) {
        int k = at - start;
        for (int i = start; i < end; i++) {
            to[k + i] = HalfFloats.floatToFloat16(from[i]);
        }
    }

    private static void putShorts(short[] bits, int count, ByteBuffer dst) {
        dst.slice().order(ByteOrder.LITTLE_ENDIAN).asShortBuffer().put(bits, 0, count);
        dst.position(dst.position() + count * Short.BYTES);
    }

    /**
     * Finds the first NaN or Inf among {@code count} elements at {@code offset}. The common,
     * all-finite case is an integer max over the exponent bits, which the JIT vectorises; the
     * index is searched for only when that max says something is there.
     */
    private long firstNonFinite(float[][] blocks, long offset, int count) {
        long[] first = {-1};
        forEachSegment(offset, count, (b, from, to, done) -> {
            float[] a = blocks[b];
            int maxMagnitude = 0;
            for (int i = from; i < to; i++) {
                maxMagnitude = Math.max(maxMagnitude, Float.floatToRawIntBits(a[i]) & 0x7fffffff);
            }
            if (first[0] < 0 && maxMagnitude >= 0x7f800000) {
                for (int i = from; i < to && first[0] < 0; i++) {
                    if (!Float.isFinite(a[i])) {
                        first[0] = ((long) b << blockShift) + i;
                    }
                }
            }
        });
        return first[0];
    }

    /** Sum of squares in double, with two accumulators so the adds overlap. */
    private double sumOfSquares(float[][] blocks, long offset, int count) {
        double[] sums = new double[2];
        forEachSegment(offset, count, (b, from, to, done) -> {
            float[] a = blocks[b];
            double s0 = 0;
            double s1 = 0;
            int i = from;
            for (; i + 1 < to; i += 2) {
                s0 += (double) a[i] * a[i];
                s1 += (double) a[i + 1] * a[i + 1];
            }
            if (i < to) {
                s0 += (double) a[i] * a[i];
            }
            sums[0] += s0;
            sums[1] += s1;
        });
        return sums[0] + sums[1];
    }

    private void checkRange(long offset, long count) {
        if (offset < 0 || count < 0 || offset + count > numel) {
            throw new IndexOutOfBoundsException(
                    "range [" + offset + ", " + (offset + count) + ") outside tensor of " + numel + " elements");
        }
    }
}
