package dev.optsidecar.server.engine;

/**
 * One optimizer step for one tensor, with every scalar (learning rate, bias corrections,
 * rectification) already computed in double and rounded once. An engine applies it to the tensor
 * chunk by chunk; each call must touch only elements {@code [from, to)}.
 *
 * <p>The CPU engine calls {@link #apply} on float[] blocks. A device engine keeps the same slots on
 * the device and runs the same arithmetic there, keyed by the implementing class and its scalars.
 */
public interface FusedStep {
    /**
     * Applies the step to elements {@code [from, to)} of one block.
     *
     * @param p     parameters, updated in place
     * @param g     gradient, read only
     * @param state the algorithm's state slots, in the order the algorithm declared them
     */
    void apply(float[] p, float[] g, float[][] state, int from, int to);
}
