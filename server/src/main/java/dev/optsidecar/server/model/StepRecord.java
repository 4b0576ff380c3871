package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.ViewKind;

import java.nio.ByteBuffer;
import java.util.List;
import java.util.Map;

/**
 * One step as the journal keeps it: who sent it, what it asked for, and its gradients (or, for a
 * set-weights step, its weights), so that replaying it on the state it was applied to gives bit
 * for bit the same result.
 *
 * @param versionBefore the model version the step was applied to
 * @param kind          gradients to apply, or weights to set
 * @param weightsView   a set-weights step's point: VIEW_TRAIN, or VIEW_EVAL for Schedule-Free's x
 * @param noGrad        per tensor: true when the tensor had no gradient (or no new weights) this step
 * @param groupChanges  the step's hyperparameter changes by group name, learning rates included
 *                      (see {@link GroupChange#combine})
 * @param contributions the (client, step) pairs the step combined
 * @param sumOfSquares  the gradients' squared norm as received (clipping uses it); 0 for weights
 * @param lrScale       the factor the learning rates were scaled by (a stale gradient's down-weighting)
 * @param staleness     how many versions old the gradient was (async mode), as its result reports it
 */
public record StepRecord(List<Contribution> contributions, long versionBefore, StepKind kind, ViewKind weightsView,
                         boolean[] noGrad, Map<String, Struct> groupChanges, double sumOfSquares, double lrScale,
                         long staleness, Gradients gradients) {

    /** Reads the step's gradient of one tensor. */
    public interface Gradients {
        long numel(int tensor);

        /** Writes {@code count} gradient values of {@code tensor} from {@code offset} into {@code dst}. */
        void read(int tensor, long offset, int count, ByteBuffer dst);
    }

    public boolean setsWeights() {
        return kind == StepKind.STEP_SET_WEIGHTS;
    }
}
