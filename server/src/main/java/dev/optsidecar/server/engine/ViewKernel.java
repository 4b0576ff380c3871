package dev.optsidecar.server.engine;

/**
 * A view computed from a tensor's parameters and state rather than stored, such as Schedule-Free's
 * eval point x = lerp(y, z, 1 − 1/β). It is computed into the outgoing buffer and never written
 * back, so reading a view cannot disturb the trajectory.
 */
public interface ViewKernel {
    /** Writes the view of elements {@code [from, to)} of one block into {@code out[outOffset...]}. */
    void compute(float[] p, float[][] state, int from, int to, float[] out, int outOffset);
}
