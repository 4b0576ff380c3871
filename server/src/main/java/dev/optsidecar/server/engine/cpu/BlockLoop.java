package dev.optsidecar.server.engine.cpu;

/**
 * A kernel call bound to the CPU: a loop over elements {@code [from, to)} of one block of a
 * tensor's float[] arrays, with the call's scalars already in locals.
 */
@FunctionalInterface
public interface BlockLoop {
    /**
     * @param p     parameters, updated in place
     * @param g     gradient, read only
     * @param state the tensor's state slots by index
     */
    void apply(float[] p, float[] g, float[][] state, int from, int to);
}
