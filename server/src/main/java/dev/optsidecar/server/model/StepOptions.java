package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.OptError;

import java.util.List;
import java.util.Map;

/**
 * What a StepCommit asks for besides its chunks: its kind, the tensors it leaves alone, its
 * hyperparameter changes and the version its gradient was computed at.
 *
 * @param noGrad               tensor indexes without a gradient (or without new weights) this step
 * @param groupLr              new base learning rates by group name
 * @param groupHyperparameters other hyperparameter changes by group name
 * @param weightsView          a set-weights step's point (VIEW_TRAIN or VIEW_EVAL)
 * @param baseVersion          the version the gradient was computed at, or null for the current one
 * @param figures              the trainer's named scalars for this step (checked: see {@link ClientFigures})
 */
public record StepOptions(StepKind kind, List<Integer> noGrad, Map<String, Double> groupLr,
                          Map<String, Struct> groupHyperparameters, ViewKind weightsView, Long baseVersion,
                          Map<String, Double> figures) {

    /** A gradient step with no changes but learning rates. */
    public static StepOptions gradient(List<Integer> noGrad, Map<String, Double> groupLr, Long baseVersion) {
        return new StepOptions(StepKind.STEP_GRADIENT, noGrad, groupLr, Map.of(), ViewKind.VIEW_TRAIN, baseVersion,
                Map.of());
    }

    /** The commit's options, its enums checked (a number no StepKind or ViewKind has is INVALID_ARGUMENT). */
    public static StepOptions of(StepCommit c) {
        if (c.getKind() == StepKind.UNRECOGNIZED) {
            throw OptError.invalid("commit.kind: %d is not a StepKind (STEP_GRADIENT 0, STEP_SET_WEIGHTS 1)",
                    c.getKindValue());
        }
        ViewKind weightsView = c.getWeightsView() == ViewKind.VIEW_KIND_UNSPECIFIED ? ViewKind.VIEW_TRAIN
                : c.getWeightsView();
        if (weightsView != ViewKind.VIEW_TRAIN && c.getKind() != StepKind.STEP_SET_WEIGHTS) {
            throw OptError.invalid("commit.weights_view: only a STEP_SET_WEIGHTS step sends weights (got %s)",
                    c.getWeightsView() == ViewKind.UNRECOGNIZED ? c.getWeightsViewValue() : c.getWeightsView());
        }
        return new StepOptions(c.getKind(), c.getNoGradList(), c.getGroupLrMap(), c.getGroupHyperparametersMap(),
                weightsView, c.hasBaseVersion() ? c.getBaseVersion() : null,
                ClientFigures.check(c.getFiguresMap(), "commit.figures"));
    }

    public boolean setsWeights() {
        return kind == StepKind.STEP_SET_WEIGHTS;
    }
}
