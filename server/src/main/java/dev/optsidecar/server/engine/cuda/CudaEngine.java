package dev.optsidecar.server.engine.cuda;

import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.Ingest;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.ShortBuffer;
import java.util.List;

/**
 * The CUDA engine: every tensor's parameters, gradient buffers and state slots live in device
 * memory, allocated once when the tensor is; a step runs each tensor's program as one launch of
 * the catalogue's kernels ({@code src/main/cuda}), all calls fused per element. Data moves through
 * a ring of pinned host buffers: gradients are checked (first NaN/Inf, sum of squares, in the CPU
 * engine's order) while they sit in the pinned buffer and go to the device asynchronously, so the
 * next chunk arrives while the last one is in flight; reads come back through the same buffers.
 * All work is issued on one stream, so it runs in the order it was issued, and every reduction has
 * a fixed order: the same inputs give the same bits, run to run.
 */
public final class CudaEngine implements Engine {
    /** Bytes of one pinned staging buffer (and of the device scratch a view is computed in). */
    static final int STAGING_BYTES = 4 << 20;
    /** Staging buffers in the ring: chunks in flight to the device at once. */
    private static final int STAGING_BUFFERS = 4;

    /** Why the CUDA engine cannot run here: no driver, no device, no binary for the GPU, out of memory... */
    public static final class Unavailable extends Exception {
        public Unavailable(String reason) {
            super(reason);
        }
    }

    private final int device;
    private final String description;
    private final String uuid;
    private final long stream;
    private final ByteBuffer[] staging = new ByteBuffer[STAGING_BUFFERS];
    private final long[] stagingEvents = new long[STAGING_BUFFERS];
    private int nextStaging;
    private final long viewScratch;
    private final long partials;
    private final long total;
    /** Threads that have made {@link #device} their CUDA device (the runtime's choice is per thread). */
    private final ThreadLocal<Boolean> onDevice = ThreadLocal.withInitial(() -> false);
    private boolean closed;

    private CudaEngine(int device, String description, String uuid) {
        this.device = device;
        this.description = description;
        this.uuid = uuid;
        onDevice.set(true);
        this.stream = CudaNative.streamCreate();
        for (int i = 0; i < STAGING_BUFFERS; i++) {
            staging[i] = CudaNative.hostAlloc(STAGING_BYTES);
            stagingEvents[i] = CudaNative.eventCreate();
        }
        this.viewScratch = CudaNative.malloc(STAGING_BYTES);
        this.partials = CudaNative.malloc((long) CudaNative.REDUCE_BLOCKS * Double.BYTES);
        this.total = CudaNative.malloc(Double.BYTES);
    }

    /**
     * Opens device {@code device} and runs the start-up self-test (every kernel of the catalogue
     * against the reference loops).
     *
     * @throws Unavailable with the reason, when the engine cannot run here
     */
    public static CudaEngine open(int device) throws Unavailable {
        String loadFailure = CudaNative.load();
        if (loadFailure != null) {
            throw new Unavailable(loadFailure);
        }
        try {
            NativeProgram.checkCatalogue(CudaNative.catalogue());
        } catch (IllegalStateException e) {
            throw new Unavailable("the CUDA library was built from another kernel catalogue than this server's");
        }
        int count = CudaNative.deviceCount();
        if (count == -CudaNative.ERROR_INSUFFICIENT_DRIVER) {
            throw new Unavailable("no usable CUDA driver: none is installed, or it is older than the CUDA 13.0"
                    + " runtime (cudaGetDeviceCount: " + CudaNative.errorName(-count) + ")");
        }
        if (count == 0 || count == -CudaNative.ERROR_NO_DEVICE) {
            throw new Unavailable("no CUDA device");
        }
        if (count < 0) {
            throw new Unavailable("CUDA cannot start (cudaGetDeviceCount: " + CudaNative.errorName(-count) + ")");
        }
        if (device < 0 || device >= count) {
            throw new Unavailable("no CUDA device " + device + ": there " + (count == 1 ? "is 1" : "are " + count));
        }
        CudaEngine engine;
        String architecture;
        try {
            String[] info = CudaNative.useDevice(device).split("\\|");
            architecture = "sm_" + info[1] + info[2];
            engine = new CudaEngine(device, info[0] + " (device " + device + ", " + architecture + ", "
                    + Long.parseLong(info[3]) / (1L << 20) + " MiB)", info[4]);
        } catch (CudaException e) {
            throw new Unavailable("CUDA device " + device + " cannot be used: " + e.getMessage());
        } catch (OutOfMemoryError e) {
            throw new Unavailable("out of memory on CUDA device " + device + ": " + e.getMessage());
        }
        try {
            SelfTest.run(engine);
        } catch (CudaException e) {
            engine.close();
            if (e.getMessage().contains("NoKernelImageForDevice") || e.getMessage().contains("InvalidPtx")
                    || e.getMessage().contains("UnsupportedPtxVersion")) {
                throw new Unavailable("no binary for this GPU (" + architecture + "): the library carries SASS"
                        + " for sm_80, sm_90 and sm_100 and PTX for compute_80 (" + e.getMessage() + ")");
            }
            throw new Unavailable("the CUDA self-test failed: " + e.getMessage());
        } catch (OutOfMemoryError e) {
            engine.close();
            throw new Unavailable("out of memory on CUDA device " + device + ": " + e.getMessage());
        } catch (AssertionError e) {
            engine.close();
            throw new Unavailable("the CUDA self-test failed: " + e.getMessage());
        }
        return engine;
    }

    /** The device, for Describe and logs: name, index, architecture and memory. */
    public String description() {
        return description;
    }

    @Override
    public String name() {
        return "cuda";
    }

    @Override
    public String device() {
        return description;
    }

    @Override
    public String deviceUuid() {
        return uuid;
    }

    /** Free bytes on the device now. */
    public long freeBytes() {
        synchronized (this) {
            enter();
            return CudaNative.freeBytes();
        }
    }

    @Override
    public EngineTensor allocate(long numel, int slots) {
        synchronized (this) {
            enter();
            return new CudaTensor(this, numel, slots);
        }
    }

    @Override
    public long bytesFor(long numel, int slots) {
        return Math.multiplyExact(Math.multiplyExact(numel, (long) Float.BYTES), 2L + slots);
    }

    @Override
    public int threads() {
        return 1;
    }

    @Override
    public void run(List<TensorProgram> programs) {
        synchronized (this) {
            enter();
            for (TensorProgram program : programs) {
                launch(program, false);
            }
            CudaNative.streamSynchronize(stream);
        }
    }

    @Override
    public double runMeasuringUpdate(List<TensorProgram> programs) {
        synchronized (this) {
            enter();
            CudaNative.zero(total, Double.BYTES, stream);
            for (TensorProgram program : programs) {
                launch(program, true);
            }
            ByteBuffer pinned = acquireStaging().buffer();
            CudaNative.copyOut(pinned, total, Double.BYTES, stream);
            return pinned.getDouble(0);
        }
    }

    private void launch(TensorProgram program, boolean measure) {
        CudaTensor t = (CudaTensor) program.tensor();
        for (KernelCall call : program.calls()) {
            if (call.kernel().kind() != Kernel.Kind.STEP) {
                throw new IllegalArgumentException(call.kernel().id() + " is a view kernel");
            }
        }
        NativeProgram p = NativeProgram.of(program.calls());
        if (measure && p.count() > NativeProgram.CALLS_PER_LAUNCH) {
            throw new IllegalStateException("a measured program runs in one launch, of at most "
                    + NativeProgram.CALLS_PER_LAUNCH + " calls, not " + p.count());
        }
        CudaNative.runProgram(t.theta(), t.grad(), t.slotTable(), t.numel(), p.codes(), p.flags(), p.slots(),
                p.scalars(), p.count(), measure ? partials : 0, measure ? total : 0, stream);
    }

    @Override
    public void close() {
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
            enter();
            CudaNative.streamSynchronize(stream);
            CudaNative.free(viewScratch);
            CudaNative.free(partials);
            CudaNative.free(total);
            for (ByteBuffer b : staging) {
                if (b != null) {
                    CudaNative.hostFree(b);
                }
            }
            CudaNative.streamDestroy(stream);
        }
    }

    // ---- What tensors call, under the engine's lock --------------------------------------------

    /** Makes the engine's device the calling thread's, once per thread. */
    void enter() {
        if (!onDevice.get()) {
            CudaNative.setDevice(device);
            onDevice.set(true);
        }
    }

    long stream() {
        return stream;
    }

    /** Whether {@link #close} ran (the device context's stream and buffers are gone). */
    boolean isClosed() {
        return closed;
    }

    /** The engine's pinned buffer of the ring for a small read back (its copy waited for). */
    ByteBuffer pinnedForRead() {
        return acquireStaging().buffer();
    }

    /** A pinned buffer of the ring (little-endian, cleared) and the event that fires when its copy is done. */
    private record Staging(ByteBuffer buffer, long event) {}

    /** The next pinned buffer of the ring, once the copy that last used it is done. */
    private Staging acquireStaging() {
        int i = nextStaging;
        nextStaging = (i + 1) % STAGING_BUFFERS;
        CudaNative.eventSynchronize(stagingEvents[i]);
        return new Staging(staging[i].duplicate().order(ByteOrder.LITTLE_ENDIAN).clear(), stagingEvents[i]);
    }

    /** Copies float32 bytes into device floats at {@code base + offset}, asynchronously. */
    void upload(long base, long offset, ByteBuffer src) {
        ByteBuffer in = src.slice();
        long at = base + offset * Float.BYTES;
        while (in.hasRemaining()) {
            Staging stage = acquireStaging();
            int bytes = Math.min(in.remaining(), STAGING_BYTES);
            stage.buffer().put(in.slice(in.position(), bytes));
            in.position(in.position() + bytes);
            CudaNative.copyIn(at, stage.buffer(), bytes, stream, stage.event());
            at += bytes;
        }
    }

    /**
     * Copies gradient elements of type {@code wire} into device floats at {@code base + offset},
     * widening 16-bit ones, noting the first NaN or Inf and the sum of squares on the way, in the
     * CPU engine's order (eight sums, by position mod 8 from the chunk's start, combined pairwise),
     * so the norm is the CPU engine's.
     */
    Ingest uploadGradient(long base, long offset, ByteBuffer src, WireType wire) {
        ByteBuffer in = src.slice().order(ByteOrder.LITTLE_ENDIAN);
        int count = in.remaining() / wire.bytes;
        long at = base + offset * Float.BYTES;
        long first = -1;
        double[] lanes = new double[8];
        int done = 0;
        while (done < count) {
            Staging stage = acquireStaging();
            ByteBuffer pinned = stage.buffer();
            int n = Math.min(count - done, STAGING_BYTES / Float.BYTES);
            FloatBuffer floats = pinned.asFloatBuffer();
            if (wire == WireType.FLOAT32) {
                pinned.put(in.slice(done * Float.BYTES, n * Float.BYTES));
            } else {
                ShortBuffer shorts = in.slice(done * wire.bytes, n * wire.bytes).order(ByteOrder.LITTLE_ENDIAN)
                        .asShortBuffer();
                for (int i = 0; i < n; i++) {
                    floats.put(i, wire.widen(shorts.get(i)));
                }
            }
            CudaNative.copyIn(at, pinned, (long) n * Float.BYTES, stream, stage.event());
            for (int i = 0; i < n; i++) {
                double v = floats.get(i);
                lanes[(done + i) & 7] += v * v;
                if (first < 0 && !Double.isFinite(v)) {
                    first = offset + done + i;
                }
            }
            at += (long) n * Float.BYTES;
            done += n;
        }
        return new Ingest(first, first >= 0 ? Double.NaN
                : ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])));
    }

    /** Copies {@code count} device floats at {@code base + offset} into {@code dst}, rounded to {@code wire}. */
    void download(long base, long offset, int count, ByteBuffer dst, WireType wire) {
        int done = 0;
        while (done < count) {
            ByteBuffer pinned = acquireStaging().buffer();
            int n = Math.min(count - done, STAGING_BYTES / Float.BYTES);
            CudaNative.copyOut(pinned, base + (offset + done) * Float.BYTES, (long) n * Float.BYTES, stream);
            deliver(pinned, n, dst, wire);
            done += n;
        }
    }

    /** Computes {@code count} elements of view {@code call} from {@code offset} on the device into {@code dst}. */
    void downloadView(CudaTensor t, KernelCall call, long offset, int count, ByteBuffer dst, WireType wire) {
        if (call.kernel().kind() != Kernel.Kind.VIEW) {
            throw new IllegalArgumentException(call.kernel().id() + " is not a view kernel");
        }
        NativeProgram p = NativeProgram.of(List.of(call));
        int done = 0;
        while (done < count) {
            int n = Math.min(count - done, STAGING_BYTES / Float.BYTES);
            CudaNative.runView(viewScratch, t.theta(), t.slotTable(), offset + done, n, p.codes()[0], p.slots(),
                    p.scalars(), stream);
            ByteBuffer pinned = acquireStaging().buffer();
            CudaNative.copyOut(pinned, viewScratch, (long) n * Float.BYTES, stream);
            deliver(pinned, n, dst, wire);
            done += n;
        }
    }

    private static void deliver(ByteBuffer pinned, int n, ByteBuffer dst, WireType wire) {
        if (wire == WireType.FLOAT32) {
            dst.put(pinned.slice(0, n * Float.BYTES));
            return;
        }
        FloatBuffer floats = pinned.asFloatBuffer();
        ShortBuffer out = dst.slice().order(ByteOrder.LITTLE_ENDIAN).asShortBuffer();
        for (int i = 0; i < n; i++) {
            out.put(i, wire.narrow(floats.get(i)));
        }
        dst.position(dst.position() + n * Short.BYTES);
    }

    /** Sets {@code out} to the buffers summed in order, divided, and returns Σ out² in the fixed order. */
    double combine(long out, long[] buffers, float divisor, long n) {
        CudaNative.combine(out, buffers, divisor, n, stream);
        CudaNative.sumOfSquares(out, n, partials, total, stream);
        ByteBuffer pinned = acquireStaging().buffer();
        CudaNative.copyOut(pinned, total, Double.BYTES, stream);
        return pinned.getDouble(0);
    }
}
