package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.Contribution;
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
import java.util.concurrent.CompletableFuture;
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
    private final Trainers trainers;
    /** Reserves and releases memory under the server's limit. */
    private final ModelRegistry memory;
    private final dev.optsidecar.proto.v1.Coordination coordination;
    private final boolean sync;
    /** Sync mode: the step gathering contributions now; guarded by the write lock. */
    private SyncRound round;
    private final CoordinationStatusBuilder status = new CoordinationStatusBuilder();
    private final History history = new History();
    /** Straggler timeouts of every model. */
    private static final java.util.concurrent.ScheduledExecutorService TIMERS =
            java.util.concurrent.Executors.newSingleThreadScheduledExecutor(r -> {
                Thread t = new Thread(r, "optsidecar-sync-timeouts");
                t.setDaemon(true);
                return t;
            });
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
          Training training, Engine engine, long memoryBytes, ModelRegistry memory) {
        this.spec = spec.toBuilder().clearState().build();
        this.memory = memory;
        this.coordination = spec.getCoordination();
        this.sync = coordination.getMode() == dev.optsidecar.proto.v1.CoordinationMode.COORDINATION_SYNC;
        this.trainers = new Trainers(spec.getName(), tensors, memory);
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

    /** Bytes held for the model itself (weights, step gradient, state), not counting trainers' buffers. */
    public long memoryBytes() {
        return memoryBytes;
    }

    /** Bytes held for trainers' gradient buffers now. */
    long sessionBytes() {
        return trainers.bytes();
    }

    /** Reserves room for a transient copy of weights being sent; false when the limit has none. */
    boolean reserveTransient(long bytes) {
        try {
            memory.reserve(name, bytes);
            return true;
        } catch (OptError e) {
            return false;
        }
    }

    void releaseTransient(long bytes) {
        memory.release(bytes);
    }

    /** What trainers are attached and what their contributions did. */
    dev.optsidecar.proto.v1.CoordinationStatus coordinationStatus() {
        return status.build(coordination, trainers.attached());
    }

    /** The contributions of versions from {@code from} on, as far back as they are kept. */
    public List<dev.optsidecar.proto.v1.VersionContributions> history(long from) {
        return underReadLock(() -> history.from(from));
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

    // ------------------------------------------------------------------------------------------
    // Trainers

    /** A trainer opened a Step stream: its session (created on first use) counts as attached. */
    public ClientSession attach(String clientId) {
        checkLive();
        return trainers.attach(clientId);
    }

    /**
     * A trainer's stream ended: a half-sent step of it is dropped (a retry on another stream would
     * replace it anyway), and a sync step waiting for as many trainers as are attached may now be due.
     */
    public void detach(ClientSession s) {
        long stamp = lock.writeLock();
        try {
            trainers.leave(s);
            if (sync && !deleted) {
                applyRoundIfDue();
            }
        } finally {
            lock.unlockWrite(stamp);
        }
    }

    /**
     * Starts assembling a step of {@code s} in its own gradient buffers, allocated on its first
     * step. A step the session left half-sent (a dead connection) is replaced.
     */
    public StepAssembly openStep(ClientSession s, long stepId) {
        checkLive();
        return trainers.open(s, stepId);
    }

    /**
     * The stored result when step {@code stepId} is the session's last applied step (a retry), else
     * null; FAILED_PRECONDITION when it is older.
     */
    public StepResult appliedResult(ClientSession s, long stepId) {
        return underReadLock(() -> ledger.applied(name, s.clientId, stepId));
    }

    /** The session's sync contribution of step {@code stepId} still waiting for its step, for a retry to wait on; or null. */
    public CompletableFuture<StepOutcome> waitingContribution(ClientSession s, long stepId) {
        return trainers.waiting(s, stepId);
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
     * The id of a step being assembled, if any: its chunks are arriving but it has not yet been
     * committed or abandoned. For diagnostics and tests; the answer may be stale by the time it is read.
     */
    public java.util.OptionalLong assemblingStep() {
        return trainers.assemblingStep();
    }

    /** Abandons an assembly; weights and state are untouched. */
    public void abandon(StepAssembly a) {
        trainers.abandon(a);
    }

    private void checkCurrent(StepAssembly a) {
        if (a.session().assembly != a) {
            throw OptError.aborted("step %s of model '%s' is no longer being assembled (a retry replaced it)",
                    Long.toUnsignedString(a.stepId()), name);
        }
    }

    /**
     * Copies one gradient chunk into the step's buffers; returns a non-finite description when one
     * arrived. The copy runs under the read lock, so a Delete (which frees the buffers under the
     * write lock) cannot free them mid-copy, and a chunk for a model deleted mid-step is NOT_FOUND.
     */
    public String addChunk(StepAssembly a, int tensor, long offset, java.nio.ByteBuffer data) {
        checkLive();
        checkCurrent(a);
        // tryReadLock first: it ignores queued writers, so a Delete waiting for this stream's own
        // weights transfer cannot block the stream. It fails only while a writer holds the lock,
        // which ends without waiting on anything, so blocking is safe.
        long stamp = lock.tryReadLock();
        if (stamp == 0) {
            stamp = lock.readLock();
        }
        try {
            checkLive();
            checkCurrent(a);
            return a.add(tensor, offset, data);
        } finally {
            lock.unlockRead(stamp);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Steps

    /**
     * Validates an assembled step and applies it: at once (async mode, or a lone trainer), or as
     * part of the sync step it contributes to, when that step has its contributions. The future
     * holds the result and the requested view of the new version. A step the client's ledger shows
     * as already applied is answered with the stored result instead.
     *
     * @param noGrad      tensor indexes without a gradient this step
     * @param groupLr     new base learning rates by group name
     * @param view        resolved view to return, or null for none
     * @param baseVersion the version the gradient was computed at, or null for the current one
     */
    public CompletableFuture<StepOutcome> commit(StepAssembly a, List<Integer> noGrad, Map<String, Double> groupLr,
                                                 ResolvedView view, NonFinitePolicy policy, Long baseVersion) {
        checkCurrent(a);
        boolean[] skip = noGradMask(noGrad);
        a.checkComplete(skip);
        Map<GroupState, Double> newLr = resolveGroupLr(groupLr);
        View label = view == null ? NO_VIEW : view.label();
        boolean skipped = a.nonFinite() != null && policy == NonFinitePolicy.NON_FINITE_SKIP;
        long stamp = lock.writeLock();
        try {
            checkLive();
            checkCurrent(a);
            StepResult stored = ledger.applied(name, a.clientId(), a.stepId());
            StepResult result;
            if (stored != null) {
                result = stored.toBuilder().setView(label).setReplayed(true).build();
            } else {
                checkAcceptingSteps();
                if (baseVersion != null && baseVersion > version) {
                    throw OptError.invalid("commit.base_version: %d is ahead of the model's version %d", baseVersion, version);
                }
                if (sync && !skipped && (baseVersion == null || baseVersion == version)) {
                    return contribute(a, skip, groupLr, view, baseVersion);
                }
                if (sync && !skipped) { // its step was applied without it
                    status.late++;
                    result = StepResult.newBuilder().setStepId(a.stepId()).setVersion(version).setLate(true)
                            .setView(label).setLrScale(1.0).build();
                    ledger.record(a.clientId(), a.stepId(), result.toBuilder().clearView().build());
                    abandon(a);
                    long readStamp = lock.tryConvertToReadLock(stamp);
                    stamp = 0;
                    return CompletableFuture.completedFuture(new StepOutcome(result, readerAfterStep(view, readStamp)));
                }
                long staleness = baseVersion == null ? 0 : version - baseVersion;
                double lrScale = skipped ? 1.0 : admit(a, staleness);
                if (!skipped) {
                    for (TensorEntry t : tensors) {
                        if (!skip[t.index]) {
                            t.storage.useGradient(a.session().handles[t.index]);
                        }
                    }
                }
                result = applyLocked(List.of(contribution(a.clientId(), a.stepId())), skip, groupLr, newLr,
                        a.sumOfSquares(), lrScale, staleness, skipped, label);
                ledger.record(a.clientId(), a.stepId(), result.toBuilder().clearView().build()); // a retry names its own
            }
            abandon(a);
            long readStamp = lock.tryConvertToReadLock(stamp);
            stamp = 0;
            return CompletableFuture.completedFuture(new StepOutcome(result, readerAfterStep(view, readStamp)));
        } finally {
            if (stamp != 0) {
                lock.unlockWrite(stamp);
            }
        }
    }

    /** Async mode: the learning-rate factor for a gradient this stale, or FAILED_PRECONDITION past the bound. */
    private double admit(StepAssembly a, long staleness) {
        dev.optsidecar.proto.v1.AsyncOptions options = coordination.getAsync();
        if (options.getMaxStaleness() == 0 || staleness <= Integer.toUnsignedLong(options.getMaxStaleness())) {
            return 1.0;
        }
        if (options.getStale() == dev.optsidecar.proto.v1.StalePolicy.STALE_DOWNWEIGHT) {
            return 1.0 / (1 + staleness);
        }
        status.rejected++;
        throw OptError.precondition("step %s of client '%s': its gradient was computed at version %d, %d versions"
                        + " behind the current version %d (the bound is %d); pull the weights and send a fresh one",
                Long.toUnsignedString(a.stepId()), a.clientId(), version - staleness, staleness, version,
                Integer.toUnsignedLong(options.getMaxStaleness()));
    }

    /** Opens the requested view after a step, releasing the read lock when there is none to read. */
    private ViewReader readerAfterStep(ResolvedView view, long readStamp) {
        if (view == null) {
            lock.unlockRead(readStamp);
            return null;
        }
        return new ViewReader(this, view.label(), view.source(), Views.select(this, view, List.of(), "commit.view"),
                version, readStamp);
    }

    private static Contribution contribution(String clientId, long stepId) {
        return Contribution.newBuilder().setClientId(clientId).setStepId(stepId).build();
    }

    /** Sync mode: adds the step to the open round and applies the round if it is now due. Under the write lock. */
    private CompletableFuture<StepOutcome> contribute(StepAssembly a, boolean[] skip, Map<String, Double> groupLr,
                                                      ResolvedView view, Long baseVersion) {
        ClientSession s = a.session();
        CompletableFuture<StepOutcome> result = new CompletableFuture<>();
        SyncRound.Contribution c = new SyncRound.Contribution(s, a.stepId(), skip, Map.copyOf(groupLr), view, result);
        trainers.contributing(c);
        if (round == null) {
            round = new SyncRound(version + 1);
            int timeout = coordination.getSync().getTimeoutMs();
            if (timeout > 0) {
                SyncRound r = round;
                r.timer = TIMERS.schedule(() -> straggled(r), timeout, java.util.concurrent.TimeUnit.MILLISECONDS);
            }
        }
        round.contributions.add(c);
        applyRoundIfDue();
        return result;
    }

    /** The straggler timeout of round {@code r}: from now on it applies with min_k contributions. */
    private void straggled(SyncRound r) {
        long stamp = lock.writeLock();
        try {
            if (round == r && !deleted) {
                r.timedOut = true;
                applyRoundIfDue();
            }
        } catch (RuntimeException e) {
            java.util.logging.Logger.getLogger(Model.class.getName()).log(java.util.logging.Level.WARNING,
                    "model '" + name + "': applying a sync step after its straggler timeout failed", e);
        } finally {
            lock.unlockWrite(stamp);
        }
    }

    /** Applies the open sync round if it has its contributions; under the write lock. */
    private void applyRoundIfDue() {
        SyncRound r = round;
        if (r == null || r.contributions.isEmpty()) {
            return;
        }
        int k = coordination.getSync().getK();
        int target = k > 0 ? k : Math.max(1, trainers.attached().size());
        int minK = Math.max(1, coordination.getSync().getMinK());
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
        parts.sort(java.util.Comparator.comparing(c -> c.session().key));
        try {
            checkAcceptingSteps();
            applyRound(parts);
        } catch (RuntimeException e) {
            trainers.contributed(parts);
            parts.forEach(c -> c.result().completeExceptionally(e));
        }
    }

    /** Combines a round's contributions into the step gradient and applies it; every contributor gets the same weights. */
    private void applyRound(List<SyncRound.Contribution> parts) {
        boolean mean = coordination.getSync().getCombine() == dev.optsidecar.proto.v1.Combine.COMBINE_MEAN;
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
        Map<String, Double> groupLr = parts.get(0).groupLr();
        List<Contribution> who = parts.stream().map(c -> contribution(c.session().clientId, c.stepId())).toList();
        StepResult common = applyLocked(who, skip, groupLr, resolveGroupLr(groupLr), squares, 1.0, 0, false, NO_VIEW);
        java.util.Map<View, ViewReader.Published> copies = new java.util.HashMap<>();
        for (SyncRound.Contribution c : parts) {
            StepResult mine = common.toBuilder().setStepId(c.stepId()).build();
            ledger.record(c.session().clientId, c.stepId(), mine.toBuilder().clearView().build());
        }
        trainers.contributed(parts);
        // The round holds each copy until every contributor has its reader: a contributor whose
        // weights go out before the next reader is made would otherwise give the copy's memory
        // back once for each time the count of readers fell to zero.
        try {
            for (SyncRound.Contribution c : parts) {
                StepResult mine = common.toBuilder().setStepId(c.stepId())
                        .setView(c.view() == null ? NO_VIEW : c.view().label()).build();
                ViewReader weights = null;
                if (c.view() != null) {
                    ViewReader.Published shared = copies.get(c.view().label());
                    if (shared == null) {
                        shared = ViewReader.copyOut(this, c.view().label(), c.view().source(),
                                Views.select(this, c.view(), List.of(), "commit.view"), version);
                        if (shared == null) {
                            throw OptError.exhausted("model '%s': no memory left under the limit to copy out the new"
                                    + " weights for the sync step's %d contributors", name, parts.size());
                        }
                        shared.retain();
                        copies.put(c.view().label(), shared);
                    }
                    weights = new ViewReader(this, c.view().label(), version, shared);
                }
                c.result().complete(new StepOutcome(mine, weights));
            }
        } finally {
            copies.values().forEach(shared -> shared.release(this));
        }
    }

    /**
     * Journals and applies a step whose gradient is in the tensors' step buffers, under the write
     * lock, and returns its result (with the new version).
     */
    private StepResult applyLocked(List<Contribution> contributions, boolean[] skip, Map<String, Double> groupLr,
                                   Map<GroupState, Double> newLr, double sumOfSquares, double lrScale,
                                   long staleness, boolean skipped, View label) {
        if (!skipped && log != null) {
            log.append(new StepRecord(contributions, version, skip, Map.copyOf(groupLr), sumOfSquares, lrScale,
                    staleness, gradients));
        }
        if (!skipped) {
            newLr.forEach((g, lr) -> g.baseLr = lr);
        }
        double gradNorm = Math.sqrt(sumOfSquares);
        double clip = training.clipGradNorm() > 0
                ? Math.min(1.0, training.clipGradNorm() / (gradNorm + 1e-6)) : 1.0;
        Map<GroupState, StepPlan> plans = new LinkedHashMap<>();
        StepResult.Builder result = StepResult.newBuilder()
                .setStepId(contributions.get(0).getStepId())
                .setSkipped(skipped)
                .setView(label)
                .setGradNorm(gradNorm)
                .setClipCoefficient(skipped ? 1.0 : clip)
                .setStaleness(staleness)
                .setLrScale(lrScale);
        for (GroupState g : groups) {
            double lr = lrFor(g) * lrScale;
            StepPlan plan = g.algorithm.plan(g.scalars, lr, (float) clip);
            plans.put(g, plan);
            result.addGroups(GroupStep.newBuilder()
                    .setGroup(g.name)
                    .setLr(lr)
                    .setEffectiveLr(plan.effectiveLr())
                    .setAveragingWeight(plan.averagingWeight())
                    .putAllScalars((skipped ? g.scalars : plan.after()).asMap()));
        }
        if (!skipped) {
            Double updateNorm = apply(skip, plans);
            if (updateNorm != null) {
                result.setUpdateNorm(updateNorm);
            }
            result.addAllContributions(contributions);
            history.record(version, contributions);
            status.applied(contributions.size(), staleness);
        }
        return result.setVersion(version).build();
    }

    /**
     * Applies a step read back from the journal, exactly as it was applied the first time: the
     * same gradient, learning rates, skipped tensors, gradient norm and contributors, on the same
     * version.
     */
    public void replay(StepRecord step) {
        if (step.versionBefore() != version) {
            throw OptError.dataLoss("journal of model '%s': a step was applied to version %d, but the model is at"
                    + " version %d", name, step.versionBefore(), version);
        }
        java.nio.ByteBuffer chunk = java.nio.ByteBuffer.allocate(StepAssembly.MAX_CHUNK_BYTES)
                .order(java.nio.ByteOrder.LITTLE_ENDIAN);
        long stamp = lock.writeLock();
        try {
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
            StepResult result = applyLocked(step.contributions(), step.noGrad(), step.groupLr(),
                    resolveGroupLr(step.groupLr()), step.sumOfSquares(), step.lrScale(), step.staleness(), false,
                    NO_VIEW);
            for (Contribution c : step.contributions()) {
                ledger.record(c.getClientId(), c.getStepId(), result.toBuilder().setStepId(c.getStepId()).clearView().build());
            }
        } finally {
            lock.unlockWrite(stamp);
        }
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
        plans.forEach((g, plan) -> g.scalars = plan.after());
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
            SyncRound r = round;
            round = null;
            if (r != null) {
                if (r.timer != null) {
                    r.timer.cancel(false);
                }
                OptError gone = OptError.notFound("model '%s' was deleted while its sync step waited for contributions", name);
                r.contributions.forEach(c -> c.result().completeExceptionally(gone));
            }
            trainers.close();
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
