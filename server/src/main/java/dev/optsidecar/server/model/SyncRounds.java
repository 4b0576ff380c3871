package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.Combine;
import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.SyncOptions;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import java.util.logging.Logger;

/**
 * Sync mode: a step is applied once k trainers (by default, every attached one) have sent their
 * gradient for it, or, after the straggler timeout, min_k. The gradients are combined (sum or
 * mean) into one step, and every contributor gets the same result and the same weights. Runs under
 * the model's write lock; a straggler timeout takes it on the server's timer thread.
 */
final class SyncRounds {
    private static final Logger LOG = Logger.getLogger(SyncRounds.class.getName());
    private final Model model;
    private final Trainers trainers;
    private final StepApplier steps;
    private final CoordinationStatusBuilder status;
    private final SyncOptions options;
    /** Runs the straggler timeouts. */
    private final ScheduledExecutorService timers;
    /** The step gathering contributions now, or null. */
    private SyncRound round;

    SyncRounds(Model model, Trainers trainers, StepApplier steps, CoordinationStatusBuilder status,
               SyncOptions options, ScheduledExecutorService timers) {
        this.model = model;
        this.trainers = trainers;
        this.steps = steps;
        this.status = status;
        this.options = options;
        this.timers = timers;
    }

    /** Adds step {@code a} to the open round and applies the round if it is now due. */
    CompletableFuture<Model.StepOutcome> contribute(StepAssembly a, boolean[] skip, Map<String, Struct> groupChanges,
                                                    Model.ResolvedView view) {
        if (round != null && !groupChanges.isEmpty()) {
            // The round applies its contributors' changes merged: refuse one that does not merge
            // into a valid whole now rather than fail the whole round later.
            List<Map<String, Struct>> all = new ArrayList<>(round.contributions.stream()
                    .map(SyncRound.Contribution::groupChanges).toList());
            all.add(groupChanges);
            GroupChange.resolve(model.groups(), model.name(), GroupChange.merge(all));
        }
        CompletableFuture<Model.StepOutcome> result = new CompletableFuture<>();
        SyncRound.Contribution c = new SyncRound.Contribution(a.session(), a.stepId(), skip, Map.copyOf(groupChanges),
                view, result);
        trainers.contributing(c);
        if (round == null) {
            round = new SyncRound(model.version() + 1);
            int timeout = options.getTimeoutMs();
            if (timeout > 0) {
                SyncRound r = round;
                r.timer = timers.schedule(() -> straggled(r), timeout, TimeUnit.MILLISECONDS);
            }
        }
        round.contributions.add(c);
        applyIfDue();
        return result;
    }

    /** A step whose round was applied without it (its base version is behind): answered as late, nothing applied. */
    StepResult late(StepAssembly a, View label) {
        status.late++;
        StepResult result = StepResult.newBuilder().setStepId(a.stepId()).setVersion(model.version()).setLate(true)
                .setView(label).setLrScale(1.0).build();
        model.ledger().record(a.clientId(), a.stepId(), result.toBuilder().clearView().build());
        return result;
    }

    /** Contributions to the open round, waiting for it to be applied. */
    int waiting() {
        return round == null ? 0 : round.contributions.size();
    }

    /** The model is deleted: the open round's contributors are told so. */
    void cancel() {
        SyncRound r = round;
        round = null;
        if (r != null) {
            if (r.timer != null) {
                r.timer.cancel(false);
            }
            OptError gone = OptError.notFound("model '%s' was deleted while its sync step waited for contributions",
                    Echo.of(model.name())).withReason(OptError.Reason.MODEL_NOT_FOUND).with("model", Echo.of(model.name()));
            r.contributions.forEach(c -> c.result().completeExceptionally(gone));
        }
    }

    /** The straggler timeout of round {@code r}: from now on it applies with min_k contributions. */
    private void straggled(SyncRound r) {
        long stamp = model.writeLock();
        try {
            if (round == r && !model.isDeleted()) {
                r.timedOut = true;
                applyIfDue();
            }
        } catch (RuntimeException e) {
            LOG.log(Level.WARNING, "model '" + model.name() + "': applying a sync step after its straggler timeout"
                    + " failed", e);
        } finally {
            model.unlockWrite(stamp);
        }
    }

    /** Applies the open round if it has its contributions: k, every attached trainer, or min_k after the timeout. */
    void applyIfDue() {
        SyncRound r = round;
        if (r == null || r.contributions.isEmpty()) {
            return;
        }
        int k = options.getK();
        int target = k > 0 ? k : Math.max(1, trainers.attached().size());
        int minK = Math.max(1, options.getMinK());
        int have = r.contributions.size();
        if (have < target && !(r.timedOut && have >= minK)) {
            return;
        }
        round = null;
        if (r.timer != null) {
            r.timer.cancel(false);
        }
        if (have < target) {
            status.timedOut++;
        }
        List<SyncRound.Contribution> parts = new ArrayList<>(r.contributions);
        parts.sort(Comparator.comparing(c -> c.session().key));
        try {
            model.checkAcceptingSteps();
            apply(parts);
        } catch (RuntimeException e) {
            trainers.contributed(parts);
            parts.forEach(c -> c.result().completeExceptionally(e));
        }
    }

    /** Combines a round's contributions into the step gradient and applies it; every contributor gets the same weights. */
    private void apply(List<SyncRound.Contribution> parts) {
        boolean mean = options.getCombine() == Combine.COMBINE_MEAN;
        List<TensorEntry> tensors = model.tensors();
        boolean[] skip = new boolean[tensors.size()];
        double squares = 0;
        for (TensorEntry t : tensors) {
            int[] handles = parts.stream().filter(c -> !c.noGrad()[t.index])
                    .mapToInt(c -> c.session().handles[t.index]).toArray();
            if (handles.length == 0) {
                skip[t.index] = true;
                continue;
            }
            // A trainer without this tensor's gradient contributes zeros, as in data-parallel training.
            squares += t.storage.combineGradients(handles, mean ? parts.size() : 1f);
        }
        List<Contribution> who = parts.stream().map(c -> c.session().contribution(c.stepId())).toList();
        Map<String, Struct> changes = GroupChange.merge(parts.stream().map(SyncRound.Contribution::groupChanges).toList());
        StepResult common = steps.apply(steps.live(who, skip, changes, squares, 1.0, 0), Model.NO_VIEW);
        trainers.contributed(parts);
        handOut(parts, common);
    }

    /** Completes each contributor's step with the common result and its view of the new weights. */
    private void handOut(List<SyncRound.Contribution> parts, StepResult common) {
        // The round holds each copy until every contributor has its reader: a contributor whose
        // weights go out before the next reader is made would otherwise give the copy's memory
        // back once for each time the count of readers fell to zero.
        Map<List<Object>, ViewReader.Published> copies = new HashMap<>(); // by view label and wire type
        long version = model.version();
        try {
            for (SyncRound.Contribution c : parts) {
                StepResult mine = common.toBuilder().setStepId(c.stepId())
                        .setView(c.view() == null ? Model.NO_VIEW : c.view().label()).build();
                ViewReader weights = null;
                if (c.view() != null) {
                    List<Object> key = List.of(c.view().label(), c.view().wire());
                    ViewReader.Published shared = copies.get(key);
                    if (shared == null) {
                        shared = ViewReader.copyOut(model, c.view(),
                                Views.select(model, c.view(), List.of(), "commit.view"), version);
                        if (shared == null) {
                            throw OptError.exhausted("model '%s': no memory left under the limit to copy out the new"
                                    + " weights for the sync step's %d contributors", Echo.of(model.name()), parts.size())
                                    .withReason(OptError.Reason.MEMORY_LIMIT).with("model", Echo.of(model.name()));
                        }
                        shared.retain();
                        copies.put(key, shared);
                    }
                    weights = new ViewReader(model, c.view().label(), version, shared);
                }
                c.result().complete(new Model.StepOutcome(mine, weights));
            }
        } finally {
            copies.values().forEach(shared -> shared.release(model));
        }
    }
}
