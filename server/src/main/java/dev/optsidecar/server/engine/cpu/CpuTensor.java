package dev.optsidecar.server.engine.cpu;

import dev.optsidecar.server.engine.EngineTensor;
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
    /**
     * Second buffers for the parameters and each state slot, in the same blocks, for steps that
     * write their results beside the current ones and swap them in ({@link CpuSegmentStepper});
     * null until the first such step.
     */
    private float[][] spareParams;
    private float[][][] spareState;
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
        return (int) Math.min(blockSize, numel - blockStart(block));
    }

    /** The tensor's element index of block {@code block}'s first element. */
    long blockStart(int block) {
        return (long) block << blockShift;
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

    /** Allocates the second buffers unless they are there. */
    void allocateSpares() {
        if (spareParams == null) {
            float[][][] slots = new float[state.length][][];
            for (int s = 0; s < slots.length; s++) {
                slots[s] = newBlocks();
            }
            spareParams = newBlocks();
            spareState = slots;
        }
    }

    private void freeSpares() {
        spareParams = null;
        spareState = null;
    }

    float[] spareParamBlock(int b) {
        return spareParams[b];
    }

    float[] spareSlotBlock(int slot, int b) {
        return spareState[slot][b];
    }

    /** Makes the second buffers the tensor's parameters and state, and the current ones the spares. */
    void swapSpares() {
        float[][] params = this.params;
        this.params = spareParams;
        spareParams = params;
        float[][][] state = this.state;
        this.state = spareState;
        spareState = state;
        for (int b = 0; b < slotsByBlock.length; b++) {
            for (int s = 0; s < this.state.length; s++) {
                slotsByBlock[b][s] = this.state[s][b];
            }
        }
    }

    /** The block that holds element {@code element}. */
    int blockOf(long element) {
        return (int) (element >>> blockShift);
    }

    /** Element {@code element}'s index within its block. */
    int indexInBlock(long element) {
        return (int) (element & (blockSize - 1));
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

    /**
     * Copies gradient values in, noting their sum of squares and the first NaN or Inf. The squares
     * are summed in double, where no finite float32 value can overflow, so a finite sum proves every
     * value finite: the common case is one pass over the (cache-hot) chunk, and the index of a bad
     * value is searched for only when the sum is not finite. From a direct buffer (a shared
     * segment) the native loops copy and sum in a single pass, of the values stored.
     */
    private Ingest ingest(float[][] into, long offset, ByteBuffer src) {
        FloatBuffer in = src.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
        int count = in.remaining();
        double[] lanes = new double[JavaLoops.SUM_LANES];
        boolean[] inOnePass = {true};
        forEachSegment(offset, count, (b, from, to, done) -> inOnePass[0] &= BulkLoops.copyAddingSquares(
                src, (long) done * Float.BYTES, into[b], from, to, lanes));
        if (!inOnePass[0]) {
            copyIn(into, offset, in);
            return checked(into, offset, count);
        }
        double sum = sumOfLanes(lanes);
        return Double.isFinite(sum) ? new Ingest(-1, sum) : new Ingest(firstNonFinite(into, offset, count), Double.NaN);
    }

    /**
     * The 16-bit ingest: each element is widened and stored, and the stored values seen by the same
     * sum of squares as the float32 ingest's (in the same pass), so a step over 16-bit gradients has
     * the norm, to the bit, of one over the same values sent as float32.
     */
    private Ingest ingestWidening(float[][] into, long offset, ByteBuffer src, WireType wire) {
        ShortBuffer in = src.slice().order(ByteOrder.LITTLE_ENDIAN).asShortBuffer();
        int count = in.remaining();
        short[] bits = shortScratch(count);
        in.get(bits, 0, count);
        double[] lanes = new double[JavaLoops.SUM_LANES];
        forEachSegment(offset, count, (b, from, to, done) -> BulkLoops.widenAddingSquares(wire, bits, done, into[b],
                from, to, lanes));
        double sum = sumOfLanes(lanes);
        return Double.isFinite(sum) ? new Ingest(-1, sum) : new Ingest(firstNonFinite(into, offset, count), Double.NaN);
    }

    /** The ingest figures of elements already stored: their sum of squares, or the first non-finite one. */
    private Ingest checked(float[][] blocks, long offset, int count) {
        double sum = sumOfSquares(blocks, offset, count);
        if (Double.isFinite(sum)) {
            return new Ingest(-1, sum);
        }
        return new Ingest(firstNonFinite(blocks, offset, count), Double.NaN);
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
        putWire(scratch, 0, count, dst, 0, wire);
        dst.position(dst.position() + count * wire.bytes);
    }

    @Override
    public void free() {
        params = null;
        grads = null;
        gradientBuffers = new float[0][][];
        state = null;
        slotsByBlock = null;
        freeSpares();
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
        forEachSegment(offset, count, (b, from, to, done) -> putWire(blocks[b], from, to, dst, done, wire));
        dst.position(dst.position() + count * wire.bytes);
    }

    /**
     * Writes {@code values[from, to)} as {@code wire} values into {@code dst} from element
     * {@code at} past its position, which stays: straight into its array if it has one (a 16-bit
     * type rounded on the way), else through a scratch.
     */
    private static void putWire(float[] values, int from, int to, ByteBuffer dst, int at, WireType wire) {
        int byteAt = dst.position() + at * wire.bytes;
        if (dst.hasArray()) {
            BulkLoops.toWire(wire, values, from, to, dst.array(), dst.arrayOffset() + byteAt);
            return;
        }
        if (wire == WireType.FLOAT32) {
            dst.slice(byteAt, (to - from) * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
                    .put(values, from, to - from);
            return;
        }
        short[] bits = shortScratch(to - from);
        BulkLoops.narrow(wire, values, from, to, bits, 0);
        dst.slice(byteAt, (to - from) * wire.bytes).order(ByteOrder.LITTLE_ENDIAN).asShortBuffer().put(bits, 0, to - from);
    }

    /** The index of the first NaN or Inf among {@code count} elements at {@code offset}, or -1. */
    private long firstNonFinite(float[][] blocks, long offset, int count) {
        long[] first = {-1};
        forEachSegment(offset, count, (b, from, to, done) -> {
            float[] a = blocks[b];
            for (int i = from; i < to && first[0] < 0; i++) {
                if (!Float.isFinite(a[i])) {
                    first[0] = ((long) b << blockShift) + i;
                }
            }
        });
        return first[0];
    }

    /**
     * Sum of squares in double over {@link JavaLoops#SUM_LANES} lanes (element i of a block piece
     * goes to lane i mod 8 counted from the piece's start), combined pairwise in a fixed order: the
     * same elements in the same pieces always give the same bits.
     */
    private double sumOfSquares(float[][] blocks, long offset, int count) {
        double[] lanes = new double[JavaLoops.SUM_LANES];
        forEachSegment(offset, count, (b, from, to, done) -> BulkLoops.addSquares(blocks[b], from, to, lanes));
        return sumOfLanes(lanes);
    }

    private static double sumOfLanes(double[] lanes) {
        return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    }

    private void checkRange(long offset, long count) {
        if (offset < 0 || count < 0 || offset + count > numel) {
            throw new IndexOutOfBoundsException(
                    "range [" + offset + ", " + (offset + count) + ") outside tensor of " + numel + " elements");
        }
    }
}
