package dev.optsidecar.client;

import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.proto.v1.GradientChunk;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepKind;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.proto.v1.WireDtype;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;

/**
 * One trainer's Step stream. {@link #step} streams a gradient set in 1 MiB chunks (respecting flow
 * control), commits it, and writes the returned weights into the caller's tensors. Steps are
 * synchronous; after a failed step the next one opens a fresh stream. Not thread-safe: one
 * Trainer per training thread.
 */
public final class Trainer implements AutoCloseable {
    private final OptSidecarClient client;
    private final String model;
    private final String clientId;
    /** Each tensor's element count; learnt again when the model gains tensors (AddTensors). */
    private List<Long> sizes;
    private Stream stream;
    private long nextStepId = 1;
    /** The version of the weights this trainer last received: its next gradient is computed at it. */
    private long baseVersion;
    private java.time.Duration retryFor = java.time.Duration.ofSeconds(60);
    private WireDtype wireDtype = WireDtype.WIRE_FLOAT32;
    /** The shared-memory segment steps go through, or null for chunks. */
    private ClientSegment segment;
    /** The server's doorbell socket as this process sees it, when it has one: shared-memory commits go over it. */
    private java.nio.file.Path doorbellSocket;
    /** Figures {@link #log}ged since the last step: they go with the next one. */
    private final Map<String, Double> pendingFigures = new LinkedHashMap<>();

    Trainer(OptSidecarClient client, String model, String clientId, ModelInfo info) {
        this.client = client;
        this.model = model;
        this.clientId = clientId;
        this.sizes = sizesOf(info);
        // Sequence numbers continue where this client id left off, so a new Trainer under an old id
        // is not mistaken for a retry of that id's last step.
        info.getState().getClientsList().stream()
                .filter(p -> p.getClientId().equals(clientId))
                .forEach(p -> nextStepId = p.getLastStepId() + 1);
        this.baseVersion = info.getVersion();
    }

    private static List<Long> sizesOf(ModelInfo info) {
        List<Long> s = new ArrayList<>();
        info.getTensorsList().forEach(t -> s.add(t.getNumel()));
        return Collections.unmodifiableList(s);
    }

    /**
     * Reports named scalars (loss, accuracy...) with this trainer's next step; a later value of the
     * same name replaces an earlier one. To report without a step, see OptSidecarClient.logFigures.
     */
    public Trainer log(Map<String, Double> figures) {
        pendingFigures.putAll(figures);
        return this;
    }

    /** The model's tensors as this trainer last learnt them; steps take one gradient per tensor. */
    public int tensorCount() {
        return sizes.size();
    }

    /**
     * Tells the trainer which version its next gradient is computed at, when it took the weights
     * from elsewhere (a Pull). Steps set it to the version they return.
     */
    public Trainer computedAt(long version) {
        this.baseVersion = version;
        return this;
    }

    /**
     * Opens the Step stream now rather than at the first step, so the server counts this trainer as
     * attached (in sync mode, a step waits for every attached trainer unless k is fixed).
     */
    public Trainer attach() {
        openStream();
        return this;
    }

    /** The version of the weights the trainer last received. */
    public long baseVersion() {
        return baseVersion;
    }

    /** Options of one step: the view to return, and per-group learning rates and hyperparameters to set. */
    public static final class StepOptions {
        private View view = View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build();
        private final Map<String, Double> groupLr = new LinkedHashMap<>();
        private final Map<String, Struct.Builder> groupHyperparameters = new LinkedHashMap<>();
        private StepKind kind = StepKind.STEP_GRADIENT;
        private ViewKind weightsView = ViewKind.VIEW_TRAIN;
        private final Map<String, Double> figures = new LinkedHashMap<>();

        /**
         * Reports a named scalar (loss, accuracy...) with this step: the server keeps it with the
         * version the step makes (OptSidecarClient.figures).
         */
        public StepOptions figure(String name, double value) {
            figures.put(name, value);
            return this;
        }

        public StepOptions view(ViewKind kind) {
            this.view = View.newBuilder().setKind(kind).build();
            return this;
        }

        public StepOptions view(View view) {
            this.view = view;
            return this;
        }

        /** Sets a group's base learning rate from this step on. */
        public StepOptions groupLr(String group, double lr) {
            groupLr.put(group, lr);
            return this;
        }

        /**
         * Sets one of a group's hyperparameters from this step on, under its reference name: a
         * {@code Double}, a {@code Boolean} or a {@code double[]} (e.g. betas), as in
         * {@code param_groups[i][name] = value}. The server refuses a change that would change the
         * group's state slots (amsgrad, SGD momentum from or to 0).
         */
        public StepOptions hyperparameter(String group, String name, Object value) {
            groupHyperparameters.computeIfAbsent(group, g -> Struct.newBuilder()).putFields(name, toValue(value));
            return this;
        }

        /** For a set-weights step: the weights are Schedule-Free's x (VIEW_EVAL) rather than the train weights. */
        public StepOptions weightsView(ViewKind kind) {
            this.weightsView = kind;
            return this;
        }

        private static Value toValue(Object v) {
            if (v instanceof Number n) {
                return Value.newBuilder().setNumberValue(n.doubleValue()).build();
            }
            if (v instanceof Boolean b) {
                return Value.newBuilder().setBoolValue(b).build();
            }
            if (v instanceof double[] list) {
                ListValue.Builder l = ListValue.newBuilder();
                for (double d : list) {
                    l.addValues(Value.newBuilder().setNumberValue(d));
                }
                return Value.newBuilder().setListValue(l).build();
            }
            throw new IllegalArgumentException("a hyperparameter is a number, a boolean or a double[], not " + v);
        }
    }

    /**
     * Sets the model's weights to {@code weights} (one per tensor; null keeps a tensor's), as a
     * version of its own: for parameters the trainer changed outside the optimizer (loaded
     * pretrained weights, projected or pruned them). The optimizer state is kept. Exactly-once and
     * retried like a step; {@link #baseVersion()} becomes the new version.
     */
    public StepResult setWeights(List<? extends TensorData> weights) {
        return setWeights(weights, new StepOptions());
    }

    /** Sets weights with options: hyperparameter changes, and {@link StepOptions#weightsView}. */
    public StepResult setWeights(List<? extends TensorData> weights, StepOptions options) {
        options.kind = StepKind.STEP_SET_WEIGHTS;
        options.view(ViewKind.VIEW_NONE);
        StepResult result = step(weights, null, options);
        baseVersion = result.getVersion(); // the trainer holds exactly the weights it set
        return result;
    }

    /** Steps with {@code grads} (one per tensor; null where a tensor has no gradient) and returns the train view into {@code weightsOut}. */
    public StepResult step(List<? extends TensorData> grads, List<? extends TensorData> weightsOut) {
        return step(grads, weightsOut, new StepOptions());
    }

    /** Convenience for float arrays: the train view is written back into {@code weightsOut}. */
    public StepResult step(float[][] grads, float[][] weightsOut) {
        List<TensorData> g = new ArrayList<>();
        for (float[] a : grads) {
            g.add(a == null ? null : TensorData.of(a));
        }
        List<TensorData> w = new ArrayList<>();
        for (float[] a : weightsOut) {
            w.add(TensorData.of(a));
        }
        return step(g, w);
    }

    /**
     * Steps with {@code grads} and writes the requested view into {@code weightsOut} (which may be
     * null with {@code ViewKind.VIEW_NONE}).
     */
    public StepResult step(List<? extends TensorData> grads, List<? extends TensorData> weightsOut, StepOptions options) {
        if (grads.size() != sizes.size()) {
            sizes = sizesOf(client.describe(model)); // the model may have gained tensors (AddTensors)
        }
        if (grads.size() != sizes.size()) {
            throw new IllegalArgumentException("model '" + model + "' has " + sizes.size() + " tensors but "
                    + grads.size() + " gradients were given");
        }
        boolean wantsWeights = options.view.getKind() != ViewKind.VIEW_NONE;
        if (wantsWeights && (weightsOut == null || weightsOut.size() != sizes.size())) {
            throw new IllegalArgumentException("weightsOut must hold one tensor per model tensor (" + sizes.size() + ")");
        }
        long stepId = nextStepId++;
        StepCommit.Builder commit = StepCommit.newBuilder().setStepId(stepId).setView(options.view)
                .setBaseVersion(baseVersion)
                .putAllGroupLr(options.groupLr)
                .setKind(options.kind)
                .setWeightsView(options.weightsView);
        options.groupHyperparameters.forEach((g, changes) -> commit.putGroupHyperparameters(g, changes.build()));
        commit.putAllFigures(pendingFigures).putAllFigures(options.figures);
        List<TensorData> present = new ArrayList<>();
        List<Integer> presentIndex = new ArrayList<>();
        List<Integer> noGrad = new ArrayList<>();
        for (int i = 0; i < grads.size(); i++) {
            TensorData g = grads.get(i);
            if (g == null) {
                noGrad.add(i);
            } else {
                if (g.numel() != sizes.get(i)) {
                    throw new IllegalArgumentException((options.kind == StepKind.STEP_SET_WEIGHTS ? "weights " : "gradient ")
                            + i + " has " + g.numel() + " elements; the tensor has "
                            + sizes.get(i));
                }
                present.add(g);
                presentIndex.add(i);
            }
        }
        commit.addAllNoGrad(noGrad);
        List<? extends TensorData> out = wantsWeights ? weightsOut : null;
        long deadline = System.nanoTime() + retryFor.toNanos();
        long backoffMs = 50;
        while (true) {
            if (stream != null && stream.modelChanged) {
                stream = null;
                learnAddedTensors(commit, noGrad, grads.size());
                out = out == null ? null : withDiscarded(weightsOut, sizes);
            }
            try {
                StepResult result = attempt(stepId, commit, present, presentIndex, out);
                pendingFigures.clear(); // they went with this step
                if (wantsWeights) {
                    baseVersion = result.getVersion(); // the weights the next gradient will be taken at
                }
                return result;
            } catch (io.grpc.StatusRuntimeException e) {
                if (ServerError.of(e).is(ServerError.MODEL_CHANGED) && System.nanoTime() <= deadline) {
                    learnAddedTensors(commit, noGrad, grads.size());
                    out = out == null ? null : withDiscarded(weightsOut, sizes);
                    continue;
                }
                // The connection dropped or the server is restarting: send the same step again. The
                // server applies it if it never got it, or answers from its ledger if it did.
                if (!connectionLost(e) || System.nanoTime() > deadline) {
                    throw e;
                }
            }
            sleep(backoffMs);
            backoffMs = Math.min(2 * backoffMs, 1000);
            client.reconnectNow();
        }
    }

    /**
     * Tensors were added to the model (its stream ended with MODEL_CHANGED): the step being sent goes
     * to the extended model on a new stream (answered from the ledger if it was applied before the
     * change), the tensors it has no gradient for listed in no_grad.
     */
    private void learnAddedTensors(StepCommit.Builder commit, List<Integer> noGrad, int given) {
        sizes = sizesOf(client.describe(model));
        if (segment != null) {
            try {
                useSharedMemory(segment.dir, segment.sealed() ? SegmentKind.SEALED : SegmentKind.FILE); // laid out for the new tensors
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        }
        commit.clearNoGrad().addAllNoGrad(noGrad);
        for (int i = given; i < sizes.size(); i++) {
            commit.addNoGrad(i);
        }
    }

    /** {@code weightsOut} followed by destinations that drop the weights of tensors it does not hold. */
    private static List<TensorData> withDiscarded(List<? extends TensorData> weightsOut, List<Long> sizes) {
        List<TensorData> out = new ArrayList<>(weightsOut);
        for (int i = weightsOut.size(); i < sizes.size(); i++) {
            long numel = sizes.get(i);
            out.add(new TensorData() {
                @Override
                public long numel() {
                    return numel;
                }

                @Override
                public void read(long offset, int count, java.nio.ByteBuffer dst) {
                    throw new UnsupportedOperationException("a discarded destination has no values");
                }

                @Override
                public void write(long offset, java.nio.ByteBuffer src) {
                    src.position(src.limit());
                }
            });
        }
        return out;
    }

    /**
     * Whether a failed attempt means the connection was lost rather than the step refused:
     * UNAVAILABLE, or the UNKNOWN "channel closed" grpc-java reports when a connection dies while a
     * call is starting (the server itself never sends UNKNOWN).
     */
    static boolean connectionLost(io.grpc.StatusRuntimeException e) {
        Status status = e.getStatus();
        if (status.getCode() == Status.Code.UNAVAILABLE) {
            return true;
        }
        if (status.getCode() != Status.Code.UNKNOWN) {
            return false;
        }
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof java.nio.channels.ClosedChannelException) {
                return true;
            }
        }
        return "channel closed".equals(status.getDescription());
    }

    /**
     * Sends gradients (and weights to set) and receives weights as {@code wire} elements: bfloat16
     * or float16 halve the bytes on the wire while the server keeps float32 weights and state.
     * Takes effect on the next stream the trainer opens (set it before the first step).
     */
    public Trainer wireDtype(WireDtype wire) {
        if (wire == WireDtype.UNRECOGNIZED) {
            throw new IllegalArgumentException("wire dtype: not a WireDtype");
        }
        this.wireDtype = wire;
        return this;
    }

    /** Which kind of segment {@link #useSharedMemory(java.nio.file.Path, SegmentKind)} makes. */
    public enum SegmentKind {
        /** Sealed where the server takes one (Linux, its segment socket), else a file. */
        AUTO,
        /** A memfd sealed against shrinking, handed to the server, which maps it (IOException if it cannot be). */
        SEALED,
        /** A file in the directory, which the server reads and writes. */
        FILE
    }

    /** {@link #useSharedMemory(java.nio.file.Path, SegmentKind)} with {@link SegmentKind#AUTO}. */
    public Trainer useSharedMemory(java.nio.file.Path shmDir) throws java.io.IOException {
        return useSharedMemory(shmDir, SegmentKind.AUTO);
    }

    /**
     * Moves this trainer's gradients and weights through a shared-memory segment instead of
     * chunks: each step copies its gradients into the segment and the weights out of it, and only
     * control messages travel over gRPC (commits and results over the doorbell socket). {@code
     * shmDir} is the server's --shm-dir as this process sees it (ServerInfo reports the server's
     * path). A sealed segment (a memfd handed over on the server's segment socket there) is mapped
     * by the server, one copy each way on its side; a segment file is read and written through a
     * buffer. The server refuses a segment it cannot use at the next step with FAILED_PRECONDITION,
     * SHARED_MEMORY_UNAVAILABLE. The segment is let go when the trainer is closed.
     */
    public Trainer useSharedMemory(java.nio.file.Path shmDir, SegmentKind kind) throws java.io.IOException {
        ClientSegment created = ClientSegment.create(shmDir, sizes, () -> segmentSocketIn(shmDir),
                kind == SegmentKind.SEALED, kind == SegmentKind.FILE);
        if (segment != null) {
            segment.close();
        }
        segment = created;
        doorbellSocket = doorbellIn(shmDir);
        stream = null; // the next step opens a stream that names the segment
        return this;
    }

    /** How long a step keeps being retried while the server is unreachable (default 60 s; zero: never). */
    public Trainer retryFor(java.time.Duration duration) {
        this.retryFor = duration;
        return this;
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw Status.CANCELLED.withDescription("interrupted while waiting to retry a step").asRuntimeException();
        }
    }

    /** One attempt at sending step {@code stepId} and reading its reply. */
    private StepResult attempt(long stepId, StepCommit.Builder commit, List<TensorData> present,
                               List<Integer> presentIndex, List<? extends TensorData> weightsOut) {
        Stream s = openStream();
        if (segment != null) {
            return attemptShared(s, commit, present, presentIndex, weightsOut);
        }
        PendingStep pending = new PendingStep(weightsOut != null ? new WeightsSink(weightsOut, s.wire) : null);
        s.pending = pending;
        try {
            Chunks.send(present, s.wire, s.gate, c -> s.requests.onNext(StepRequest.newBuilder()
                    .setChunk(GradientChunk.newBuilder()
                            .setStepId(stepId)
                            .setTensor(presentIndex.get(c.tensor()))
                            .setOffset(c.offset())
                            .setData(c.data()))
                    .build()));
            s.gate.awaitReady();
            s.requests.onNext(StepRequest.newBuilder().setCommit(commit).build());
            return OptSidecarClient.await(pending.result);
        } catch (RuntimeException e) {
            stream = null;
            s.cancel(e);
            throw e;
        }
    }

    /** One attempt through the segment: the data is copied in, only the commit is sent. */
    private StepResult attemptShared(Stream s, StepCommit.Builder commit, List<TensorData> present,
                                     List<Integer> presentIndex, List<? extends TensorData> weightsOut) {
        PendingStep pending = new PendingStep(null);
        s.pending = pending;
        try {
            boolean setsWeights = commit.getKind() == StepKind.STEP_SET_WEIGHTS;
            for (int k = 0; k < present.size(); k++) {
                segment.put(presentIndex.get(k), present.get(k), setsWeights);
            }
            StepResult result;
            if (s.doorbell != null) {
                s.pending = null;
                result = s.doorbell.commit(commit.build());
            } else {
                s.requests.onNext(StepRequest.newBuilder().setCommit(commit).build());
                result = OptSidecarClient.await(pending.result);
            }
            if (weightsOut != null && result.getWeightsInSegment()) {
                for (int i = 0; i < weightsOut.size(); i++) {
                    segment.get(i, weightsOut.get(i));
                }
            }
            return result;
        } catch (RuntimeException e) {
            stream = null;
            s.cancel(e);
            throw e;
        }
    }

    private Stream openStream() {
        if (stream == null || stream.failed) {
            // First: a sealed segment a restarted server lost is handed over again (or UNAVAILABLE).
            dev.optsidecar.proto.v1.SharedSegment shared = segment != null ? segment.message() : null;
            stream = new Stream();
            StepOpen.Builder open = StepOpen.newBuilder().setModel(model).setClientId(clientId).setWireDtype(stream.wire);
            com.google.protobuf.ByteString secret = null;
            if (segment != null) {
                open.setShared(shared);
                if (doorbellSocket != null) {
                    byte[] bytes = new byte[32];
                    SECRETS.nextBytes(bytes);
                    secret = com.google.protobuf.ByteString.copyFrom(bytes);
                    open.setDoorbellSecret(secret);
                }
            }
            stream.requests.onNext(StepRequest.newBuilder().setOpen(open).build());
            if (secret != null) {
                Stream opened = stream;
                opened.doorbell = Doorbell.attach(doorbellSocket, secret, () -> opened.failed);
                java.nio.file.Path now = opened.doorbell != null || opened.failed ? doorbellSocket
                        : doorbellIn(doorbellSocket.getParent());
                if (now != null && !now.equals(doorbellSocket)) { // a restarted server's socket has a new name
                    doorbellSocket = now;
                    opened.doorbell = Doorbell.attach(doorbellSocket, secret, () -> opened.failed);
                }
            }
        }
        return stream;
    }

    /** The server's doorbell socket in {@code shmDir}, or null when it has none (or does not answer now). */
    private java.nio.file.Path doorbellIn(java.nio.file.Path shmDir) {
        try {
            String name = client.serverInfo().getDoorbellSocket();
            return name.isEmpty() ? null : shmDir.resolve(name);
        } catch (io.grpc.StatusRuntimeException e) {
            return null;
        }
    }

    /** The server's segment socket in {@code shmDir}, or null when it has none (or does not answer now). */
    private java.nio.file.Path segmentSocketIn(java.nio.file.Path shmDir) {
        try {
            String name = client.serverInfo().getSegmentSocket();
            return name.isEmpty() ? null : shmDir.resolve(name);
        } catch (io.grpc.StatusRuntimeException e) {
            return null;
        }
    }

    /** Whether this trainer's shared-memory segment is a sealed one, which the server maps. */
    public boolean usesSealedSegment() {
        return segment != null && segment.sealed();
    }

    /** Whether this trainer's steps commit over the server's doorbell socket (shared memory, once a step opened the stream). */
    public boolean usesDoorbell() {
        return stream != null && !stream.failed && stream.doorbell != null;
    }

    private static final java.security.SecureRandom SECRETS = new java.security.SecureRandom();

    @Override
    public void close() {
        if (stream != null) {
            stream.closeDoorbell();
            stream.requests.onCompleted();
            stream = null;
        }
        if (segment != null) {
            segment.close();
            segment = null;
        }
    }

    private static final class PendingStep {
        final WeightsSink sink;
        final CompletableFuture<StepResult> result = new CompletableFuture<>();

        PendingStep(WeightsSink sink) {
            this.sink = sink;
        }
    }

    /** A live Step stream and the step currently waiting for its reply. */
    private final class Stream implements ClientResponseObserver<StepRequest, StepResponse> {
        final Chunks.ReadyGate gate = new Chunks.ReadyGate();
        /** The element type this stream was opened with. */
        final WireDtype wire = wireDtype;
        final ClientCallStreamObserver<StepRequest> requests;
        volatile PendingStep pending;
        volatile boolean failed;
        /** The server ended the stream because the model's tensors changed (AddTensors). */
        volatile boolean modelChanged;
        /** The doorbell carrying this stream's commits and results, when one attached. */
        volatile Doorbell doorbell;

        Stream() {
            this.requests = (ClientCallStreamObserver<StepRequest>) client.async.step(this);
        }

        @Override
        public void beforeStart(ClientCallStreamObserver<StepRequest> stream) {
            gate.attach(stream);
            stream.setOnReadyHandler(gate::signal);
        }

        @Override
        public void onNext(StepResponse response) {
            PendingStep p = pending;
            if (p == null) {
                return;
            }
            try {
                if (response.hasWeights()) {
                    if (p.sink == null) {
                        throw new IllegalStateException("server sent weights for a step that asked for none");
                    }
                    p.sink.accept(response.getWeights());
                } else if (response.hasResult()) {
                    if (p.sink != null) {
                        p.sink.finish();
                    }
                    pending = null;
                    p.result.complete(response.getResult());
                }
            } catch (RuntimeException e) {
                p.result.completeExceptionally(e);
                cancel(e);
            }
        }

        @Override
        public void onError(Throwable t) {
            modelChanged = ServerError.of(t).is(ServerError.MODEL_CHANGED);
            failed = true;
            gate.fail(t);
            PendingStep p = pending;
            if (p != null) {
                p.result.completeExceptionally(t);
            }
        }

        @Override
        public void onCompleted() {
            failed = true;
            PendingStep p = pending;
            if (p != null) {
                p.result.completeExceptionally(Status.UNAVAILABLE
                        .withDescription("server closed the Step stream").asRuntimeException());
            }
        }

        void cancel(Throwable cause) {
            failed = true;
            closeDoorbell();
            requests.cancel("client abandoned the step", cause);
        }

        void closeDoorbell() {
            Doorbell bell = doorbell;
            doorbell = null;
            if (bell != null) {
                bell.close();
            }
        }
    }
}
