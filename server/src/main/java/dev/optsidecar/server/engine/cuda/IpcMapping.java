package dev.optsidecar.server.engine.cuda;

import dev.optsidecar.server.engine.DeviceGradientSource;
import dev.optsidecar.server.engine.DeviceViewTarget;
import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.Ingest;
import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;

/**
 * A trainer's parameter and gradient buffers on the engine's GPU, mapped from the CUDA IPC
 * handles it exported, for the life of one Step stream. Gradients are copied from the trainer's
 * buffer into the engine's own on the device, with the host ingest's checks (the first NaN or Inf,
 * Σ g² per chunk-sized piece in the same lanes and order), so that the trainer may write its buffer
 * again as soon as the step returns and the step reads only what was checked. Views are written
 * into the trainer's parameter buffer on the device; {@link #finish} waits for them.
 */
public final class IpcMapping implements DeviceViewTarget, AutoCloseable {
    /** A buffer as the trainer exported it: its allocation's handle, the buffer's byte offset in it, and size. */
    public record Buffer(byte[] handle, long offset, long bytes) {}

    /** A mapping refused: the handle does not open here, or the buffer lies outside what it maps. */
    public static final class Refused extends Exception {
        private final boolean unopenable;

        Refused(String message, boolean unopenable) {
            super(message);
            this.unopenable = unopenable;
        }

        /** True when a handle could not be opened (another GPU or host, a stale handle). */
        public boolean unopenable() {
            return unopenable;
        }
    }

    /**
     * Allocations mapped in this process, by handle, with the streams using each: CUDA maps a
     * handle once per process, and two trainers' buffers (or one trainer's, on a stream that ends
     * as the next opens) may lie in one allocation of the trainer's caching allocator.
     */
    private static final Map<String, Opened> OPENED = new HashMap<>();

    private static final class Opened {
        final long pointer;
        final long bytes;
        int users;

        Opened(long pointer, long bytes) {
            this.pointer = pointer;
            this.bytes = bytes;
        }
    }

    private final CudaEngine engine;
    /** Handles of the allocations this mapping uses, each given back once at close. */
    private final List<String> mapped = new ArrayList<>();
    private long params;
    private long gradients;
    private final long[] weightsOffsets;
    private final long[] gradientOffsets;
    private final long[] numels;
    /** Device longs, two per tensor: the sums of the view written (see {@link #finish}). */
    private long viewSums;
    /** Tensors the view being written has reached; those of them still to be summed. */
    private final boolean[] written;
    private final boolean[] toSum;
    /** Device scratch for the ingest's per-piece lane sums and first non-finite indexes. */
    private long scratch;
    private long scratchPieces;
    private boolean closed;

    private IpcMapping(CudaEngine engine, long[] numels, long[] weightsOffsets, long[] gradientOffsets) {
        this.engine = engine;
        this.numels = numels.clone();
        this.weightsOffsets = weightsOffsets.clone();
        this.gradientOffsets = gradientOffsets.clone();
        this.written = new boolean[numels.length];
        this.toSum = new boolean[numels.length];
    }

    /**
     * Maps both buffers (one mapping when they share an allocation). The offsets are the caller's
     * to check against the buffers' sizes; each buffer is checked here against its allocation.
     */
    public static IpcMapping open(CudaEngine engine, long[] numels, Buffer params, long[] weightsOffsets,
                                  Buffer gradients, long[] gradientOffsets) throws Refused {
        IpcMapping m = new IpcMapping(engine, numels, weightsOffsets, gradientOffsets);
        synchronized (engine) {
            engine.enter();
            try {
                m.viewSums = CudaNative.malloc(Math.max(1, 2L * numels.length) * Long.BYTES);
                long[] p = m.map(params.handle(), "params_handle");
                m.params = m.place(p, params, "params");
                long[] g = m.map(gradients.handle(), "gradients_handle");
                m.gradients = m.place(g, gradients, "gradients");
            } catch (Refused | RuntimeException | Error e) {
                m.close();
                throw e;
            }
        }
        return m;
    }

    /** {pointer, bytes} of the allocation {@code handle} names, mapped now or by another stream before. */
    private long[] map(byte[] handle, String field) throws Refused {
        String key = HexFormat.of().formatHex(handle);
        synchronized (OPENED) {
            Opened opened = OPENED.get(key);
            if (opened == null) {
                try {
                    long[] made = CudaNative.ipcOpen(handle);
                    opened = new Opened(made[0], made[1]);
                } catch (CudaException e) {
                    throw new Refused(field + " does not open on the server's GPU: " + e.getMessage(), true);
                }
                OPENED.put(key, opened);
            }
            opened.users++;
            mapped.add(key);
            return new long[] {opened.pointer, opened.bytes};
        }
    }

    private long place(long[] allocation, Buffer buffer, String field) throws Refused {
        if (buffer.offset() < 0 || buffer.bytes() < 0 || buffer.offset() > allocation[1] - buffer.bytes()) {
            throw new Refused(field + "_offset and " + field + "_bytes: bytes [" + buffer.offset() + ", "
                    + (buffer.offset() + buffer.bytes()) + ") lie outside the " + allocation[1]
                    + " bytes the handle maps", false);
        }
        return allocation[0] + buffer.offset();
    }

    /** The trainer's gradients, as a step's source. */
    public DeviceGradientSource gradients() {
        return (targets, pieceElements) -> ingest(targets, pieceElements, gradients, gradientOffsets);
    }

    /** The trainer's parameters, as the source of a set-weights step. */
    public DeviceGradientSource weights() {
        return (targets, pieceElements) -> ingest(targets, pieceElements, params, weightsOffsets);
    }

    private List<Ingest[]> ingest(List<DeviceGradientSource.Target> targets, int pieceElements, long base,
                                  long[] offsets) {
        synchronized (engine) {
            engine.enter();
            long pieces = 0;
            for (DeviceGradientSource.Target t : targets) {
                pieces += piecesOf(t.storage().numel(), pieceElements);
            }
            ensureScratch(pieces);
            long sums = scratch;
            long firsts = scratch + pieces * CudaNative.INGEST_LANES * Double.BYTES;
            long at = 0;
            for (DeviceGradientSource.Target t : targets) {
                CudaTensor tensor = (CudaTensor) t.storage();
                long lanes = at * CudaNative.INGEST_LANES;
                CudaNative.ingest(tensor.gradientBuffer(t.handle()), base + offsets[t.tensor()],
                        tensor.numel(), pieceElements, sums + lanes * Double.BYTES, firsts + lanes * Long.BYTES,
                        engine.stream());
                at += piecesOf(tensor.numel(), pieceElements);
            }
            double[] laneSums = new double[(int) (pieces * CudaNative.INGEST_LANES)];
            long[] laneFirsts = new long[laneSums.length];
            readBack(sums, laneSums.length, (buffer, from, n) -> buffer.asDoubleBuffer().get(laneSums, from, n));
            readBack(firsts, laneFirsts.length, (buffer, from, n) -> buffer.asLongBuffer().get(laneFirsts, from, n));
            List<Ingest[]> out = new ArrayList<>();
            int lane = 0;
            for (DeviceGradientSource.Target t : targets) {
                Ingest[] perPiece = new Ingest[(int) piecesOf(t.storage().numel(), pieceElements)];
                for (int p = 0; p < perPiece.length; p++, lane += CudaNative.INGEST_LANES) {
                    perPiece[p] = pieceIngest(laneSums, laneFirsts, lane);
                }
                out.add(perPiece);
            }
            return out;
        }
    }

    /** A piece's figures from its lanes, folded as the host ingest folds its eight sums. */
    private static Ingest pieceIngest(double[] sums, long[] firsts, int at) {
        long first = -1;
        for (int k = 0; k < CudaNative.INGEST_LANES; k++) {
            long f = firsts[at + k];
            if (f >= 0 && (first < 0 || f < first)) {
                first = f;
            }
        }
        if (first >= 0) {
            return new Ingest(first, Double.NaN);
        }
        double[] l = Arrays.copyOfRange(sums, at, at + CudaNative.INGEST_LANES);
        return new Ingest(-1, ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])));
    }

    private static long piecesOf(long numel, int pieceElements) {
        return (numel + pieceElements - 1) / pieceElements;
    }

    private void ensureScratch(long pieces) {
        if (pieces <= scratchPieces) {
            return;
        }
        if (scratch != 0) {
            CudaNative.streamSynchronize(engine.stream());
            CudaNative.free(scratch);
            scratch = 0;
        }
        scratch = CudaNative.malloc(pieces * CudaNative.INGEST_LANES * (Double.BYTES + Long.BYTES));
        scratchPieces = pieces;
    }

    @FunctionalInterface
    private interface Reader {
        void read(ByteBuffer pinned, int from, int count);
    }

    /** Reads {@code count} 8-byte values at {@code device} back through the engine's pinned buffers. */
    private void readBack(long device, int count, Reader into) {
        int perRead = CudaEngine.STAGING_BYTES / Long.BYTES;
        for (int from = 0; from < count; from += perRead) {
            int n = Math.min(perRead, count - from);
            ByteBuffer pinned = engine.pinnedForRead();
            CudaNative.copyOut(pinned, device + (long) from * Long.BYTES, (long) n * Long.BYTES, engine.stream());
            into.read(pinned, from, n);
        }
    }

    /** Starts writing a view: no tensor written, the sums zeroed. */
    public void startView() {
        synchronized (engine) {
            engine.enter();
            Arrays.fill(written, false);
            Arrays.fill(toSum, false);
            CudaNative.zero(viewSums, 2L * numels.length * Long.BYTES, engine.stream());
        }
    }

    /** Copies {@code src} into tensor {@code tensor}'s parameters (0: they were written already), summing them. */
    private void copyAndSum(int tensor, long src) {
        CudaNative.copySums(params + weightsOffsets[tensor], src, numels[tensor],
                viewSums + 2L * tensor * Long.BYTES, engine.stream());
        written[tensor] = true;
    }

    @Override
    public void params(int tensor, EngineTensor storage) {
        synchronized (engine) {
            engine.enter();
            copyAndSum(tensor, ((CudaTensor) storage).theta());
        }
    }

    @Override
    public void slot(int tensor, EngineTensor storage, int slot) {
        synchronized (engine) {
            engine.enter();
            copyAndSum(tensor, ((CudaTensor) storage).slot(slot));
        }
    }

    @Override
    public void view(int tensor, EngineTensor storage, KernelCall view) {
        if (view.kernel().kind() != Kernel.Kind.VIEW) {
            throw new IllegalArgumentException(view.kernel().id() + " is not a view kernel");
        }
        synchronized (engine) {
            engine.enter();
            CudaTensor t = (CudaTensor) storage;
            NativeProgram p = NativeProgram.of(List.of(view));
            CudaNative.runView(params + weightsOffsets[tensor], t.theta(), t.slotTable(), 0, t.numel(), p.codes()[0],
                    p.slots(), p.scalars(), engine.stream());
            copyAndSum(tensor, 0);
        }
    }

    /**
     * Copies float32 values of tensor {@code tensor} from the host into the trainer's parameters at
     * element {@code offset} (a view copied out before, as a sync step shares it among trainers).
     */
    public void writeParams(int tensor, long offset, ByteBuffer floats) {
        synchronized (engine) {
            engine.enter();
            engine.upload(params + weightsOffsets[tensor], offset, floats);
            written[tensor] = true;
            toSum[tensor] = true;
        }
    }

    /**
     * Waits until the view written is in the trainer's memory and returns, when it reached every
     * tensor, two sums per tensor in order: the 64-bit wrapping sums of its values' bit patterns
     * (signed 32-bit) at even and at odd positions; else none.
     */
    public long[] finish() {
        synchronized (engine) {
            engine.enter();
            for (int t = 0; t < numels.length; t++) {
                if (toSum[t]) {
                    copyAndSum(t, 0);
                }
            }
            for (boolean w : written) {
                if (!w) {
                    CudaNative.streamSynchronize(engine.stream());
                    return new long[0];
                }
            }
            long[] sums = new long[2 * numels.length];
            readBack(viewSums, sums.length, (buffer, from, n) -> buffer.asLongBuffer().get(sums, from, n));
            return sums;
        }
    }

    /** Unmaps the trainer's buffers (after the work issued on them is done); idempotent. */
    @Override
    public void close() {
        synchronized (engine) {
            if (closed) {
                return;
            }
            closed = true;
            // After the engine closed (the server shutting down) no CUDA call is made: the mappings
            // and the scratch go with the process.
            boolean live = !engine.isClosed();
            if (live) {
                engine.enter();
                CudaNative.streamSynchronize(engine.stream());
            }
            synchronized (OPENED) {
                for (String key : mapped) {
                    Opened opened = OPENED.get(key);
                    if (--opened.users == 0) {
                        OPENED.remove(key);
                        if (live) {
                            CudaNative.ipcClose(opened.pointer);
                        }
                    }
                }
            }
            mapped.clear();
            if (scratch != 0 && live) {
                CudaNative.free(scratch);
            }
            scratch = 0;
            if (viewSums != 0 && live) {
                CudaNative.free(viewSums);
            }
            viewSums = 0;
        }
    }
}
