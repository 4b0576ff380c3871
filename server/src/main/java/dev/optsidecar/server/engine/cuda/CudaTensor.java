package dev.optsidecar.server.engine.cuda;

import dev.optsidecar.server.engine.EngineTensor;
import dev.optsidecar.server.engine.Ingest;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * One tensor in device memory: parameters, the step gradient, the state slots (each its own
 * allocation, made once, zeroed) and a device table of the slots' addresses that the kernels
 * index. Trainers' gradient buffers are allocated when a trainer asks for one. Every method works
 * under the engine's lock, on its stream.
 */
final class CudaTensor implements EngineTensor {
    private final CudaEngine engine;
    private final long numel;
    private final int slotCount;
    private long theta;
    private long grad;
    private long[] slots;
    private long slotTable;
    /** Device addresses of trainers' gradient buffers by handle; 0: free. */
    private long[] gradientBuffers = new long[0];

    /** Allocates and zeroes everything; frees what it made and rethrows when the device runs out. */
    CudaTensor(CudaEngine engine, long numel, int slotCount) {
        this.engine = engine;
        this.numel = numel;
        this.slotCount = slotCount;
        List<Long> made = new ArrayList<>();
        try {
            theta = zeroed(made);
            grad = zeroed(made);
            slots = new long[slotCount];
            for (int s = 0; s < slotCount; s++) {
                slots[s] = zeroed(made);
            }
            slotTable = CudaNative.malloc(Math.max(1, slotCount) * (long) Long.BYTES);
            made.add(slotTable);
            CudaNative.writePointers(slotTable, slots, engine.stream());
        } catch (OutOfMemoryError | RuntimeException e) {
            for (long p : made) {
                CudaNative.free(p);
            }
            if (e instanceof OutOfMemoryError) {
                throw new OutOfMemoryError("out of GPU memory for a tensor of " + numel + " elements with "
                        + slotCount + " state slots (" + e.getMessage() + ")");
            }
            throw e;
        }
    }

    private long zeroed(List<Long> made) {
        long bytes = numel * Float.BYTES;
        long p = CudaNative.malloc(bytes);
        made.add(p);
        CudaNative.zero(p, bytes, engine.stream());
        return p;
    }

    long theta() {
        return theta;
    }

    long grad() {
        return grad;
    }

    long slotTable() {
        return slotTable;
    }

    /** Device address of state slot {@code slot}. */
    long slot(int slot) {
        return slots[slot];
    }

    /** Device address of gradient buffer {@code handle}. */
    long gradientBuffer(int handle) {
        return buffer(handle);
    }

    @Override
    public long numel() {
        return numel;
    }

    @Override
    public int slotCount() {
        return slotCount;
    }

    @Override
    public long bytes() {
        return engine.bytesFor(numel, slotCount);
    }

    @Override
    public void writeParams(long offset, ByteBuffer src) {
        synchronized (engine) {
            engine.enter();
            checkRange(offset, src.remaining() / Float.BYTES);
            engine.upload(theta, offset, src);
        }
    }

    @Override
    public void writeSlot(int slot, long offset, ByteBuffer src) {
        synchronized (engine) {
            engine.enter();
            checkRange(offset, src.remaining() / Float.BYTES);
            engine.upload(slots[slot], offset, src);
        }
    }

    @Override
    public Ingest writeGradient(long offset, ByteBuffer src) {
        synchronized (engine) {
            engine.enter();
            checkRange(offset, src.remaining() / Float.BYTES);
            return engine.uploadGradient(grad, offset, src, WireType.FLOAT32);
        }
    }

    @Override
    public int newGradientBuffer() {
        synchronized (engine) {
            engine.enter();
            int handle = 0;
            while (handle < gradientBuffers.length && gradientBuffers[handle] != 0) {
                handle++;
            }
            long bytes = numel * Float.BYTES;
            long p;
            try {
                p = CudaNative.malloc(bytes);
            } catch (OutOfMemoryError e) {
                throw new OutOfMemoryError("out of GPU memory for a gradient buffer of " + numel + " elements");
            }
            CudaNative.zero(p, bytes, engine.stream());
            if (handle == gradientBuffers.length) {
                gradientBuffers = Arrays.copyOf(gradientBuffers, handle + 1);
            }
            gradientBuffers[handle] = p;
            return handle;
        }
    }

    @Override
    public void freeGradientBuffer(int handle) {
        synchronized (engine) {
            engine.enter();
            CudaNative.streamSynchronize(engine.stream());
            CudaNative.free(gradientBuffers[handle]);
            gradientBuffers[handle] = 0;
        }
    }

    @Override
    public Ingest writeGradient(int handle, long offset, ByteBuffer src, WireType wire) {
        synchronized (engine) {
            engine.enter();
            checkRange(offset, src.remaining() / wire.bytes);
            return engine.uploadGradient(buffer(handle), offset, src, wire);
        }
    }

    @Override
    public void readGradient(int handle, long offset, int count, ByteBuffer dst) {
        synchronized (engine) {
            engine.enter();
            checkRange(offset, count);
            engine.download(buffer(handle), offset, count, dst, WireType.FLOAT32);
        }
    }

    @Override
    public void useGradient(int handle) {
        synchronized (engine) {
            long step = grad;
            grad = buffer(handle);
            gradientBuffers[handle] = step;
        }
    }

    @Override
    public double combineGradients(int[] handles, float divisor) {
        synchronized (engine) {
            engine.enter();
            long[] buffers = new long[handles.length];
            for (int h = 0; h < handles.length; h++) {
                buffers[h] = buffer(handles[h]);
            }
            return engine.combine(grad, buffers, divisor, numel);
        }
    }

    @Override
    public void readParams(long offset, int count, ByteBuffer dst, WireType wire) {
        synchronized (engine) {
            engine.enter();
            checkRange(offset, count);
            engine.download(theta, offset, count, dst, wire);
        }
    }

    @Override
    public void readGradient(long offset, int count, ByteBuffer dst) {
        synchronized (engine) {
            engine.enter();
            checkRange(offset, count);
            engine.download(grad, offset, count, dst, WireType.FLOAT32);
        }
    }

    @Override
    public void readSlot(int slot, long offset, int count, ByteBuffer dst, WireType wire) {
        synchronized (engine) {
            engine.enter();
            checkRange(offset, count);
            engine.download(slots[slot], offset, count, dst, wire);
        }
    }

    @Override
    public void readView(KernelCall view, long offset, int count, ByteBuffer dst, WireType wire) {
        synchronized (engine) {
            engine.enter();
            checkRange(offset, count);
            engine.downloadView(this, view, offset, count, dst, wire);
        }
    }

    @Override
    public void free() {
        synchronized (engine) {
            if (theta == 0) {
                return;
            }
            engine.enter();
            CudaNative.streamSynchronize(engine.stream());
            CudaNative.free(theta);
            CudaNative.free(grad);
            for (long s : slots) {
                CudaNative.free(s);
            }
            CudaNative.free(slotTable);
            for (long b : gradientBuffers) {
                if (b != 0) {
                    CudaNative.free(b);
                }
            }
            theta = 0;
            grad = 0;
            gradientBuffers = new long[0];
        }
    }

    private long buffer(int handle) {
        if (handle < 0 || handle >= gradientBuffers.length || gradientBuffers[handle] == 0) {
            throw new IllegalArgumentException("no gradient buffer " + handle);
        }
        return gradientBuffers[handle];
    }

    private void checkRange(long offset, long count) {
        if (offset < 0 || count < 0 || offset + count > numel) {
            throw new IndexOutOfBoundsException(
                    "range [" + offset + ", " + (offset + count) + ") outside tensor of " + numel + " elements");
        }
    }
}
