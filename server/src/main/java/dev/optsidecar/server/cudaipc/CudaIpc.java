package dev.optsidecar.server.cudaipc;

import dev.optsidecar.proto.v1.CudaIpcBuffers;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.cuda.CudaEngine;
import dev.optsidecar.server.engine.cuda.IpcMapping;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.StepAssembly;
import dev.optsidecar.server.model.ViewReader;

import java.util.Arrays;
import java.util.Comparator;
import java.util.List;

/**
 * A Step stream's CUDA IPC (StepOpen.cuda_ipc): the trainer's buffers checked against the model
 * and mapped, gradients ingested from them on the device, views written into them.
 */
public final class CudaIpc {
    /** Bytes of a {@code cudaIpcMemHandle_t}. */
    static final int HANDLE_BYTES = 64;

    private CudaIpc() {}

    /**
     * Checks {@code buffers} against the model's tensors and maps them on {@code engine}.
     *
     * @throws OptError FAILED_PRECONDITION (CUDA_IPC_UNAVAILABLE) when the engine is not cuda or a
     *                  handle does not open; INVALID_ARGUMENT naming the field for a layout that does
     *                  not fit
     */
    public static IpcMapping open(Engine engine, CudaIpcBuffers buffers, long[] numels, String field) {
        if (!(engine instanceof CudaEngine cuda)) {
            throw OptError.precondition("%s: the server's engine is %s; CUDA IPC needs a server on the cuda engine"
                    + " (--engine cuda) on the trainer's GPU", field, engine.name())
                    .withReason(OptError.Reason.CUDA_IPC_UNAVAILABLE).withField(field);
        }
        checkHandle(buffers.getParamsHandle().size(), field + ".params_handle");
        checkHandle(buffers.getGradientsHandle().size(), field + ".gradients_handle");
        long[] weights = checkRegions(buffers.getWeightsOffsetsList(), numels, buffers.getParamsBytes(),
                field + ".weights_offsets", field + ".params_bytes");
        long[] gradients = checkRegions(buffers.getGradientOffsetsList(), numels, buffers.getGradientsBytes(),
                field + ".gradient_offsets", field + ".gradients_bytes");
        try {
            return IpcMapping.open(cuda, numels,
                    new IpcMapping.Buffer(buffers.getParamsHandle().toByteArray(), buffers.getParamsOffset(),
                            buffers.getParamsBytes()), weights,
                    new IpcMapping.Buffer(buffers.getGradientsHandle().toByteArray(), buffers.getGradientsOffset(),
                            buffers.getGradientsBytes()), gradients);
        } catch (IpcMapping.Refused e) {
            if (e.unopenable()) {
                throw OptError.precondition("%s.%s (is the trainer on the server's GPU, %s?)", field, e.getMessage(),
                        engine.device()).withReason(OptError.Reason.CUDA_IPC_UNAVAILABLE).withField(field);
            }
            throw OptError.invalid("%s.%s", field, e.getMessage()).withField(field);
        }
    }

    private static void checkHandle(int bytes, String field) {
        if (bytes != HANDLE_BYTES) {
            throw OptError.invalid("%s: a cudaIpcMemHandle_t is %d bytes, not %d", field, HANDLE_BYTES, bytes)
                    .withField(field);
        }
    }

    /** The offsets, checked: one per tensor, float-aligned, each region inside the buffer, none overlapping. */
    private static long[] checkRegions(List<Long> offsets, long[] numels, long bufferBytes, String field,
                                       String sizeField) {
        if (offsets.size() != numels.length) {
            throw OptError.invalid("%s: %d offsets for a model of %d tensors", field, offsets.size(), numels.length)
                    .withField(field);
        }
        long[] out = new long[numels.length];
        Integer[] order = new Integer[numels.length];
        for (int t = 0; t < numels.length; t++) {
            long offset = offsets.get(t);
            long bytes = numels[t] * Float.BYTES;
            if (offset < 0 || offset % Float.BYTES != 0) {
                throw OptError.invalid("%s[%d]: %s is not a multiple of 4 bytes", field, t,
                        Long.toUnsignedString(offset)).withField(field);
            }
            if (bufferBytes < 0 || offset > bufferBytes - bytes) {
                throw OptError.invalid("%s[%d]: tensor %d's %d bytes at %d end past the buffer's %s bytes (%s)", field,
                        t, t, bytes, offset, Long.toUnsignedString(bufferBytes), sizeField).withField(field);
            }
            out[t] = offset;
            order[t] = t;
        }
        Arrays.sort(order, Comparator.comparingLong(t -> out[t]));
        for (int k = 1; k < order.length; k++) {
            int before = order[k - 1];
            int t = order[k];
            if (out[before] + numels[before] * Float.BYTES > out[t]) {
                throw OptError.invalid("%s: the regions of tensors %d and %d overlap", field, before, t)
                        .withField(field);
            }
        }
        return out;
    }

    /**
     * Reads a commit's gradients (or, for a set-weights step, the weights in the trainer's
     * parameter buffer) from the device into the step; returns the first non-finite value's
     * description, or null.
     */
    public static String ingest(Model m, StepAssembly assembly, IpcMapping mapping, List<Integer> noGrad,
                                boolean setsWeights) {
        return m.addFromDevice(assembly, noGrad, setsWeights ? mapping.weights() : mapping.gradients());
    }

    /** A view written into a trainer's parameters: its version and the sums of each tensor's values' bits. */
    public record WrittenView(long version, long[] sums) {}

    /** Writes the reader's view into the trainer's parameters and waits for it; closes the reader. */
    public static WrittenView writeView(ViewReader reader, IpcMapping mapping) {
        try (reader) {
            mapping.startView();
            if (reader.streams()) {
                reader.writeTo(mapping);
            } else { // a copy shared by a sync step's trainers: from the host
                while (reader.hasNext()) {
                    WeightsChunk chunk = reader.next(StepAssembly.MAX_CHUNK_BYTES);
                    mapping.writeParams(chunk.getTensor(), chunk.getOffset(), chunk.getData().asReadOnlyByteBuffer());
                }
            }
            long[] sums = mapping.finish();
            return new WrittenView(reader.version(), sums);
        }
    }
}
