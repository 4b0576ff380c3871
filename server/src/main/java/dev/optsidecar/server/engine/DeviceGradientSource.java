package dev.optsidecar.server.engine;

import java.util.List;

/**
 * Gradients in device memory outside the engine's own (a trainer's, mapped through CUDA IPC),
 * copied into trainers' gradient buffers on the device with the checks of a host ingest.
 */
public interface DeviceGradientSource {
    /** Tensor {@code tensor}'s gradient goes into gradient buffer {@code handle} of {@code storage}. */
    record Target(int tensor, EngineTensor storage, int handle) {}

    /**
     * Copies every target's gradient into its buffer and returns, for each target in order and
     * each of its pieces of {@code pieceElements} elements in order, the {@link Ingest} a host
     * ingest of that piece as one chunk would return (the same sum of squares, to the bit).
     */
    List<Ingest[]> ingest(List<Target> targets, int pieceElements);
}
