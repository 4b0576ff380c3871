package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.Contribution;

import java.nio.ByteBuffer;
import java.util.List;
import java.util.Map;

/**
 * One step as the journal keeps it: who sent it, what it asked for, and its gradients, so that
 * replaying it on the state it was applied to gives bit-for-bit the same result.
 *
 * @param versionBefore the model version the step was applied to
 * @param noGrad        per tensor: true when the tensor had no gradient this step
 * @param groupLr       the step's new base learning rates by group name
 * @param contributions the (client, step) pairs the step combined
 * @param sumOfSquares  the gradients' squared norm as received (clipping uses it)
 * @param lrScale       the factor the learning rates were scaled by (a stale gradient's down-weighting)
 * @param staleness     how many versions old the gradient was (async mode), as its result reports it
 */
public record StepRecord(List<Contribution> contributions, long versionBefore, boolean[] noGrad,
                         Map<String, Double> groupLr, double sumOfSquares, double lrScale, long staleness,
                         Gradients gradients) {

    /** Reads the step's gradient of one tensor. */
    public interface Gradients {
        long numel(int tensor);

        /** Writes {@code count} gradient values of {@code tensor} from {@code offset} into {@code dst}. */
        void read(int tensor, long offset, int count, ByteBuffer dst);
    }
}
