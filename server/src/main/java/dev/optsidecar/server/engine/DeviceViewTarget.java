package dev.optsidecar.server.engine;

import dev.optsidecar.server.engine.kernel.KernelCall;

/**
 * Device memory outside the engine's own that a view is written into, tensor by tensor, without
 * leaving the device (a trainer's parameters mapped through CUDA IPC). Each call writes the whole
 * tensor; the writes are complete when the target says so.
 */
public interface DeviceViewTarget {
    /** Tensor {@code tensor}'s parameters. */
    void params(int tensor, EngineTensor storage);

    /** Tensor {@code tensor}'s state slot {@code slot}. */
    void slot(int tensor, EngineTensor storage, int slot);

    /** View kernel {@code view} of tensor {@code tensor}, computed on the device. */
    void view(int tensor, EngineTensor storage, KernelCall view);
}
