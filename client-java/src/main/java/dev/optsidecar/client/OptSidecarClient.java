package dev.optsidecar.client;

import dev.optsidecar.proto.v1.AddTensorsRequest;
import dev.optsidecar.proto.v1.AddTensorsSpec;
import dev.optsidecar.proto.v1.DeleteRequest;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.HistoryRequest;
import dev.optsidecar.proto.v1.HistoryResponse;
import dev.optsidecar.proto.v1.ListRequest;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.RenewLeaseRequest;
import dev.optsidecar.proto.v1.StateChunk;
import dev.optsidecar.proto.v1.TensorSpec;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.proto.v1.WireDtype;
import dev.optsidecar.proto.v1.ExportInfo;
import dev.optsidecar.proto.v1.ExportRequest;
import dev.optsidecar.proto.v1.ForkRequest;
import dev.optsidecar.proto.v1.ListSnapshotsRequest;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.Schedule;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.SnapshotRequest;
import dev.optsidecar.proto.v1.VersionContributions;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.StreamObserver;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

/**
 * A client for an optsidecar server: registers models, pulls views, describes them, and opens
 * {@link Trainer}s that stream steps. Thread-safe; one instance per server is enough.
 *
 * <pre>{@code
 * try (OptSidecarClient client = OptSidecarClient.connect("127.0.0.1:50051")) {
 *     client.register(spec, List.of(TensorData.of(w0), TensorData.of(b0)));
 *     try (Trainer trainer = client.trainer("mlp", "worker-0")) {
 *         trainer.step(List.of(TensorData.of(gw), TensorData.of(gb)), List.of(TensorData.of(w0), TensorData.of(b0)));
 *     }
 * }
 * }</pre>
 */
public final class OptSidecarClient implements AutoCloseable {
    /** Chunks in flight before a sender waits for the transport. */
    static final int ON_READY_THRESHOLD = 4 * Chunks.CHUNK_BYTES;
    static final int MAX_MESSAGE_BYTES = 4 * Chunks.CHUNK_BYTES;
    /** HTTP/2 window per stream: several chunks in flight, so a sender seldom waits a round trip. */
    static final int FLOW_CONTROL_WINDOW = 8 * Chunks.CHUNK_BYTES;

    private final ManagedChannel channel;
    private final boolean ownsChannel;
    final OptimizerGrpc.OptimizerStub async;
    private final OptimizerGrpc.OptimizerBlockingStub blocking;

    public OptSidecarClient(ManagedChannel channel) {
        this(channel, false);
    }

    OptSidecarClient(ManagedChannel channel, boolean ownsChannel) {
        this.channel = channel;
        this.ownsChannel = ownsChannel;
        this.async = OptimizerGrpc.newStub(channel)
                .withMaxInboundMessageSize(MAX_MESSAGE_BYTES)
                .withOnReadyThreshold(ON_READY_THRESHOLD);
        this.blocking = OptimizerGrpc.newBlockingStub(channel).withMaxInboundMessageSize(MAX_MESSAGE_BYTES);
    }

    /**
     * Connects in plaintext to {@code host:port}, or to a Unix domain socket {@code unix:PATH}
     * (also {@code unix:///absolute/path}) of a server on the same host.
     */
    public static OptSidecarClient connect(String target) {
        return builder(target).connect();
    }

    /** Connects with TLS to {@code target}, trusting the CA in {@code caFile}; see {@link #builder} for more. */
    public static OptSidecarClient connect(String target, java.nio.file.Path caFile) {
        return builder(target).tlsCa(caFile).connect();
    }

    /**
     * Settings for a connection: TLS (on when a CA is given), a client certificate for mutual TLS,
     * a bearer token; {@link OptSidecarClientBuilder#fromEnvironment()} reads them from OPTSIDECAR_*.
     */
    public static OptSidecarClientBuilder builder(String target) {
        return new OptSidecarClientBuilder(target);
    }

    /**
     * Registers a model and uploads its initial weights, one {@link TensorData} per tensor of the
     * spec, in order.
     */
    public ModelInfo register(ModelSpec spec, List<? extends TensorData> initialWeights) {
        return register(spec, initialWeights, List.of());
    }

    /**
     * Registers an ephemeral model: the server deletes it unless {@link #renewLease} is called at
     * least every {@code leaseSeconds} (renew well within it, e.g. every third of it).
     */
    public ModelInfo registerEphemeral(ModelSpec spec, List<? extends TensorData> initialWeights, int leaseSeconds) {
        if (leaseSeconds <= 0) {
            throw new IllegalArgumentException("leaseSeconds must be positive, got " + leaseSeconds);
        }
        return register(spec.toBuilder().setLeaseSeconds(leaseSeconds).build(), initialWeights, List.of());
    }

    /** Keeps an ephemeral model alive for another grace period; returns that period in seconds (0: no lease). */
    public int renewLease(String model) {
        return blocking.renewLease(RenewLeaseRequest.newBuilder().setModel(model).build()).getLeaseSeconds();
    }

    /** One saved optimizer state buffer: tensor index, slot name (as Describe lists it) and values. */
    public record StateBuffer(int tensor, String slot, TensorData data) {}

    /**
     * Registers a model restored from a saved run: {@code spec.state} carries the counters,
     * {@code state} the buffers. The model appears only when everything has arrived.
     */
    public ModelInfo register(ModelSpec spec, List<? extends TensorData> initialWeights, List<StateBuffer> state) {
        if (initialWeights.size() != spec.getTensorsCount()) {
            throw new IllegalArgumentException("spec has " + spec.getTensorsCount() + " tensors but "
                    + initialWeights.size() + " initial weights were given");
        }
        return upload("Register", async::register, (requests, gate) -> {
            requests.onNext(RegisterRequest.newBuilder().setSpec(spec).build());
            Chunks.send(initialWeights, gate, c -> requests.onNext(RegisterRequest.newBuilder()
                    .setWeights(WeightsChunk.newBuilder().setTensor(c.tensor()).setOffset(c.offset()).setData(c.data()))
                    .build()));
            for (StateBuffer buffer : state) {
                Chunks.send(List.of(buffer.data()), gate, c -> requests.onNext(RegisterRequest.newBuilder()
                        .setState(StateChunk.newBuilder().setTensor(buffer.tensor()).setSlot(buffer.slot())
                                .setOffset(c.offset()).setData(c.data()))
                        .build()));
            }
        });
    }

    /**
     * Runs a client-streaming call answered with a ModelInfo (Register, AddTensors): {@code send}
     * writes the requests as the transport is ready; a failure on the client's side cancels the call.
     */
    private <Q> ModelInfo upload(String rpc, java.util.function.Function<StreamObserver<ModelInfo>, StreamObserver<Q>> call,
                                 java.util.function.BiConsumer<StreamObserver<Q>, Chunks.ReadyGate> send) {
        CompletableFuture<ModelInfo> result = new CompletableFuture<>();
        Chunks.ReadyGate gate = new Chunks.ReadyGate();
        StreamObserver<Q> requests = call.apply(new ClientResponseObserver<Q, ModelInfo>() {
            @Override
            public void beforeStart(ClientCallStreamObserver<Q> stream) {
                gate.attach(stream);
                stream.setOnReadyHandler(gate::signal);
            }

            @Override
            public void onNext(ModelInfo value) {
                result.complete(value);
            }

            @Override
            public void onError(Throwable t) {
                result.completeExceptionally(t);
                gate.fail(t);
            }

            @Override
            public void onCompleted() {
                result.completeExceptionally(Status.INTERNAL.withDescription("no reply to " + rpc).asRuntimeException());
            }
        });
        try {
            send.accept(requests, gate);
            requests.onCompleted();
        } catch (RuntimeException e) {
            if (!result.isDone()) {
                requests.onError(Status.CANCELLED.withDescription("client failed: " + e).asRuntimeException());
                throw e;
            }
        }
        return await(result);
    }

    /**
     * Adds tensors to a registered model as a new parameter group, as torch's add_param_group does
     * (e.g. unfreezing a backbone): {@code weights} holds their initial values, one per tensor, in
     * order. {@code group} names the new group and may override the model's hyperparameters; its
     * tensors list may be left empty. The new tensors come after the model's, with fresh optimizer
     * state; everything else carries over. Open Step streams of the model end with ABORTED
     * ({@link ServerError#MODEL_CHANGED}); a {@link Trainer} reopens its stream by itself.
     *
     * @return the extended model
     */
    public ModelInfo addTensors(String model, List<TensorSpec> tensors, ParamGroup group,
                                List<? extends TensorData> weights) {
        if (weights.size() != tensors.size()) {
            throw new IllegalArgumentException(tensors.size() + " tensors to add but " + weights.size()
                    + " initial weights were given");
        }
        int first = describe(model).getTensorsCount(); // the new tensors' weights are indexed from here
        return upload("AddTensors", async::addTensors, (requests, gate) -> {
            requests.onNext(AddTensorsRequest.newBuilder().setSpec(AddTensorsSpec.newBuilder().setModel(model)
                    .addAllTensors(tensors).setGroup(group)).build());
            Chunks.send(weights, gate, c -> requests.onNext(AddTensorsRequest.newBuilder()
                    .setWeights(WeightsChunk.newBuilder().setTensor(first + c.tensor()).setOffset(c.offset())
                            .setData(c.data()))
                    .build()));
        });
    }

    /** Opens a trainer: a Step stream for {@code model} identified by {@code clientId}. */
    public Trainer trainer(String model, String clientId) {
        return new Trainer(this, model, clientId, describe(model));
    }

    /**
     * Opens a trainer whose chunks travel as {@code wire} elements (bfloat16 or float16 halve the
     * bytes; the server keeps float32 weights and state).
     */
    public Trainer trainer(String model, String clientId, WireDtype wire) {
        return trainer(model, clientId).wireDtype(wire);
    }

    /**
     * Pulls a view's weights into {@code out}, one {@link TensorData} per tensor.
     *
     * @return the view and version the weights belong to
     */
    public Weights pull(String model, View view, List<? extends TensorData> out) {
        return pull(model, view, out, List.of());
    }

    /**
     * Pulls a view of some tensors only: {@code out} holds one entry per model tensor, null for
     * those not in {@code tensors}. Needed for a state slot only some groups have.
     */
    public Weights pull(String model, View view, List<? extends TensorData> out, List<Integer> tensors) {
        return pull(model, view, out, tensors, WireDtype.WIRE_FLOAT32);
    }

    /** As {@link #pull(String, View, List, List)}, the weights sent as {@code wire} elements and widened here. */
    public Weights pull(String model, View view, List<? extends TensorData> out, List<Integer> tensors,
                        WireDtype wire) {
        CompletableFuture<Weights> done = new CompletableFuture<>();
        WeightsSink sink = new WeightsSink(out, wire);
        PullRequest request = PullRequest.newBuilder().setModel(model).setView(view).addAllTensors(tensors)
                .setWireDtype(wire).build();
        async.pull(request, new StreamObserver<>() {
            @Override
            public void onNext(WeightsChunk chunk) {
                sink.accept(chunk);
            }

            @Override
            public void onError(Throwable t) {
                done.completeExceptionally(t);
            }

            @Override
            public void onCompleted() {
                try {
                    done.complete(sink.finish());
                } catch (RuntimeException e) {
                    done.completeExceptionally(e);
                }
            }
        });
        return await(done);
    }

    /** Pulls the train view. */
    public Weights pull(String model, List<? extends TensorData> out) {
        return pull(model, View.newBuilder().setKind(ViewKind.VIEW_TRAIN).build(), out);
    }

    public ModelInfo describe(String model) {
        return blocking.describe(DescribeRequest.newBuilder().setModel(model).build());
    }

    /** Writes a resumable snapshot of {@code model} to the server's state directory. */
    public SnapshotInfo snapshot(String model) {
        return blocking.snapshot(SnapshotRequest.newBuilder().setModel(model).build());
    }

    /** Snapshots of one model (or of all, for an empty name), oldest first, each verified. */
    public List<SnapshotInfo> listSnapshots(String model) {
        return blocking.listSnapshots(ListSnapshotsRequest.newBuilder().setModel(model).build()).getSnapshotsList();
    }

    /** Restores a model from its snapshots (see RestoreRequest). */
    public ModelInfo restore(RestoreRequest request) {
        return blocking.restore(request);
    }

    /** Copies {@code model} with all its optimizer state into {@code newModel}, optionally with another schedule. */
    public ModelInfo fork(String model, String newModel, Schedule schedule) {
        ForkRequest.Builder r = ForkRequest.newBuilder().setModel(model).setNewModel(newModel);
        if (schedule != null) {
            r.setSchedule(schedule);
        }
        return blocking.fork(r.build());
    }

    /** Writes one view (default: eval) of {@code model} as a safetensors file for deployment. */
    public ExportInfo export(String model, View view) {
        return blocking.export(ExportRequest.newBuilder().setModel(model).setView(view).build());
    }

    /**
     * Which contributions (client id, step id) each version of {@code model} from {@code fromVersion}
     * on combined, oldest first, as far back as the server keeps them. Reads every page the server
     * answers in, so the whole list may be far larger than one message.
     */
    public List<VersionContributions> history(String model, long fromVersion) {
        List<VersionContributions> out = new ArrayList<>();
        long from = fromVersion;
        while (true) {
            HistoryResponse page = blocking.history(HistoryRequest.newBuilder().setModel(model).setFromVersion(from).build());
            out.addAll(page.getVersionsList());
            if (page.getNextFromVersion() == 0) {
                return out;
            }
            from = page.getNextFromVersion();
        }
    }

    /**
     * What each version of {@code model} from {@code fromVersion} on did (learning rates, norms,
     * staleness, step time) and the figures its trainers reported, oldest first, as far back as the
     * server keeps them; every page read.
     */
    public List<dev.optsidecar.proto.v1.VersionFigures> figures(String model, long fromVersion) {
        List<dev.optsidecar.proto.v1.VersionFigures> out = new ArrayList<>();
        long from = fromVersion;
        while (true) {
            dev.optsidecar.proto.v1.FiguresResponse page = blocking.figures(dev.optsidecar.proto.v1.FiguresRequest
                    .newBuilder().setModel(model).setFromVersion(from).build());
            out.addAll(page.getVersionsList());
            if (page.getNextFromVersion() == 0) {
                return out;
            }
            from = page.getNextFromVersion();
        }
    }

    /**
     * Reports figures without a step (an evaluation's accuracy, say): they join the model's current
     * version; returns that version.
     */
    public long logFigures(String model, Map<String, Double> figures) {
        return blocking.logFigures(dev.optsidecar.proto.v1.LogFiguresRequest.newBuilder().setModel(model)
                .putAllFigures(figures).build()).getVersion();
    }

    /** The server's version, engine and device, shared-memory directory and doorbell socket. */
    public dev.optsidecar.proto.v1.ServerInfoResponse serverInfo() {
        return blocking.serverInfo(dev.optsidecar.proto.v1.ServerInfoRequest.getDefaultInstance());
    }

    public List<String> list() {
        return blocking.list(ListRequest.getDefaultInstance()).getModelsList();
    }

    public void delete(String model) {
        blocking.delete(DeleteRequest.newBuilder().setModel(model).build());
    }

    /** Waits for a call's result, rethrowing a gRPC failure as the StatusRuntimeException it was. */
    /** Reconnect at once rather than after the channel's backoff: the caller is retrying because the server is back. */
    void reconnectNow() {
        channel.resetConnectBackoff();
    }

    static <T> T await(CompletableFuture<T> future) {
        try {
            return future.get();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw Status.CANCELLED.withDescription("interrupted").asRuntimeException();
        } catch (ExecutionException e) {
            Throwable cause = e.getCause();
            if (cause instanceof StatusRuntimeException s) {
                throw new StatusRuntimeException(s.getStatus(), s.getTrailers());
            }
            if (cause instanceof RuntimeException r) {
                throw r;
            }
            throw new IllegalStateException(cause);
        }
    }

    @Override
    public void close() {
        if (ownsChannel) {
            channel.shutdown();
            try {
                if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
                    channel.shutdownNow();
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                channel.shutdownNow();
            }
        }
    }

    /** The view and model version a set of weights belongs to. */
    public record Weights(View view, long version) {}
}
