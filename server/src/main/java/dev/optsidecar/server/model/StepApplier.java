package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.GroupStep;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.optim.StepPlan;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The one path by which a step changes a model, whether it arrives live or is replayed from the
 * journal: the step, as a {@link StepRecord}, is journaled, its learning rates are set, each
 * group's step is planned and run, and each contributor's result is kept in the ledger. A live step
 * builds the record it journals ({@link #live}) and applies exactly that record; a replay applies
 * the record read back, so the two cannot drift apart. Runs under the model's write lock.
 */
final class StepApplier {
    /** Runs a planned step on the engine and advances the model's counters; null or the update norm. */
    @FunctionalInterface
    interface EngineStep {
        Double run(boolean[] skip, Map<GroupState, StepPlan> plans);
    }

    private final Model model;
    private final List<TensorEntry> tensors;
    private final List<GroupState> groups;
    private final Training training;
    private final EngineStep engineStep;
    /** A step's gradient where it lies when it is applied: the tensors' step buffers. */
    private final StepRecord.Gradients stepBuffers;
    /** Where steps are journaled before they are applied; null for nowhere. */
    private StepLog log;
    /** True while a journaled step is replayed: it is not a step the server took now, so metrics skip it. */
    private boolean replaying;

    StepApplier(Model model, EngineStep engineStep) {
        this.model = model;
        this.tensors = model.tensors();
        this.groups = model.groups();
        this.training = model.training();
        this.engineStep = engineStep;
        this.stepBuffers = new StepRecord.Gradients() {
            @Override
            public long numel(int tensor) {
                return tensors.get(tensor).numel;
            }

            @Override
            public void read(int tensor, long offset, int count, ByteBuffer dst) {
                tensors.get(tensor).storage.readGradient(offset, count, dst);
            }
        };
    }

    void setLog(StepLog log) {
        this.log = log;
    }

    boolean journals() {
        return log != null;
    }

    /** The record of a gradient step whose gradient is in the step buffers, to be applied to the current version. */
    StepRecord live(List<Contribution> contributions, boolean[] noGrad, Map<String, Struct> groupChanges,
                    double sumOfSquares, double lrScale, long staleness) {
        return new StepRecord(contributions, model.version(), StepKind.STEP_GRADIENT, ViewKind.VIEW_TRAIN, noGrad,
                Map.copyOf(groupChanges), sumOfSquares, lrScale, staleness, stepBuffers);
    }

    /** The record of a set-weights step whose weights are in the step buffers. */
    StepRecord liveWeights(Contribution who, ViewKind weightsView, boolean[] keep, Map<String, Struct> groupChanges,
                           long staleness) {
        return new StepRecord(List.of(who), model.version(), StepKind.STEP_SET_WEIGHTS, weightsView, keep,
                Map.copyOf(groupChanges), 0, 1.0, staleness, stepBuffers);
    }

    /**
     * Journals and applies a step whose gradient is in the step buffers, records each contributor's
     * result in the ledger, and returns the result (with the new version) labelled {@code label}.
     */
    StepResult apply(StepRecord step, View label) {
        List<GroupChange> changes = resolveChanges(step.groupChanges());
        if (step.setsWeights()) {
            checkWeightsView(step.weightsView());
        }
        if (log != null) {
            log.append(step);
        }
        changes.forEach(GroupChange::apply);
        StepResult result = step.setsWeights() ? setWeights(step, label)
                : run(step.contributions(), step.noGrad(), step.sumOfSquares(), step.lrScale(), step.staleness(),
                false, label);
        remember(step.contributions(), result);
        if (!replaying) {
            recordMetrics(result);
        }
        return result;
    }

    /**
     * A step the non-finite policy skips: answered with the figures it would have had, recorded in
     * the ledger, but neither journaled nor applied.
     */
    StepResult skip(Contribution who, boolean[] noGrad, double sumOfSquares, long staleness, View label) {
        StepResult result = run(List.of(who), noGrad, sumOfSquares, 1.0, staleness, true, label);
        remember(List.of(who), result);
        return result;
    }

    /**
     * Applies a step read back from the journal exactly as it was applied the first time: the
     * same gradient, learning rates, skipped tensors, gradient norm and contributors, on the same
     * version.
     */
    void replay(StepRecord step) {
        if (step.versionBefore() != model.version()) {
            throw OptError.dataLoss("journal of model '%s': a step was applied to version %d, but the model is at"
                    + " version %d", Echo.of(model.name()), step.versionBefore(), model.version());
        }
        checkReplayable(step);
        ByteBuffer chunk = ByteBuffer.allocate(StepAssembly.MAX_CHUNK_BYTES).order(ByteOrder.LITTLE_ENDIAN);
        for (TensorEntry t : tensors) {
            if (step.noGrad()[t.index]) {
                continue;
            }
            for (long offset = 0; offset < t.numel; ) {
                int count = (int) Math.min(StepAssembly.MAX_CHUNK_BYTES / Float.BYTES, t.numel - offset);
                chunk.clear();
                step.gradients().read(t.index, offset, count, chunk);
                chunk.flip();
                t.storage.writeGradient(offset, chunk);
                offset += count;
            }
        }
        replaying = true;
        try {
            apply(step, Model.NO_VIEW);
        } finally {
            replaying = false;
        }
    }

    /** What /metrics shows of a step applied now. */
    private void recordMetrics(StepResult result) {
        var metrics = model.metrics();
        metrics.stepApplied(model.name());
        if (result.getKind() != StepKind.STEP_SET_WEIGHTS) {
            Map<String, Double> lrs = new LinkedHashMap<>();
            result.getGroupsList().forEach(g -> lrs.put(g.getGroup(), g.getLr()));
            metrics.stepFigures(model.name(), result.getGradNorm(), result.getStaleness(), lrs);
        }
    }

    /**
     * Refuses a record that does not fit this model, with DATA_LOSS, before anything is touched: a
     * step that failed halfway would leave weights and state that no version had.
     */
    private void checkReplayable(StepRecord step) {
        String what = "journal of model '" + Echo.of(model.name()) + "', the step to version " + (model.version() + 1);
        if (step.contributions().isEmpty()) {
            throw OptError.dataLoss("%s: it names no contributor", what);
        }
        if (step.noGrad().length != tensors.size()) {
            throw OptError.dataLoss("%s: it has %d tensors, the model %d", what, step.noGrad().length, tensors.size());
        }
        for (TensorEntry t : tensors) {
            if (!step.noGrad()[t.index] && step.gradients().numel(t.index) != t.numel) {
                throw OptError.dataLoss("%s: its gradient of %s has %d elements", what, t.describe(),
                        step.gradients().numel(t.index));
            }
        }
        if (!(step.sumOfSquares() >= 0) || Double.isInfinite(step.sumOfSquares())) {
            throw OptError.dataLoss("%s: its squared gradient norm is %s", what, step.sumOfSquares());
        }
        if (!(step.lrScale() > 0 && step.lrScale() <= 1)) {
            throw OptError.dataLoss("%s: its learning-rate scale is %s", what, step.lrScale());
        }
        if (step.staleness() < 0 || step.staleness() > step.versionBefore()) {
            throw OptError.dataLoss("%s: its staleness is %d", what, step.staleness());
        }
        try {
            resolveChanges(step.groupChanges());
            if (step.setsWeights()) {
                checkWeightsView(step.weightsView());
            }
        } catch (OptError e) {
            throw OptError.dataLoss("%s: %s", what, e.getMessage());
        }
    }

    /** Plans each group's step and, unless it is skipped, runs it; returns its result with the model's version. */
    private StepResult run(List<Contribution> contributions, boolean[] skip, double sumOfSquares, double lrScale,
                           long staleness, boolean skipped, View label) {
        double gradNorm = Math.sqrt(sumOfSquares);
        double clip = training.clipGradNorm() > 0
                ? Math.min(1.0, training.clipGradNorm() / (gradNorm + 1e-6)) : 1.0;
        StepResult.Builder result = header(contributions, skipped, label, staleness, lrScale)
                .setGradNorm(gradNorm)
                .setClipCoefficient(skipped ? 1.0 : clip);
        Map<GroupState, StepPlan> plans = plan(result, lrScale, (float) clip, skipped);
        if (skipped) {
            return result.setVersion(model.version()).build();
        }
        long started = System.nanoTime();
        Double updateNorm = engineStep.run(skip, plans);
        return applied(result, contributions, staleness, updateNorm, (System.nanoTime() - started) / 1e9);
    }

    /** Runs a planned step from where its gradient lies: the gradient's sum of squares, or null if it refused the step. */
    @FunctionalInterface
    interface InPlacePass {
        Double run(Map<GroupState, StepPlan> plans);
    }

    /**
     * Applies a gradient step of one trainer whose pass reads the gradient where the trainer left
     * it (a shared segment: {@link Model#commitFromSegment}), so its norm is known only after the
     * pass: only for a model that clips nothing (the clip coefficient is 1 before the norm is known)
     * and journals nothing (a journal record holds the gradient, which this step never copies).
     *
     * @return the result, or null when the pass refused the step, which then changed nothing
     */
    StepResult applyInPlace(Contribution who, Map<String, Struct> groupChanges, View label, InPlacePass pass) {
        if (log != null || training.clipGradNorm() > 0) {
            throw new IllegalStateException("a step applied in place needs a model without journal or clipping");
        }
        List<GroupChange> changes = resolveChanges(groupChanges);
        List<Runnable> undo = changes.stream().map(GroupChange::undo).toList();
        changes.forEach(GroupChange::apply);
        StepResult.Builder result = header(List.of(who), false, label, 0, 1.0).setClipCoefficient(1.0);
        Map<GroupState, StepPlan> plans = plan(result, 1.0, 1f, false);
        long started = System.nanoTime();
        Double sumOfSquares = pass.run(plans);
        if (sumOfSquares == null) {
            undo.forEach(Runnable::run);
            return null;
        }
        result.setGradNorm(Math.sqrt(sumOfSquares));
        StepResult applied = applied(result, List.of(who), 0, null, (System.nanoTime() - started) / 1e9);
        remember(List.of(who), applied);
        recordMetrics(applied);
        return applied;
    }

    private static StepResult.Builder header(List<Contribution> contributions, boolean skipped, View label,
                                             long staleness, double lrScale) {
        return StepResult.newBuilder()
                .setStepId(contributions.get(0).getStepId())
                .setSkipped(skipped)
                .setView(label)
                .setStaleness(staleness)
                .setLrScale(lrScale);
    }

    /** Each group's plan for this step, reported in {@code result}. */
    private Map<GroupState, StepPlan> plan(StepResult.Builder result, double lrScale, float clip, boolean skipped) {
        Map<GroupState, StepPlan> plans = new LinkedHashMap<>();
        for (GroupState g : groups) {
            double lr = lrFor(g) * lrScale;
            StepPlan plan = g.algorithm.plan(g.scalars, lr, clip);
            plans.put(g, plan);
            result.addGroups(GroupStep.newBuilder()
                    .setGroup(g.name)
                    .setLr(lr)
                    .setEffectiveLr(plan.effectiveLr())
                    .setAveragingWeight(plan.averagingWeight())
                    .putAllScalars((skipped ? g.scalars : plan.after()).asMap())
                    .setHyperparameters(g.effective()));
        }
        return plans;
    }

    /** The result of a step the engine has run, recorded in the model's history and status. */
    private StepResult applied(StepResult.Builder result, List<Contribution> contributions, long staleness,
                               Double updateNorm, double stepSeconds) {
        if (updateNorm != null) {
            result.setUpdateNorm(updateNorm);
        }
        result.addAllContributions(contributions);
        model.history().record(model.version(), contributions);
        model.status().applied(contributions.size(), staleness);
        StepResult applied = result.setVersion(model.version()).build();
        model.figureHistory().recordStep(applied, stepSeconds);
        return applied;
    }

    /**
     * Sets the weights of the tensors not in {@code step.noGrad()} to the step's values (see
     * {@link Model#setWeights}); the result reports each group as it stands, nothing optimized.
     */
    private StepResult setWeights(StepRecord step, View label) {
        model.setWeights(step.noGrad(), step.weightsView() == ViewKind.VIEW_EVAL);
        StepResult.Builder result = StepResult.newBuilder()
                .setStepId(step.contributions().get(0).getStepId())
                .setKind(StepKind.STEP_SET_WEIGHTS)
                .setView(label)
                .setClipCoefficient(1.0)
                .setStaleness(step.staleness())
                .setLrScale(1.0)
                .addAllContributions(step.contributions());
        for (GroupState g : groups) {
            double lr = lrFor(g);
            result.addGroups(GroupStep.newBuilder().setGroup(g.name).setLr(lr).setEffectiveLr(lr)
                    .setAveragingWeight(Double.NaN).putAllScalars(g.scalars.asMap())
                    .setHyperparameters(g.effective()));
        }
        model.history().record(model.version(), step.contributions());
        StepResult applied = result.setVersion(model.version()).build();
        model.figureHistory().recordStep(applied, 0);
        return applied;
    }

    /** Weights at the eval point can be set only where the algorithm can turn them back into train weights. */
    void checkWeightsView(ViewKind weightsView) {
        switch (weightsView) {
            case VIEW_KIND_UNSPECIFIED, VIEW_TRAIN -> { }
            case VIEW_EVAL -> {
                if (groups.get(0).algorithm.trainFromEval() == null) {
                    throw OptError.invalid("commit.weights_view: %s keeps no eval point that its train weights can be"
                            + " recomputed from (only Schedule-Free's x); send the train weights",
                            model.config().getAlgorithm());
                }
            }
            default -> throw OptError.invalid("commit.weights_view: weights can be set at VIEW_TRAIN or VIEW_EVAL,"
                    + " not %s", weightsView);
        }
    }

    private double lrFor(GroupState g) {
        return model.lrFor(g);
    }

    /** Each contributor's own result, kept so that a retry of its step is answered, not applied again. */
    private void remember(List<Contribution> contributions, StepResult result) {
        StepResult stored = result.toBuilder().clearView().clearContributions().build(); // History keeps those
        for (Contribution c : contributions) {
            model.ledger().record(c.getClientId(), c.getStepId(), stored.toBuilder().setStepId(c.getStepId()).build());
        }
    }

    /** A step's hyperparameter changes, validated against the groups' current values. */
    List<GroupChange> resolveChanges(Map<String, Struct> groupChanges) {
        return GroupChange.resolve(groups, model.name(), groupChanges);
    }
}
