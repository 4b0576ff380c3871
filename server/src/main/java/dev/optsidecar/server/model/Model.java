package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.GroupStep;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.TensorStep;
import dev.optsidecar.server.optim.Lookahead;
import dev.optsidecar.server.optim.StepPlan;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.atomic.DoubleAdder;
import java.util.concurrent.locks.StampedLock;

/**
 * A registered model: ordered named tensors, parameter groups, one optimizer configuration and
 * the version (steps applied). Steps take the write lock; views are read under the read lock, so
 * a reader always sees whole steps. One step is assembled at a time, into the tensors' gradient
 * buffers.
 */
public final class Model {
    private static final View NO_VIEW = View.newBuilder().setKind(ViewKind.VIEW_NONE).build();
    private final String name;
    private final OptimizerConfig config;
    private final List<TensorEntry> tensors;
    private final List<GroupState> groups;
    private final Engine engine;
    private final long memoryBytes;
    private final StampedLock lock = new StampedLock();
    private final AtomicReference<StepAssembly> assembling = new AtomicReference<>();
    private final Training training;
    private final ModelSpec spec;
    private final ClientLedger ledger = new ClientLedger();
    private final StepRecord.Gradients gradients;
    private volatile long version;
    private volatile boolean deleted;
    private volatile boolean acceptingSteps = true;
    private StepLog log;
    /** Identifies this model's run across snapshots and journals (a new one per registration). */
    private String run = java.util.UUID.randomUUID().toString();
    /** Scheduler steps taken (LambdaLR's last_epoch): the schedule's position. */
    long scheduleStep;
    /** Updates each EMA shadow has had (AveragedModel's n_averaged). */
    final long[] emaUpdates;
    /** Lookahead's inner steps since its last synchronisation. */
    long lookaheadStep;

    Model(ModelSpec spec, List<TensorEntry> tensors, List<GroupState> groups,
          Training training, Engine engine, long memoryBytes) {
        this.spec = spec.toBuilder().clearState().build();
        this.name = spec.getName();
        this.config = spec.getOptimizer();
        this.tensors = Collections.unmodifiableList(tensors);
        this.groups = Collections.unmodifiableList(groups);
        this.training = training;
        this.engine = engine;
        this.memoryBytes = memoryBytes;
        this.emaUpdates = new long[training.ema().size()];
        this.gradients = new StepRecord.Gradients() {
            @Override
            public long numel(int tensor) {
                return Model.this.tensors.get(tensor).numel;
            }

            @Override
            public void read(int tensor, long offset, int count, java.nio.ByteBuffer dst) {
                Model.this.tensors.get(tensor).storage.readGradient(offset, count, dst);
            }
        };
    }

    /** The spec this model was created from, without restore state. */
    public ModelSpec spec() {
        return spec;
    }

    public String run() {
        return run;
    }

    void setRun(String run) {
        this.run = run;
    }

    /** Starts a new timeline (a restore of an older snapshot), so journals of the old one are never chained onto it. */
    public void startNewRun() {
        this.run = java.util.UUID.randomUUID().toString();
    }

    ClientLedger ledger() {
        return ledger;
    }

    public String name() {
        return name;
    }

    public long version() {
        return version;
    }

    public long memoryBytes() {
        return memoryBytes;
    }

    public NonFinitePolicy nonFinitePolicy() {
        return config.getNonFinite();
    }

    public int tensorCount() {
        return tensors.size();
    }

    OptimizerConfig config() {
        return config;
    }

    List<TensorEntry> tensors() {
        return tensors;
    }

    List<GroupState> groups() {
        return groups;
    }

    Training training() {
        return training;
    }

    Engine engine() {
        return engine;
    }

    void setVersion(long version) {
        this.version = version;
    }

    /** The views this model serves, labelled as responses label them. */
    public List<View> views() {
        return Views.available(this);
    }

    /**
     * Resolves a requested view: unspecified means train; a view the model lacks is
     * INVALID_ARGUMENT, never silently the train view.
     *
     * @return the resolved view, or null for VIEW_NONE when {@code allowNone}
     */
    public ResolvedView resolveView(View requested, String field, boolean allowNone) {
        return Views.resolve(this, requested, field, allowNone);
    }

    /**
     * Starts assembling a step. Only one step is assembled at a time, because its gradients are
     * written straight into the tensors' gradient buffers.
     */
    public StepAssembly openStep(String clientId, long stepId) {
        checkLive();
        StepAssembly a = new StepAssembly(tensors, clientId, stepId);
        while (!assembling.compareAndSet(null, a)) {
            StepAssembly current = assembling.get();
            // A client's retry replaces its own step left half-sent by a connection that died.
            if (current != null && !clientId.isEmpty() && clientId.equals(current.clientId())) {
                if (assembling.compareAndSet(current, a)) {
                    break;
                }
            } else if (current != null) {
                throw OptError.aborted("model '%s' is assembling another client's step; retry when it is done", name);
            }
        }
        return a;
    }

    /**
     * The stored result when step {@code stepId} is client {@code clientId}'s last applied step (a
     * retry), else null; FAILED_PRECONDITION when it is older.
     */
    public StepResult appliedResult(String clientId, long stepId) {
        return underReadLock(() -> ledger.applied(name, clientId, stepId));
    }

    /** Stops accepting steps (graceful shutdown): a later commit is UNAVAILABLE. Waits for a step being applied. */
    public void stopAcceptingSteps() {
        long stamp = lock.writeLock();
        acceptingSteps = false;
        lock.unlockWrite(stamp);
    }

    private void checkAcceptingSteps() {
        if (!acceptingSteps) {
            throw OptError.unavailable("model '%s': the server is shutting down; retry the step when it is back", name);
        }
    }

    /** Sets where steps are journaled before they are applied; null for nowhere. */
    public void setStepLog(StepLog log) {
        long stamp = lock.writeLock();
        this.log = log;
        lock.unlockWrite(stamp);
    }

    /**
     * The id of the step being assembled, if any: its chunks are arriving but it has not yet been
     * committed or abandoned. For diagnostics and tests; the answer may be stale by the time it is read.
     */
    public java.util.OptionalLong assemblingStep() {
        StepAssembly a = assembling.get();
        return a == null ? java.util.OptionalLong.empty() : java.util.OptionalLong.of(a.stepId());
    }

    /** Abandons an assembly; weights and state are untouched. */
    public void abandon(StepAssembly a) {
        assembling.compareAndSet(a, null);
    }

    /**
     * Copies one gradient chunk into place; returns a non-finite description when one arrived.
     * The copy runs under the read lock, so a Delete (which frees the buffers under the write lock)
     * cannot free them mid-copy, and a chunk for a model deleted mid-step is NOT_FOUND.
     */
    public String addChunk(StepAssembly a, int tensor, long offset, java.nio.ByteBuffer data) {
        checkLive();
        if (assembling.get() != a) {
            throw OptError.aborted("step %d of model '%s' is no longer being assembled", a.stepId(), name);
        }
        // tryReadLock first: it ignores queued writers, so a Delete waiting for this stream's own
        // weights transfer cannot block the stream. It fails only while a Delete holds the write lock
        // (a commit needs this assembly), which ends without waiting on anything, so blocking is safe.
        long stamp = lock.tryReadLock();
        if (stamp == 0) {
            stamp = lock.readLock();
        }
        try {
            checkLive();
            return a.add(tensor, offset, data);
        } finally {
            lock.unlockRead(stamp);
        }
    }

    /**
     * Validates and applies an assembled step, then opens the requested view of the result under
     * the read lock, so the weights streamed back are exactly those of the new version. A step the
     * client's ledger shows as already applied (a retry that raced its original) is answered with
     * the stored result instead.
     *
     * @param noGrad  tensor indexes without a gradient this step
     * @param groupLr new base learning rates by group name
     * @param view    resolved view to return, or null for none
     */
    public StepOutcome commit(StepAssembly a, List<Integer> noGrad, Map<String, Double> groupLr,
                              ResolvedView view, NonFinitePolicy policy) {
        try {
            if (assembling.get() != a) {
                throw OptError.aborted("step %d of model '%s' is no longer being assembled", a.stepId(), name);
            }
            boolean[] skip = noGradMask(noGrad);
            a.checkComplete(skip);
            Map<GroupState, Double> newLr = resolveGroupLr(groupLr);
            View label = view == null ? NO_VIEW : view.label();
            long stamp = lock.writeLock();
            try {
                checkLive();
                if (assembling.get() != a) { // superseded by the same client's retry while waiting
                    throw OptError.aborted("step %d of model '%s' is no longer being assembled", a.stepId(), name);
                }
                StepResult result;
                StepResult stored = ledger.applied(name, a.clientId(), a.stepId());
                if (stored != null) {
                    result = stored.toBuilder().setView(label).setReplayed(true).build();
                } else {
                    checkAcceptingSteps();
                    result = applyAssembled(a, skip, groupLr, newLr, policy, label);
                    ledger.record(a.clientId(), a.stepId(), result.toBuilder().clearView().build()); // a retry names its own
                }
                long readStamp = lock.tryConvertToReadLock(stamp);
                stamp = 0;
                ViewReader reader = view == null ? null
                        : new ViewReader(this, view.label(), view.source(), tensors, version, readStamp);
                if (reader == null) {
                    lock.unlockRead(readStamp);
                }
                return new StepOutcome(result, reader);
            } finally {
                if (stamp != 0) {
                    lock.unlockWrite(stamp);
                }
            }
        } finally {
            assembling.compareAndSet(a, null);
        }
    }

    /** Journals and applies a validated step under the write lock, and returns its result. */
    private StepResult applyAssembled(StepAssembly a, boolean[] skip, Map<String, Double> groupLr,
                                      Map<GroupState, Double> newLr, NonFinitePolicy policy, View label) {
        boolean skipped = a.nonFinite() != null && policy == NonFinitePolicy.NON_FINITE_SKIP;
        if (!skipped && log != null) {
            log.append(new StepRecord(a.clientId(), a.stepId(), version, skip, Map.copyOf(groupLr),
                    a.sumOfSquares(), gradients));
        }
        if (!skipped) {
            newLr.forEach((g, lr) -> g.baseLr = lr);
        }
        double gradNorm = Math.sqrt(a.sumOfSquares());
        double clip = training.clipGradNorm() > 0
                ? Math.min(1.0, training.clipGradNorm() / (gradNorm + 1e-6)) : 1.0;
        Map<GroupState, StepPlan> plans = new LinkedHashMap<>();
        StepResult.Builder result = StepResult.newBuilder()
                .setStepId(a.stepId())
                .setSkipped(skipped)
                .setView(label)
                .setGradNorm(gradNorm)
                .setClipCoefficient(skipped ? 1.0 : clip);
        for (GroupState g : groups) {
            double lr = lrFor(g);
            StepPlan plan = g.algorithm.plan(g.counters, lr, (float) clip);
            plans.put(g, plan);
            dev.optsidecar.server.optim.GroupCounters after = skipped ? g.counters : plan.after();
            result.addGroups(GroupStep.newBuilder()
                    .setGroup(g.name)
                    .setLr(lr)
                    .setEffectiveLr(plan.effectiveLr())
                    .setAveragingWeight(plan.averagingWeight())
                    .setK(after.k())
                    .setWeightSum(after.weightSum())
                    .setLrMax(after.lrMax()));
        }
        if (!skipped) {
            Double updateNorm = apply(skip, plans);
            if (updateNorm != null) {
                result.setUpdateNorm(updateNorm);
            }
        }
        return result.setVersion(version).build();
    }

    /**
     * Applies a step read back from the journal, exactly as it was applied the first time: the
     * same gradients, learning rates, skipped tensors and gradient norm, on the same version.
     */
    public void replay(StepRecord step) {
        if (step.versionBefore() != version) {
            throw OptError.dataLoss("journal of model '%s': step %s of client '%s' was applied to version %d,"
                    + " but the model is at version %d", name, Long.toUnsignedString(step.stepId()), step.clientId(),
                    step.versionBefore(), version);
        }
        StepAssembly a = openStep(step.clientId(), step.stepId());
        java.nio.ByteBuffer chunk = java.nio.ByteBuffer.allocate(StepAssembly.MAX_CHUNK_BYTES)
                .order(java.nio.ByteOrder.LITTLE_ENDIAN);
        List<Integer> noGrad = new ArrayList<>();
        for (TensorEntry t : tensors) {
            if (step.noGrad()[t.index]) {
                noGrad.add(t.index);
                continue;
            }
            for (long offset = 0; offset < t.numel; ) {
                int count = (int) Math.min(StepAssembly.MAX_CHUNK_BYTES / Float.BYTES, t.numel - offset);
                chunk.clear();
                step.gradients().read(t.index, offset, count, chunk);
                chunk.flip();
                addChunk(a, t.index, offset, chunk);
                offset += count;
            }
        }
        a.setSumOfSquares(step.sumOfSquares());
        commit(a, noGrad, step.groupLr(), null, NonFinitePolicy.NON_FINITE_REJECT);
    }

    /**
     * Runs one step on the engine under the write lock (see {@link StepComposition}), then
     * advances every counter.
     *
     * @return the update norm, if the model reports it
     */
    private Double apply(boolean[] skip, Map<GroupState, StepPlan> plans) {
        long t = version + 1;
        boolean sync = training.lookahead() != null && training.lookahead().syncsAt(lookaheadStep + 1);
        List<Integer> emaDue = new ArrayList<>();
        for (int i = 0; i < emaUpdates.length; i++) {
            if (training.ema().get(i).updatesAt(t)) {
                emaDue.add(i);
            }
        }
        DoubleAdder updateSquares = training.reportUpdateNorm() ? new DoubleAdder() : null;
        List<TensorStep> steps = StepComposition.compose(this, skip, plans, sync, emaDue, updateSquares);
        engine.apply(steps);
        for (TensorEntry tensor : tensors) {
            if (!skip[tensor.index]) {
                tensor.steps++;
            }
        }
        plans.forEach((g, plan) -> g.counters = plan.after());
        emaDue.forEach(i -> emaUpdates[i]++);
        if (training.lookahead() != null) {
            lookaheadStep = sync ? 0 : lookaheadStep + 1;
        }
        scheduleStep++;
        version = t;
        return updateSquares == null ? null : Math.sqrt(updateSquares.sum());
    }

    /** The learning rate a group uses for the next step: its base lr under the schedule. */
    double lrFor(GroupState g) {
        return training.schedule().lr(g.baseLr, scheduleStep);
    }

    private boolean[] noGradMask(List<Integer> noGrad) {
        boolean[] mask = new boolean[tensors.size()];
        for (int i : noGrad) {
            if (i < 0 || i >= mask.length) {
                throw OptError.invalid("commit.no_grad: tensor index %d out of range; the model has %d tensors",
                        Integer.toUnsignedLong(i), mask.length);
            }
            mask[i] = true;
        }
        return mask;
    }

    private Map<GroupState, Double> resolveGroupLr(Map<String, Double> groupLr) {
        Map<GroupState, Double> out = new LinkedHashMap<>();
        for (Map.Entry<String, Double> e : groupLr.entrySet()) {
            GroupState g = groups.stream().filter(x -> x.name.equals(e.getKey())).findFirst().orElseThrow(() ->
                    OptError.invalid("commit.group_lr: model '%s' has no group '%s'", name, e.getKey()));
            double lr = e.getValue();
            if (!(lr >= 0) || Double.isInfinite(lr)) {
                throw OptError.invalid("commit.group_lr[%s]: learning rate must be finite and >= 0 (got %s)",
                        e.getKey(), lr);
            }
            out.put(g, lr);
        }
        return out;
    }

    /**
     * Opens a view for reading under the read lock; the caller must close the reader.
     *
     * @param selected tensor indexes to read (empty: all), each checked against the view
     */
    public ViewReader read(ResolvedView view, List<Integer> selected, String field) {
        List<TensorEntry> chosen = Views.select(this, view, selected, field);
        long stamp = lock.readLock();
        try {
            checkLive();
        } catch (OptError e) {
            lock.unlockRead(stamp);
            throw e;
        }
        return new ViewReader(this, view.label(), view.source(), chosen, version, stamp);
    }

    /** The model's tensors, groups, configuration, counters, version and current learning rates. */
    public ModelInfo describe() {
        return underReadLock(() -> {
            checkLive();
            return ModelDescription.of(this);
        });
    }

    long readLock() {
        return lock.readLock();
    }

    void unlockRead(long stamp) {
        lock.unlockRead(stamp);
    }

    /** Runs {@code reader} under the read lock and returns its result. */
    <T> T underReadLock(java.util.function.Supplier<T> reader) {
        long stamp = lock.readLock();
        try {
            return reader.get();
        } finally {
            lock.unlockRead(stamp);
        }
    }

    /** Marks the model deleted and frees its memory once no step or reader holds it. */
    void delete() {
        long stamp = lock.writeLock();
        try {
            deleted = true;
            for (TensorEntry t : tensors) {
                t.storage.free();
            }
        } finally {
            lock.unlockWrite(stamp);
        }
    }

    void checkLive() {
        if (deleted) {
            throw OptError.notFound("model '%s' was deleted", name);
        }
    }

    /** What a commit did; {@code weights} is null when no view was requested, else the caller closes it. */
    public record StepOutcome(StepResult result, ViewReader weights) {}

    /**
     * A view as resolved for this model: its label on the wire, where its values come from, and
     * the state slot it reads (null for θ and computed views), which not every tensor may have.
     */
    public record ResolvedView(View label, ViewSource source, String slot) {
        ResolvedView(View label, ViewSource source) {
            this(label, source, null);
        }
    }
}
