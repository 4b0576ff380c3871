package dev.optsidecar.server.model;

import com.google.protobuf.Struct;
import dev.optsidecar.proto.v1.Contribution;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.Engine;
import dev.optsidecar.server.engine.SegmentStepper;
import dev.optsidecar.server.engine.TensorProgram;
import dev.optsidecar.server.engine.ViewChunks;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;
import dev.optsidecar.server.optim.Lookahead;
import dev.optsidecar.server.optim.StepPlan;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.locks.StampedLock;

/**
 * A registered model: ordered named tensors, parameter groups, one optimizer configuration, the
 * version (steps applied) and the counters a step advances. Steps take the write lock; views are
 * read under the read lock, so a reader always sees whole steps. A commit is applied at once
 * (async mode: {@link AsyncAdmission}) or joins the open sync step ({@link SyncRounds}); either way
 * it changes the model through {@link StepApplier}, as a journal replay does.
 */
public final class Model {
    static final View NO_VIEW = View.newBuilder().setKind(ViewKind.VIEW_NONE).build();
    private final String name;
    private final OptimizerConfig config;
    private final List<TensorEntry> tensors;
    private final List<GroupState> groups;
    private final Engine engine;
    /** The reply weights of the step being applied (see {@link ReplyWeights}); null between steps. */
    private ReplyWeights replyWeights;
    private final long memoryBytes;
    private final StampedLock lock = new StampedLock();
    private final Trainers trainers;
    /** Reserves and releases memory under the server's limit. */
    private final ModelRegistry memory;
    private final dev.optsidecar.proto.v1.Coordination coordination;
    private final boolean sync;
    private final CoordinationStatusBuilder status = new CoordinationStatusBuilder();
    private final History history;
    private final FigureHistory figures;
    private final Training training;
    private final ModelSpec spec;
    private final ClientLedger ledger;
    private final StepApplier steps;
    private final SyncRounds rounds;
    private final AsyncAdmission admission;
    private volatile long version;
    private volatile boolean deleted;
    /** Deleted because its lease expired (see {@link ModelLeases}): what calls on it are told. */
    private volatile boolean leaseExpired;
    /** Replaced by an extended copy of itself (AddTensors): what calls on it are told. */
    private volatile boolean changed;
    private volatile boolean acceptingSteps = true;
    /** Why new steps are refused with UNAVAILABLE for now (the clients retry them), or null. */
    private volatile String stepsHeld;
    /** Identifies this model's run across snapshots and journals (a new one per registration). */
    private String run = java.util.UUID.randomUUID().toString();
    /** Scheduler steps taken (LambdaLR's last_epoch): the schedule's position. */
    long scheduleStep;
    /** Updates each EMA shadow has had (AveragedModel's n_averaged). */
    final long[] emaUpdates;
    /** Lookahead's inner steps since its last synchronisation. */
    long lookaheadStep;
    /**
     * Bytes reserved for the engine's second buffers (steps from a segment): 0 before the first
     * such step, -1 when the memory limit had no room for them.
     */
    private long spareBytes;

    /** @param timers runs sync steps' straggler timeouts */
    Model(ModelSpec spec, List<TensorEntry> tensors, List<GroupState> groups, Training training, Engine engine,
          long memoryBytes, ModelRegistry memory, ScheduledExecutorService timers) {
        this.spec = spec.toBuilder().clearState().build();
        this.memory = memory;
        this.coordination = spec.getCoordination();
        this.sync = coordination.getMode() == dev.optsidecar.proto.v1.CoordinationMode.COORDINATION_SYNC;
        this.trainers = new Trainers(spec.getName(), tensors, memory);
        this.history = new History(memory.limits().historyVersions(), memory.limits().historyBytes(), memory::account);
        this.figures = new FigureHistory(memory.limits().historyVersions(), memory.limits().historyBytes(),
                memory::account);
        this.ledger = new ClientLedger(memory.limits().maxLedgerEntries(), trainers::isAttached, history,
                memory::account);
        this.name = spec.getName();
        this.config = spec.getOptimizer();
        this.tensors = Collections.unmodifiableList(tensors);
        this.groups = Collections.unmodifiableList(groups);
        this.training = training;
        this.engine = engine;
        this.memoryBytes = memoryBytes;
        this.emaUpdates = new long[training.ema().size()];
        this.steps = new StepApplier(this, this::apply);
        this.rounds = new SyncRounds(this, trainers, steps, status, coordination.getSync(), timers);
        this.admission = new AsyncAdmission(coordination.getAsync(), status);
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

    /** Bytes counted for the ledger and History: what the steps applied left behind. Under the model's lock. */
    long recordBytes() {
        return ledger.bytes() + history.bytes() + figures.bytes();
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

    /** Trainers with a Step stream open on the model now. */
    public int trainersAttached() {
        return trainers.attached().size();
    }

    /** What trainers are attached and what their contributions did. */
    dev.optsidecar.proto.v1.CoordinationStatus coordinationStatus() {
        return status.build(coordination, trainers.attached());
    }

    /**
     * One page of the contributions of versions from {@code from} on, as far back as they are kept:
     * at most {@code maxVersions} (0: the default) and about a megabyte.
     */
    public dev.optsidecar.proto.v1.HistoryResponse history(long from, int maxVersions) {
        return underReadLock(() -> history.page(from, maxVersions));
    }

    /** One page of the figures of versions from {@code from} on (see {@link FigureHistory}). */
    public dev.optsidecar.proto.v1.FiguresResponse figures(long from, int maxVersions) {
        checkLive();
        return figures.page(from, maxVersions);
    }

    /** A trainer's figures without a step: they join the current version's; returns that version. */
    public long logFigures(Map<String, Double> reported) {
        return underReadLock(() -> {
            checkLive();
            figures.report(version, reported);
            return version;
        });
    }

    dev.optsidecar.server.observe.ServerMetrics metrics() {
        return memory.metrics();
    }

    FigureHistory figureHistory() {
        return figures;
    }

    public NonFinitePolicy nonFinitePolicy() {
        return config.getNonFinite();
    }

    public int tensorCount() {
        return tensors.size();
    }

    /** Each tensor's element count, in tensor order. */
    public long[] tensorNumels() {
        return tensors.stream().mapToLong(t -> t.numel).toArray();
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

    /** Where the running step writes tensor {@code index}'s new θ for its reply, or null. Under the write lock. */
    ViewChunks replyWeights(int index) {
        return replyWeights == null ? null : replyWeights.forTensor(index);
    }

    void setVersion(long version) {
        this.version = version;
    }

    ClientLedger ledger() {
        return ledger;
    }

    History history() {
        return history;
    }

    CoordinationStatusBuilder status() {
        return status;
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
                rounds.applyIfDue();
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

    /** False once a graceful shutdown has stopped the model's steps. */
    boolean isAcceptingSteps() {
        return acceptingSteps;
    }

    /**
     * Refuses new steps with UNAVAILABLE, saying {@code why}, until {@link #releaseSteps}; a retry
     * of a step already applied is still answered.
     */
    public void holdSteps(String why) {
        stepsHeld = why;
    }

    public void releaseSteps() {
        stepsHeld = null;
    }

    void checkAcceptingSteps() {
        if (!acceptingSteps) {
            throw OptError.unavailable("model '%s': the server is shutting down; retry the step when it is back", Echo.of(name))
                    .with("model", Echo.of(name));
        }
        String held = stepsHeld;
        if (held != null) {
            throw OptError.unavailable("model '%s': %s; retry the step", Echo.of(name), held).with("model", Echo.of(name));
        }
    }

    /** Sets where steps are journaled before they are applied; null for nowhere. */
    public void setStepLog(StepLog log) {
        long stamp = lock.writeLock();
        steps.setLog(log);
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
                    Long.toUnsignedString(a.stepId()), Echo.of(name))
                    .withReason(OptError.Reason.STEP_REPLACED).with("model", Echo.of(name))
                    .with("step_id", Long.toUnsignedString(a.stepId()));
        }
    }

    /**
     * Copies one gradient chunk into the step's buffers; returns a non-finite description when one
     * arrived. The copy runs under the read lock, so a Delete (which frees the buffers under the
     * write lock) cannot free them mid-copy, and a chunk for a model deleted mid-step is NOT_FOUND.
     */
    public String addChunk(StepAssembly a, int tensor, long offset, java.nio.ByteBuffer data, WireType wire) {
        return ingesting(a, () -> a.add(tensor, offset, data, wire));
    }

    /** Runs an ingest into {@code a} under the read lock, while the model and the step are current. */
    private String ingesting(StepAssembly a, java.util.function.Supplier<String> ingest) {
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
            return ingest.get();
        } finally {
            lock.unlockRead(stamp);
        }
    }

    /**
     * Ingests pieces read from a shared segment on up to {@code threads} threads (see {@link
     * StepAssembly#addAll}); returns the first non-finite value's description, or null.
     */
    public String addPieces(StepAssembly a, List<StepAssembly.Piece> pieces, StepAssembly.PieceReader reader,
                            java.util.concurrent.Executor helpers, int threads) {
        return ingesting(a, () -> a.addAll(pieces, reader, helpers, threads));
    }

    /**
     * Ingests every tensor not in {@code noGrad} from device memory (see {@link
     * StepAssembly#addFromDevice}); returns the first non-finite value's description, or null.
     */
    public String addFromDevice(StepAssembly a, List<Integer> noGrad,
                                dev.optsidecar.server.engine.DeviceGradientSource source) {
        return ingesting(a, () -> {
            List<Integer> tensors = new java.util.ArrayList<>();
            for (int t = 0; t < this.tensors.size(); t++) {
                if (!noGrad.contains(t)) {
                    tensors.add(t);
                }
            }
            return a.addFromDevice(tensors, source);
        });
    }

    // ------------------------------------------------------------------------------------------
    // Steps

    /**
     * Validates an assembled step and applies it: at once (async mode, a lone trainer, or a
     * set-weights step), or as part of the sync step it contributes to, when that step has its
     * contributions. The future holds the result and the requested view of the new version. A
     * step the client's ledger shows as already applied is answered with the stored result instead.
     *
     * @param view resolved view to return, or null for none
     */
    public CompletableFuture<StepOutcome> commit(StepAssembly a, StepOptions options, ResolvedView view,
                                                 NonFinitePolicy policy) {
        checkCurrent(a);
        boolean[] skip = noGradMask(options.noGrad());
        a.checkComplete(skip);
        Long baseVersion = options.baseVersion();
        Map<String, Struct> changes = GroupChange.combine(groups, name, options.groupLr(),
                options.groupHyperparameters());
        if (options.setsWeights()) {
            checkWeightsToSet(a, options);
        }
        View label = view == null ? NO_VIEW : view.label();
        boolean skipped = !options.setsWeights() && a.nonFinite() != null
                && policy == NonFinitePolicy.NON_FINITE_SKIP;
        ReplyWeights reply = null;
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
                GroupChange.resolve(groups, name, changes); // refuses a bad change before anything changes
                // base_version is a wire uint64: compared unsigned, 2^63 and above are ahead, not behind
                if (baseVersion != null && Long.compareUnsigned(baseVersion, version) > 0) {
                    throw OptError.invalid("commit.base_version: %s is ahead of the model's version %d",
                            Long.toUnsignedString(baseVersion), version)
                            .withReason(OptError.Reason.BASE_VERSION_AHEAD).with("model", Echo.of(name))
                            .with("base_version", Long.toUnsignedString(baseVersion)).with("current_version", version);
                }
                if (options.setsWeights()) {
                    result = setWeightsAtOnce(a, options.weightsView(), skip, changes, baseVersion, label);
                } else if (sync && !skipped && (baseVersion == null || baseVersion == version)) {
                    return rounds.contribute(a, skip, changes, view).thenApply(o -> {
                        reportFigures(o.result(), options.figures());
                        return o;
                    });
                } else if (sync && !skipped) {
                    result = rounds.late(a, label); // its step was applied without it
                } else {
                    reply = ReplyWeights.reserve(this, view, skip);
                    replyWeights = reply;
                    try {
                        result = applyAtOnce(a, skip, changes, skipped, baseVersion, label);
                    } finally {
                        replyWeights = null;
                    }
                }
                reportFigures(result, options.figures());
            }
            abandon(a);
            long readStamp = lock.tryConvertToReadLock(stamp);
            stamp = 0;
            ViewReader.Published written = reply == null ? null : reply.publish(view.label(), version);
            reply = null;
            return CompletableFuture.completedFuture(new StepOutcome(result, written != null
                    ? readerOfWritten(view, written, readStamp) : readerAfterStep(view, readStamp)));
        } finally {
            if (reply != null) {
                reply.release();
            }
            if (stamp != 0) {
                lock.unlockWrite(stamp);
            }
        }
    }

    /** A step run from a trainer's segment: its result, the CRC-32C of each 1 MiB piece of weights written there. */
    public record SegmentStepOutcome(StepResult result, int[] weightsCrc32c, long weightsBytes) {}

    /**
     * Applies a gradient step straight from the trainer's shared segment where the engine can
     * ({@link SegmentStepper}): one pass reads the gradient there, checks that the segment's
     * weights are the model's, bit for bit (as the trainer's CRC-32C records would), and writes the
     * new weights in their place; nothing is copied in before or out after. That takes an async
     * step of one trainer at the current version that wants the train view back as float32, with
     * nothing in no_grad (learning-rate and hyperparameter changes are applied, and undone if the
     * pass refuses the step), on a model without a journal (whose record would hold a copy of the
     * gradient), clipping (which needs the norm before the pass), EMA, Lookahead or update norm,
     * whose every tensor's step the stepper runs.
     *
     * @return the outcome, the new weights already in the segment; or null when the step cannot go
     *         that way or the pass refused it (a NaN or Inf, or weights the trainer wrote since):
     *         nothing has changed then, and the caller takes the copying path with the same assembly
     */
    public SegmentStepOutcome commitFromSegment(StepAssembly a, StepOptions options, ResolvedView view,
                                                SegmentStepper.PieceViews views) {
        SegmentStepper stepper = engine.segmentStepper();
        if (stepper == null || sync || options.setsWeights() || !options.noGrad().isEmpty() || view == null
                || view.source() != ViewSource.TRAIN || view.wire() != WireType.FLOAT32
                || training.clipGradNorm() > 0 || training.reportUpdateNorm() || !training.ema().isEmpty()
                || training.lookahead() != null) {
            return null;
        }
        checkCurrent(a);
        Map<String, Struct> changes = GroupChange.combine(groups, name, options.groupLr(),
                options.groupHyperparameters());
        long stamp = lock.writeLock();
        try {
            checkLive();
            checkCurrent(a);
            Long base = options.baseVersion();
            if (steps.journals() || (base != null && base != version) || !a.isEmpty()
                    || ledger.applied(name, a.clientId(), a.stepId()) != null || !reserveSpares(stepper)) {
                return null;
            }
            checkAcceptingSteps();
            SegmentStepper.Applied[] applied = {null};
            StepResult result = steps.applyInPlace(a.session().contribution(a.stepId()), changes, view.label(),
                    plans -> {
                        applied[0] = stepFromSegment(stepper, plans, views);
                        return applied[0] == null ? null : applied[0].sumOfSquares();
                    });
            if (result == null) {
                return null;
            }
            reportFigures(result, options.figures());
            abandon(a);
            long bytes = 0;
            for (TensorEntry t : tensors) {
                bytes += t.numel * Float.BYTES;
            }
            return new SegmentStepOutcome(result, applied[0].weightsCrc32c(), bytes);
        } finally {
            lock.unlockWrite(stamp);
        }
    }

    /**
     * Runs a planned step from a segment and advances the counters; null, having changed nothing,
     * when the stepper cannot run its programs or refused it. Under the write lock.
     */
    private SegmentStepper.Applied stepFromSegment(SegmentStepper stepper, Map<GroupState, StepPlan> plans,
                                                   SegmentStepper.PieceViews views) {
        boolean[] none = new boolean[tensors.size()];
        List<TensorProgram> programs = StepComposition.compose(this, none, plans, false, List.of());
        if (programs.size() != tensors.size() || !stepper.supports(programs)) {
            return null;
        }
        SegmentStepper.Applied applied = stepper.run(programs, segmentPieces(), views,
                java.util.concurrent.ForkJoinPool.commonPool(), dev.optsidecar.server.Parallel.COPY_THREADS);
        if (applied != null) {
            advance(none, plans, false, List.of());
        }
        return applied;
    }

    /** Every tensor in pieces of {@link StepAssembly#MAX_CHUNK_BYTES}, tensor by tensor, as a segment's are read. */
    private List<SegmentStepper.Piece> segmentPieces() {
        List<SegmentStepper.Piece> pieces = new ArrayList<>();
        int perPiece = StepAssembly.MAX_CHUNK_BYTES / Float.BYTES;
        for (TensorEntry t : tensors) {
            for (long at = 0; at < t.numel; at += perPiece) {
                pieces.add(new SegmentStepper.Piece(t.index, at, (int) Math.min(perPiece, t.numel - at)));
            }
        }
        return pieces;
    }

    /**
     * Reserves the memory of the engine's second buffers at the first step from a segment; false
     * (then and after) when the memory limit has no room for them: such steps take the copying path.
     */
    private boolean reserveSpares(SegmentStepper stepper) {
        if (spareBytes == 0) {
            long bytes = 0;
            for (TensorEntry t : tensors) {
                bytes = Math.addExact(bytes, stepper.spareBytes(t.numel, t.storage.slotCount()));
            }
            spareBytes = reserveTransient(bytes) ? bytes : -1;
        }
        return spareBytes > 0;
    }

    /** Bytes of the engine's second buffers for steps from a segment (0 until the first). */
    long spareBytes() {
        return Math.max(0, spareBytes);
    }

    /** A trainer's figures join the version its step made; a step that made none (late, skipped) keeps none. */
    private void reportFigures(StepResult result, Map<String, Double> reported) {
        if (!result.getLate() && !result.getSkipped() && !result.getReplayed()) {
            figures.report(result.getVersion(), reported);
        }
    }

    /** A set-weights step needs a trainer (a client id), finite weights and a point they can be set at. */
    private void checkWeightsToSet(StepAssembly a, StepOptions options) {
        if (a.clientId().isEmpty()) {
            throw OptError.invalid("open.client_id: a set-weights step is a trainer's: open the Step stream with"
                    + " a client id");
        }
        if (a.nonFinite() != null) {
            throw OptError.invalid("step %s: the weights to set hold %s", Long.toUnsignedString(a.stepId()),
                    a.nonFinite()).withReason(OptError.Reason.NON_FINITE_GRADIENT).withField("chunk.data")
                    .with("model", Echo.of(name));
        }
        steps.checkWeightsView(options.weightsView());
    }

    /**
     * Applies a step at once, from its trainer's gradient buffers (async mode), or answers it as
     * skipped (a non-finite gradient under NON_FINITE_SKIP). Under the write lock.
     */
    private StepResult applyAtOnce(StepAssembly a, boolean[] skip, Map<String, Struct> changes, boolean skipped,
                                   Long baseVersion, View label) {
        long staleness = baseVersion == null ? 0 : version - baseVersion;
        Contribution who = a.session().contribution(a.stepId());
        if (skipped) {
            return steps.skip(who, skip, a.sumOfSquares(), staleness, label);
        }
        double lrScale = admission.lrScale(a, staleness, version);
        for (TensorEntry t : tensors) {
            if (!skip[t.index]) {
                t.storage.useGradient(a.session().handles[t.index]);
            }
        }
        return steps.apply(steps.live(List.of(who), skip, changes, a.sumOfSquares(), lrScale, staleness), label);
    }

    /**
     * Applies a set-weights step at once, as a version of its own, from its trainer's buffers.
     * In sync mode it cannot go between a step's contributions: they were computed at the weights
     * it replaces. Under the write lock.
     */
    private StepResult setWeightsAtOnce(StepAssembly a, ViewKind weightsView, boolean[] keep,
                                        Map<String, Struct> changes, Long baseVersion, View label) {
        if (rounds.waiting() > 0) {
            throw OptError.precondition("model '%s': %d contributions to the sync step to version %d are waiting;"
                    + " set weights between sync steps", Echo.of(name), rounds.waiting(), version + 1)
                    .withReason(OptError.Reason.SYNC_STEP_OPEN).with("model", Echo.of(name));
        }
        for (TensorEntry t : tensors) {
            if (!keep[t.index]) {
                t.storage.useGradient(a.session().handles[t.index]);
            }
        }
        long staleness = baseVersion == null ? 0 : version - baseVersion;
        return steps.apply(steps.liveWeights(a.session().contribution(a.stepId()), weightsView, keep, changes,
                staleness), label);
    }

    /**
     * Sets θ of every tensor not in {@code keep} to the step buffer's values, at the train point or,
     * with {@code fromEval}, at Schedule-Free's x (y is recomputed from z, as its train() does; a
     * tensor that has not stepped has no z and holds y = x). Optimizer state and step counts stay;
     * the version advances. Under the write lock.
     */
    void setWeights(boolean[] keep, boolean fromEval) {
        List<TensorProgram> programs = new ArrayList<>();
        KernelCall set = Kernel.SET_PARAMS.call().build();
        for (TensorEntry t : tensors) {
            if (keep[t.index]) {
                continue;
            }
            List<KernelCall> calls = new ArrayList<>(List.of(set));
            if (fromEval && t.steps > 0) {
                calls.add(t.group.algorithm.trainFromEval());
            }
            programs.add(new TensorProgram(t.storage, calls));
        }
        engine.run(programs);
        version++;
    }

    /** A reader of the weights the step wrote for its reply; releases the read lock. */
    private ViewReader readerOfWritten(ResolvedView view, ViewReader.Published written, long readStamp) {
        try {
            return new ViewReader(this, view.label(), version, written);
        } finally {
            lock.unlockRead(readStamp);
        }
    }

    /** Opens the requested view after a step, releasing the read lock when there is none to read. */
    private ViewReader readerAfterStep(ResolvedView view, long readStamp) {
        if (view == null) {
            lock.unlockRead(readStamp);
            return null;
        }
        return new ViewReader(this, view, Views.select(this, view, List.of(), "commit.view"), version, readStamp);
    }

    /**
     * Applies a step read back from the journal, exactly as it was applied the first time (see
     * {@link StepApplier#replay}).
     */
    public void replay(StepRecord step) {
        long stamp = lock.writeLock();
        try {
            steps.replay(step);
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
        // EMA cadence counts optimizer steps: set-weights steps are versions but not steps.
        long t = scheduleStep + 1;
        boolean sync = training.lookahead() != null && training.lookahead().syncsAt(lookaheadStep + 1);
        List<Integer> emaDue = new ArrayList<>();
        for (int i = 0; i < emaUpdates.length; i++) {
            if (training.ema().get(i).updatesAt(t)) {
                emaDue.add(i);
            }
        }
        List<TensorProgram> programs = StepComposition.compose(this, skip, plans, sync, emaDue);
        Double updateNorm = null;
        if (training.reportUpdateNorm()) {
            updateNorm = Math.sqrt(engine.runMeasuringUpdate(programs));
        } else {
            engine.run(programs);
        }
        advance(skip, plans, sync, emaDue);
        return updateNorm;
    }

    /** Advances every counter a step moves, once the engine has run it. */
    private void advance(boolean[] skip, Map<GroupState, StepPlan> plans, boolean sync, List<Integer> emaDue) {
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
        version++;
    }

    /** Contributions to the open sync step, waiting for it to be applied (0 in async mode). */
    int syncContributionsWaiting() {
        long stamp = lock.readLock();
        try {
            return rounds.waiting();
        } finally {
            lock.unlockRead(stamp);
        }
    }

    /** Every hyperparameter with its model-wide value: the algorithm's defaults under the model's. */
    com.google.protobuf.Struct defaults() {
        return dev.optsidecar.server.optim.Hyperparameters.merge(groups.get(0).definition,
                Map.of("spec.optimizer.hyperparameters", config.getHyperparameters())).toStruct();
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
        return new ViewReader(this, view, chosen, version, stamp);
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

    long writeLock() {
        return lock.writeLock();
    }

    void unlockWrite(long stamp) {
        lock.unlockWrite(stamp);
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
            free();
        } finally {
            lock.unlockWrite(stamp);
        }
    }

    /**
     * Ends this model because an extended copy of it replaced it (AddTensors): calls still on it are
     * told MODEL_CHANGED, so that trainers reopen their streams on the new tensors. The caller holds
     * the write lock.
     */
    void retireChanged() {
        changed = true;
        free();
    }

    private void free() {
        deleted = true;
        rounds.cancel();
        trainers.close();
        ledger.clear();
        history.clear();
        figures.clear();
        for (TensorEntry t : tensors) {
            t.storage.free();
        }
        if (spareBytes > 0) {
            memory.release(spareBytes);
            spareBytes = 0;
        }
    }

    /** Whether a sync step has contributions waiting for the other trainers'. Under the lock. */
    boolean syncStepWaiting() {
        return rounds.waiting() > 0;
    }

    /** Deletes it because its lease expired, so that streams still open on it are told why. */
    void expireLease() {
        leaseExpired = true;
        delete();
    }

    void checkLive() {
        if (deleted && changed) {
            throw changedError();
        }
        if (deleted && leaseExpired) {
            throw OptError.notFound("model '%s' was deleted because its lease expired", Echo.of(name))
                    .withReason(OptError.Reason.MODEL_NOT_FOUND).with("model", Echo.of(name));
        }
        if (deleted) {
            throw OptError.notFound("model '%s' was deleted", Echo.of(name)).withReason(OptError.Reason.MODEL_NOT_FOUND)
                    .with("model", Echo.of(name));
        }
    }

    /** What calls still on a model that AddTensors replaced are told: ABORTED, MODEL_CHANGED. */
    public OptError changedError() {
        return OptError.aborted("model '%s' changed: tensors were added to it (AddTensors); open a new Step stream"
                + " for its new tensors", Echo.of(name)).withReason(OptError.Reason.MODEL_CHANGED)
                .with("model", Echo.of(name));
    }

    boolean isDeleted() {
        return deleted;
    }

    /** What a commit did; {@code weights} is null when no view was requested, else the caller closes it. */
    public record StepOutcome(StepResult result, ViewReader weights) {}

    /**
     * A view as resolved for this model: its label on the wire, where its values come from, and
     * the state slot it reads (null for θ and computed views), which not every tensor may have.
     */
    /** A view to read, with the element type its chunks are sent as. */
    /**
     * A view to read: its label, where its values come from, and how it is read out. {@code inPlace}:
     * read straight into its destination (a shared segment) under the read lock, rather than copied
     * out first so that a slow network receiver holds up no step.
     */
    public record ResolvedView(View label, ViewSource source, String slot, WireType wire, boolean inPlace) {
        ResolvedView(View label, ViewSource source) {
            this(label, source, null);
        }

        ResolvedView(View label, ViewSource source, String slot) {
            this(label, source, slot, WireType.FLOAT32, false);
        }

        /** The same view, sent as {@code type}. */
        public ResolvedView sentAs(WireType type) {
            return new ResolvedView(label, source, slot, type, inPlace);
        }

        /** The same view, read straight into a destination that never blocks (see {@code inPlace}). */
        public ResolvedView readInPlace() {
            return new ResolvedView(label, source, slot, wire, true);
        }
    }
}
