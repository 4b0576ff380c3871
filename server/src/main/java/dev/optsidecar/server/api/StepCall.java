package dev.optsidecar.server.api;

import dev.optsidecar.proto.v1.GradientChunk;
import dev.optsidecar.proto.v1.NonFinitePolicy;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.WireNumbers;
import dev.optsidecar.server.cudaipc.CudaIpc;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.engine.cuda.IpcMapping;
import dev.optsidecar.server.model.ClientSession;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.ModelRegistry;
import dev.optsidecar.server.model.StepAssembly;
import dev.optsidecar.server.model.StepOptions;
import dev.optsidecar.server.model.ViewReader;
import dev.optsidecar.server.model.WireTypes;
import dev.optsidecar.server.shm.Doorbell;
import dev.optsidecar.server.shm.DoorbellLine;
import dev.optsidecar.server.shm.Segment;
import dev.optsidecar.server.shm.SegmentTransfer;
import dev.optsidecar.server.shm.SharedMemory;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;

/**
 * One trainer's Step stream: StepOpen, then per step the gradient chunks and a StepCommit. Chunks
 * go straight into the model's gradient buffers; the commit applies the step and streams the
 * requested view back, followed by the StepResult. Inbound messages are requested one at a time,
 * so a commit that arrives while the previous step's weights are still going out waits its turn.
 *
 * <p>With a shared segment (StepOpen.shared), a commit that received no chunks reads its data from
 * the segment, and the requested view is written into the segment instead of streamed. With CUDA
 * IPC buffers (StepOpen.cuda_ipc) the same happens on the GPU, in the trainer's device memory.
 * Such a stream's commits and results may travel over the doorbell socket instead (StepOpen's
 * doorbell_secret): they go through the same steps here, and the stream's end ends the doorbell.
 *
 * <p>Any error ends the stream with a status and leaves the model as it was before the step.
 */
final class StepCall implements StreamObserver<StepRequest>, Doorbell.Stream {
    private final ModelRegistry registry;
    private final SharedMemory sharedMemory;
    /** The doorbell socket a shared-memory stream's commits may come over instead; null without one. */
    private final Doorbell doorbell;
    /** The secret this stream registered with the doorbell (StepOpen.doorbell_secret), or null. */
    private com.google.protobuf.ByteString doorbellSecret;
    /** The doorbell connection carrying this stream's commits and results, once one attached. */
    private DoorbellLine line;
    /** Whether the commit being applied (or awaited), and the one deferred, came over the doorbell. */
    private boolean commitOverDoorbell;
    private boolean deferredOverDoorbell;
    private final ServerCallStreamObserver<StepResponse> out;
    /** The stream's shared segment, or null when its data travels in chunks. */
    private Segment segment;
    /** The CRC-32C of each piece of the weights this stream last wrote into its segment (StepResult.weights_crc32c). */
    private java.util.List<Integer> writtenRecords = java.util.List.of();
    /** The trainer's device buffers (StepOpen.cuda_ipc), or null. */
    private IpcMapping deviceBuffers;
    private Model model;
    private ClientSession session;
    /** A sync step waiting for the other trainers' contributions. */
    private java.util.concurrent.CompletableFuture<?> awaiting;
    private NonFinitePolicy policy;
    /** The element type of this stream's chunks, both ways (StepOpen.wire_dtype). */
    private WireType wire = WireType.FLOAT32;
    /** A retried step that was already applied: its chunks are dropped and its commit answered from the ledger. */
    private Long replayedStepId;
    private StepAssembly assembly;
    private ChunkSender<StepResponse> sending;
    private StepCommit deferredCommit;
    private final java.util.function.Consumer<StepCall> onClose;
    /** Runs what follows a sync step's completion, and detaches, away from threads holding a model's lock. */
    private final java.util.concurrent.Executor completions;
    private boolean closed;
    private boolean halfClosed;
    /** When the client last showed it is there: a message received, or room to send weights again. */
    private long lastActivityNanos = System.nanoTime();
    private java.util.concurrent.ScheduledFuture<?> idleCheck;
    private final StepMeter meter;

    StepCall(ModelRegistry registry, SharedMemory sharedMemory, Doorbell doorbell,
             ServerCallStreamObserver<StepResponse> out, java.util.function.Consumer<StepCall> onClose,
             java.util.concurrent.Executor completions) {
        this.registry = registry;
        this.sharedMemory = sharedMemory;
        this.doorbell = doorbell;
        this.out = out;
        this.onClose = onClose;
        this.completions = completions;
        this.meter = new StepMeter(registry.metrics());
        out.disableAutoRequest();
        out.setOnReadyThreshold(4 * ChunkSender.CHUNK_BYTES);
        out.setOnReadyHandler(this::onReady);
        out.setOnCancelHandler(this::cleanup);
        out.request(1);
        synchronized (this) {
            scheduleIdleCheck(registry.limits().idleStreamTimeout().toNanos());
        }
    }

    /**
     * A stream that sends nothing (and reads no weights) for {@code --idle-stream-timeout} is closed,
     * so a client that vanished without a reset, or never finishes a step, does not hold its
     * gradient buffers forever. Waiting for a sync step is the server's turn, not idleness.
     */
    private void scheduleIdleCheck(long delayNanos) {
        if (closed || registry.limits().idleStreamTimeout().isZero()) {
            return;
        }
        try {
            idleCheck = registry.timers().schedule(this::checkIdle, delayNanos,
                    java.util.concurrent.TimeUnit.NANOSECONDS);
        } catch (java.util.concurrent.RejectedExecutionException e) {
            // the server is closing; shutdown ends the stream
        }
    }

    private synchronized void checkIdle() {
        if (closed) {
            return;
        }
        long timeout = registry.limits().idleStreamTimeout().toNanos();
        long idle = System.nanoTime() - lastActivityNanos;
        if (awaiting != null) {
            lastActivityNanos = System.nanoTime(); // the server's turn: the client's idle time starts after it
            scheduleIdleCheck(timeout);
        } else if (idle < timeout) {
            scheduleIdleCheck(timeout - idle);
        } else {
            long ms = registry.limits().idleStreamTimeout().toMillis();
            fail(io.grpc.Status.DEADLINE_EXCEEDED.withDescription(String.format(
                    "idle Step stream: nothing received from the client for %s (--idle-stream-timeout); its step"
                            + " in progress is dropped and its gradient buffers freed; open a new stream to go on",
                    ms % 1000 == 0 ? ms / 1000 + " s" : ms + " ms")).asRuntimeException());
        }
    }

    @Override
    public synchronized void onNext(StepRequest request) {
        if (closed) {
            return;
        }
        lastActivityNanos = System.nanoTime();
        try {
            switch (request.getKindCase()) {
                case OPEN -> open(request);
                case CHUNK -> chunk(request.getChunk());
                case COMMIT -> {
                    if (!commitOrDefer(request.getCommit(), false)) {
                        return; // resumes when the previous step's weights are out
                    }
                }
                default -> throw OptError.invalid("kind: empty StepRequest");
            }
            if (!closed) {
                out.request(1); // chunks of the next step may arrive while weights go out
            }
        } catch (RuntimeException | Error e) {
            if (request.getKindCase() != StepRequest.KindCase.OPEN) {
                meter.rejected(e);
            }
            fail(e);
        }
    }

    /**
     * Runs {@code c} now, or keeps it for when the previous step's weights are out; false if kept.
     * Its result goes back the way it came: over the doorbell or on the stream.
     */
    private boolean commitOrDefer(StepCommit c, boolean overDoorbell) {
        if (sending != null || awaiting != null) {
            deferredCommit = c;
            deferredOverDoorbell = overDoorbell;
            return false;
        }
        commitOverDoorbell = overDoorbell;
        commit(c);
        return true;
    }

    @Override
    public synchronized boolean attach(DoorbellLine l) {
        if (closed || line != null) {
            return false;
        }
        line = l;
        lastActivityNanos = System.nanoTime();
        return true;
    }

    @Override
    public synchronized void doorbellCommit(StepCommit c) {
        if (closed) {
            return;
        }
        lastActivityNanos = System.nanoTime();
        try {
            commitOrDefer(c, true);
        } catch (RuntimeException | Error e) {
            meter.rejected(e);
            fail(e);
        }
    }

    @Override
    public synchronized void doorbellRejected(OptError error) {
        meter.rejected(error);
        fail(error);
    }

    @Override
    public synchronized void doorbellClosed(DoorbellLine l) {
        if (line == l) {
            line = null; // a step in flight was applied or not; the client's retry finds out from the ledger
        }
    }

    private void open(StepRequest request) {
        if (model != null) {
            throw OptError.invalid("open: sent twice in one Step stream");
        }
        WireType requested = WireTypes.of(request.getOpen().getWireDtype(), request.getOpen().getWireDtypeValue(),
                "open.wire_dtype");
        model = registry.get(request.getOpen().getModel(), "open.model");
        session = model.attach(request.getOpen().getClientId());
        wire = requested;
        policy = model.nonFinitePolicy();
        meter.opened(model.name(), wire);
        if (request.getOpen().hasShared()) {
            if (requested != WireType.FLOAT32) {
                throw OptError.invalid("open.wire_dtype: a shared segment holds float32; leave the wire type"
                        + " unspecified (it is the chunks')");
            }
            segment = sharedMemory.open(request.getOpen().getShared(), model.tensorNumels(), "open.shared");
        }
        if (request.getOpen().hasCudaIpc()) {
            if (requested != WireType.FLOAT32) {
                throw OptError.invalid("open.wire_dtype: CUDA IPC buffers hold float32; leave the wire type"
                        + " unspecified (it is the chunks')");
            }
            if (segment != null) {
                throw OptError.invalid("open.cuda_ipc: a stream moves its data through a shared segment or CUDA IPC"
                        + " buffers, not both").withField("open.cuda_ipc");
            }
            deviceBuffers = CudaIpc.open(registry.engine(), request.getOpen().getCudaIpc(), model.tensorNumels(),
                    "open.cuda_ipc");
        }
        var secret = request.getOpen().getDoorbellSecret();
        if (!secret.isEmpty()) {
            if (segment == null && deviceBuffers == null) {
                throw OptError.invalid("open.doorbell_secret: only a stream whose data goes through a shared segment"
                        + " or CUDA IPC buffers commits over the doorbell; chunks travel on the stream")
                        .withField("open.doorbell_secret");
            }
            if (doorbell != null) {
                doorbell.register(secret, this, "open.doorbell_secret");
                doorbellSecret = secret;
            }
        }
    }

    private Model requireOpen() {
        if (model == null) {
            throw OptError.invalid("open: the first Step message must be a StepOpen naming the model");
        }
        return model;
    }

    private void chunk(GradientChunk c) {
        Model m = requireOpen();
        WireNumbers.count(c.getStepId(), "chunk.step_id"); // kept in the ledger, restored as a bounded count
        if (replayedStepId != null && replayedStepId == c.getStepId()) {
            return; // already applied; the commit is answered from the client's ledger
        }
        if (assembly == null) {
            if (m.appliedResult(session, c.getStepId()) != null || m.waitingContribution(session, c.getStepId()) != null) {
                replayedStepId = c.getStepId();
                return;
            }
            assembly = m.openStep(session, c.getStepId());
        } else if (assembly.stepId() != c.getStepId()) {
            throw OptError.precondition("chunk.step_id: chunk for step %s arrived before step %s was committed",
                    Long.toUnsignedString(c.getStepId()), Long.toUnsignedString(assembly.stepId()))
                    .withReason(OptError.Reason.STEP_OUT_OF_ORDER);
        }
        meter.chunk(c.getData().size());
        String nonFinite = m.addChunk(assembly, c.getTensor(), c.getOffset(), c.getData().asReadOnlyByteBuffer(), wire);
        if (nonFinite != null && policy != NonFinitePolicy.NON_FINITE_SKIP) {
            throw OptError.invalid("step %s: %s (the model's non_finite policy rejects such steps)",
                    Long.toUnsignedString(assembly.stepId()), nonFinite)
                    .withReason(OptError.Reason.NON_FINITE_GRADIENT).withField("chunk.data").with("model", m.name())
                    .with("step_id", Long.toUnsignedString(assembly.stepId()));
        }
    }

    private void commit(StepCommit c) {
        Model m = requireOpen();
        meter.commit();
        WireNumbers.count(c.getStepId(), "commit.step_id");
        StepOptions options = StepOptions.of(c);
        if (c.getWeightsCrc32CCount() > 0 && (segment == null || options.setsWeights())) {
            throw OptError.invalid("commit.weights_crc32c: only a gradient step over a shared segment has weights to"
                    + " check").withField("commit.weights_crc32c");
        }
        Model.ResolvedView resolved = m.resolveView(c.getView(), "commit.view", true);
        Model.ResolvedView view = resolved == null ? null
                : segment != null || deviceBuffers != null ? resolved.sentAs(wire).readInPlace()
                : resolved.sentAs(wire);
        if (assembly == null) {
            replayedStepId = null;
            StepResult stored = m.appliedResult(session, c.getStepId());
            if (stored != null) {
                answerRetry(m, stored, view);
                return;
            }
            var waiting = m.waitingContribution(session, c.getStepId());
            if (waiting != null) { // sent before on a stream that died: answer when its sync step is applied
                // The waited-for outcome's weights belong to the original stream; this one reads its own.
                await(waiting.thenApply(outcome -> Boolean.TRUE),
                        applied -> answerRetry(m, m.appliedResult(session, c.getStepId()), view));
                return;
            }
            // In place only when the trainer's records, if it sent any, are those of the weights this
            // stream wrote: records it holds of other weights are checked on the copying path.
            if (segment != null && segment.isMapped()
                    && (c.getWeightsCrc32CCount() == 0 || c.getWeightsCrc32CList().equals(writtenRecords))) {
                assembly = m.openStep(session, c.getStepId());
                Model.SegmentStepOutcome inPlace = SegmentTransfer.stepInPlace(m, assembly, segment, options, view);
                if (inPlace != null) {
                    assembly = null;
                    meter.segmentRead(inPlace.weightsBytes());
                    meter.applied(false);
                    meter.segmentStep(true);
                    meter.result(inPlace.result());
                    replyWithSegmentWeights(inPlace.result(), inPlace.result().getVersion(), inPlace.weightsCrc32c(),
                            inPlace.weightsBytes());
                    return;
                }
            }
            if (segment != null && c.getWeightsCrc32CCount() > 0) {
                SegmentTransfer.checkWeights(segment, c.getWeightsCrc32CList()); // before anything is read or changed
            }
            if (assembly == null) {
                assembly = m.openStep(session, c.getStepId()); // legal only when every tensor is listed in no_grad
            }
            if (segment != null) {
                ingestSegment(m, options);
                meter.segmentRead(segmentBytes(m, options.noGrad()));
                if (!options.setsWeights()) {
                    meter.segmentStep(false);
                }
            } else if (deviceBuffers != null) {
                rejectNonFinite(CudaIpc.ingest(m, assembly, deviceBuffers, options.noGrad(), options.setsWeights()),
                        options, "open.cuda_ipc.gradient_offsets");
            }
        } else if (assembly.stepId() != c.getStepId()) {
            throw OptError.precondition("commit.step_id: commit for step %s, but the chunks sent were for step %s",
                    Long.toUnsignedString(c.getStepId()), Long.toUnsignedString(assembly.stepId()))
                    .withReason(OptError.Reason.STEP_OUT_OF_ORDER);
        }
        StepAssembly a = assembly;
        assembly = null;
        var outcome = m.commit(a, options, view, policy);
        meter.applied(!outcome.isDone());
        if (outcome.isDone()) {
            Model.StepOutcome o = outcome.join();
            meter.result(o.result());
            send(o.result(), o.weights());
        } else {
            await(outcome, o -> {
                meter.roundDone();
                meter.result(o.result());
                send(o.result(), o.weights());
            });
        }
    }

    /** The bytes a commit read from the segment: every tensor with a gradient, as float32. */
    private static long segmentBytes(Model m, java.util.List<Integer> noGrad) {
        long[] numels = m.tensorNumels();
        long bytes = 0;
        for (int t = 0; t < numels.length; t++) {
            bytes += noGrad.contains(t) ? 0 : numels[t] * Float.BYTES;
        }
        return bytes;
    }

    /** Reads a commit's gradients (or weights to set) from the segment, rejecting a non-finite one like a chunk. */
    private void ingestSegment(Model m, StepOptions options) {
        rejectNonFinite(SegmentTransfer.ingest(m, assembly, segment, options.noGrad(), options.setsWeights()), options,
                "open.shared.gradient_offsets");
    }

    /** Rejects a step whose gradient read from a segment or a trainer's GPU had a NaN or Inf, as a chunk's would be. */
    private void rejectNonFinite(String nonFinite, StepOptions options, String field) {
        if (nonFinite != null && !options.setsWeights() && policy != NonFinitePolicy.NON_FINITE_SKIP) {
            throw OptError.invalid("step %s: %s (the model's non_finite policy rejects such steps)",
                    Long.toUnsignedString(assembly.stepId()), nonFinite)
                    .withReason(OptError.Reason.NON_FINITE_GRADIENT).withField(field)
                    .with("model", model.name()).with("step_id", Long.toUnsignedString(assembly.stepId()));
        }
    }

    /**
     * Waits for a sync step to be applied without holding up the stream's thread; then {@code then}
     * runs as a callback of this call. Completions run on another thread than the one applying the
     * step, which holds the model's lock.
     */
    private <T> void await(java.util.concurrent.CompletableFuture<T> step, java.util.function.Consumer<T> then) {
        awaiting = step;
        step.whenCompleteAsync((value, error) -> {
            synchronized (this) {
                awaiting = null;
                if (closed) {
                    if (value instanceof Model.StepOutcome o && o.weights() != null) {
                        o.weights().close();
                    }
                    return;
                }
                try {
                    if (error != null) {
                        throw error instanceof java.util.concurrent.CompletionException ce && ce.getCause() != null
                                ? ce.getCause() : error;
                    }
                    then.accept(value);
                    if (sending == null) {
                        resumeAfterSend();
                    }
                } catch (Throwable e) {
                    meter.rejected(e);
                    fail(e);
                }
            }
        }, completions);
    }

    /** A step the client had sent before: its stored result, with the current weights. */
    private void answerRetry(Model m, StepResult stored, Model.ResolvedView view) {
        StepResult.Builder result = stored.toBuilder().setReplayed(true)
                .setView(view == null ? View.newBuilder().setKind(ViewKind.VIEW_NONE).build() : view.label());
        send(result.build(), view == null ? null : m.read(view, java.util.List.of(), "commit.view"));
    }

    /**
     * Streams a step's weights (if any), then its result; with a segment, writes the weights into it
     * instead. A step is applied (and journaled) before its weights go out, so a segment that fails
     * then fails the stream with the step applied: the client's retry is answered from the ledger.
     */
    private void send(StepResult result, ViewReader weights) {
        lastActivityNanos = System.nanoTime(); // the time the step took is not the client's idleness
        if (weights != null && deviceBuffers != null) {
            CudaIpc.WrittenView written = CudaIpc.writeView(weights, deviceBuffers);
            StepResult.Builder onDevice = result.toBuilder().setWeightsOnDevice(true)
                    .setWeightsVersion(written.version()).clearWeightsDeviceSums();
            for (long sum : written.sums()) {
                onDevice.addWeightsDeviceSums(sum);
            }
            reply(onDevice.build());
            meter.sent();
            return;
        }
        if (weights != null && segment != null) {
            SegmentTransfer.WrittenView written = SegmentTransfer.writeView(weights, segment);
            replyWithSegmentWeights(result, written.version(), written.crc32c(), written.bytes());
            return;
        }
        if (weights != null) {
            result = result.toBuilder().setWeightsVersion(weights.version()).build();
        }
        if (weights == null) {
            reply(result);
            meter.sent();
            return;
        }
        StepResponse done = StepResponse.newBuilder().setResult(result).build();
        sending = new ChunkSender<>(out, weights,
                w -> {
                    meter.sentChunk(w.getData().size());
                    return StepResponse.newBuilder().setWeights(w).build();
                },
                () -> {
                    out.onNext(done);
                    meter.sent();
                    sending = null;
                });
        sending.drain();
    }

    /** Replies to a step whose weights of {@code version} are in the segment, with the CRC-32C of each piece. */
    private void replyWithSegmentWeights(StepResult result, long version, int[] crc32c, long bytes) {
        StepResult.Builder withWeights = result.toBuilder().setWeightsInSegment(true).setWeightsVersion(version)
                .clearWeightsCrc32C();
        for (int crc : crc32c) {
            withWeights.addWeightsCrc32C(crc);
        }
        writtenRecords = withWeights.getWeightsCrc32CList();
        meter.sentToSegment(bytes);
        reply(withWeights.build());
        meter.sent();
    }

    /** Sends a result without weights chunks: over the doorbell if its commit came that way, else on the stream. */
    private void reply(StepResult result) {
        if (commitOverDoorbell && line != null) {
            line.result(result);
        } else {
            out.onNext(StepResponse.newBuilder().setResult(result).build());
        }
    }

    private synchronized void onReady() {
        if (closed || sending == null) {
            return;
        }
        lastActivityNanos = System.nanoTime();
        try {
            sending.drain();
            if (sending == null) {
                resumeAfterSend();
            }
        } catch (RuntimeException | Error e) {
            fail(e);
        }
    }

    /** After a step's weights are out: run a commit that waited, or finish a half-closed stream. */
    private void resumeAfterSend() {
        if (awaiting != null) {
            return;
        }
        if (deferredCommit != null) {
            StepCommit c = deferredCommit;
            deferredCommit = null;
            commitOverDoorbell = deferredOverDoorbell;
            commit(c);
            out.request(1);
            if (sending == null) {
                resumeAfterSend();
            }
            return;
        }
        if (halfClosed) {
            finish();
        }
    }

    @Override
    public synchronized void onError(Throwable t) {
        cleanup();
    }

    @Override
    public synchronized void onCompleted() {
        if (closed) {
            return;
        }
        halfClosed = true;
        if (sending == null && deferredCommit == null && awaiting == null) {
            finish();
        }
    }

    private void finish() {
        // A step whose chunks arrived but which was never committed is dropped: nothing changes.
        cleanup();
        out.onCompleted();
    }

    private void fail(Throwable e) {
        if (closed) {
            return;
        }
        io.grpc.StatusRuntimeException status = Statuses.toStatus(e);
        if (line != null) {
            line.fail(Statuses.doorbellError(status));
        }
        cleanup();
        out.onError(status);
    }

    /** Server shutdown: ends the stream with UNAVAILABLE; a step not yet acknowledged is retried by the client. */
    synchronized void shutdown() {
        fail(dev.optsidecar.server.OptError.unavailable("the server is shutting down; retry when it is back")
                .withReason(dev.optsidecar.server.OptError.Reason.SHUTTING_DOWN));
    }

    /** Ends the stream with {@code error} if it is on {@code m} (a model replaced by AddTensors). */
    synchronized void endIfOn(Model m, OptError error) {
        if (model == m) {
            fail(error);
        }
    }

    /** Releases the model: drops an uncommitted step and stops a weights transfer. Idempotent. */
    private synchronized void cleanup() {
        closed = true;
        if (idleCheck != null) {
            idleCheck.cancel(false);
            idleCheck = null;
        }
        onClose.accept(this);
        if (assembly != null) {
            model.abandon(assembly);
            assembly = null;
        }
        if (session != null) {
            Model m = model;
            ClientSession s = session;
            session = null;
            // Off this call's lock: detaching takes the model's lock, which a step being applied holds.
            completions.execute(() -> m.detach(s));
        }
        if (sending != null) {
            sending.cancel();
            sending = null;
        }
        deferredCommit = null;
        if (doorbellSecret != null) {
            doorbell.unregister(doorbellSecret);
            doorbellSecret = null;
        }
        if (line != null) {
            line.close();
            line = null;
        }
        if (segment != null) {
            segment.close();
            segment = null;
        }
        if (deviceBuffers != null) {
            deviceBuffers.close();
            deviceBuffers = null;
        }
    }
}
