package dev.optsidecar.server.api;

import dev.optsidecar.server.observe.LogEvent;
import dev.optsidecar.proto.v1.AddTensorsRequest;
import dev.optsidecar.proto.v1.DeleteRequest;
import dev.optsidecar.proto.v1.DeleteResponse;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.ListRequest;
import dev.optsidecar.proto.v1.ListResponse;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.RenewLeaseRequest;
import dev.optsidecar.proto.v1.RenewLeaseResponse;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.proto.v1.ExportInfo;
import dev.optsidecar.proto.v1.ExportRequest;
import dev.optsidecar.proto.v1.ForkRequest;
import dev.optsidecar.proto.v1.FiguresRequest;
import dev.optsidecar.proto.v1.FiguresResponse;
import dev.optsidecar.proto.v1.HistoryRequest;
import dev.optsidecar.proto.v1.LogFiguresRequest;
import dev.optsidecar.proto.v1.LogFiguresResponse;
import dev.optsidecar.proto.v1.HistoryResponse;
import dev.optsidecar.proto.v1.ListSnapshotsRequest;
import dev.optsidecar.proto.v1.ListSnapshotsResponse;
import dev.optsidecar.proto.v1.RestoreRequest;
import dev.optsidecar.proto.v1.SnapshotInfo;
import dev.optsidecar.proto.v1.SnapshotRequest;
import dev.optsidecar.proto.v1.ServerInfoRequest;
import dev.optsidecar.proto.v1.ServerInfoResponse;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.auth.Caller;
import dev.optsidecar.server.durability.Persistence;
import dev.optsidecar.server.engine.WireType;
import dev.optsidecar.server.model.ClientFigures;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.ModelLoader;
import dev.optsidecar.server.model.ModelRegistry;
import dev.optsidecar.server.model.ViewReader;
import dev.optsidecar.server.model.WireTypes;
import dev.optsidecar.server.shm.Doorbell;
import dev.optsidecar.server.shm.Segment;
import dev.optsidecar.server.shm.SegmentTransfer;
import dev.optsidecar.server.shm.SharedMemory;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;

import java.io.IOException;
import java.util.concurrent.Executor;
import java.util.logging.Logger;

/** The Optimizer service: validates requests and delegates to the model registry and persistence. */
public final class OptimizerService extends OptimizerGrpc.OptimizerImplBase {
    private static final Logger LOG = Logger.getLogger(OptimizerService.class.getName());
    private final ModelRegistry registry;
    /** Null when the server has no state directory. */
    private final Persistence persistence;
    private final java.util.Set<StepCall> openSteps = java.util.concurrent.ConcurrentHashMap.newKeySet();
    /** The server's threads for what follows a sync step's completion, and for detaching trainers. */
    private final Executor completions;

    /** The directory clients' shared segments are opened in; off unless --shm-dir. */
    private final SharedMemory sharedMemory;
    private final Doorbell doorbell;

    public OptimizerService(ModelRegistry registry, Persistence persistence, Executor completions) {
        this(registry, persistence, completions, SharedMemory.off());
    }

    public OptimizerService(ModelRegistry registry, Persistence persistence, Executor completions,
                            SharedMemory sharedMemory) {
        this(registry, persistence, completions, sharedMemory, null);
    }

    /** As above, with the doorbell socket shared-memory streams may carry their steps over (null: none). */
    public OptimizerService(ModelRegistry registry, Persistence persistence, Executor completions,
                            SharedMemory sharedMemory, Doorbell doorbell) {
        this.registry = registry;
        this.persistence = persistence;
        this.completions = completions;
        this.sharedMemory = sharedMemory;
        this.doorbell = doorbell;
    }

    @Override
    public void serverInfo(ServerInfoRequest request, StreamObserver<ServerInfoResponse> out) {
        unary(out, () -> ServerInfoResponse.newBuilder()
                .setVersion(VERSION)
                .setShmDir(sharedMemory.enabled() ? sharedMemory.dir().toString() : "")
                .setEngine(registry.engine().name())
                .setDevice(registry.engine().device())
                .setDeviceUuid(registry.engine().deviceUuid())
                .setDoorbellSocket(doorbell == null ? "" : doorbell.socketName())
                .setSegmentSocket(sharedMemory.segmentSocket())
                .setChecksSegmentWeights(true)
                .build());
    }

    /** The server's release, as --version gives it. */
    static final String VERSION = "0.1.0";

    @Override
    public StreamObserver<RegisterRequest> register(StreamObserver<ModelInfo> out) {
        return new RegisterCall(registry, persistence, out);
    }

    @Override
    public StreamObserver<AddTensorsRequest> addTensors(StreamObserver<ModelInfo> out) {
        return new AddTensorsCall(registry, persistence, out, this::endStepsOn);
    }

    /** The model's tensors changed: its open Step streams end with ABORTED (MODEL_CHANGED), and their clients reopen them. */
    private void endStepsOn(Model replaced) {
        OptError changed = replaced.changedError();
        openSteps.forEach(call -> call.endIfOn(replaced, changed));
    }

    @Override
    public StreamObserver<StepRequest> step(StreamObserver<StepResponse> out) {
        StepCall call = new StepCall(registry, sharedMemory, doorbell, (ServerCallStreamObserver<StepResponse>) out,
                openSteps::remove,
                completions);
        openSteps.add(call);
        return call;
    }

    /** Ends every open Step stream with UNAVAILABLE, for a shutdown. */
    public void shutdown() {
        openSteps.forEach(StepCall::shutdown);
    }

    @Override
    public void pull(PullRequest request, StreamObserver<WeightsChunk> responses) {
        ServerCallStreamObserver<WeightsChunk> out = (ServerCallStreamObserver<WeightsChunk>) responses;
        if (request.hasShared()) {
            unary(out, () -> {
                if (WireTypes.of(request.getWireDtype(), request.getWireDtypeValue(), "wire_dtype") != WireType.FLOAT32) {
                    throw OptError.invalid("wire_dtype: a shared segment holds float32; leave the wire type"
                            + " unspecified (it is the chunks')");
                }
                return pullIntoSegment(request);
            });
            return;
        }
        ViewReader reader;
        try {
            WireType wire = WireTypes.of(request.getWireDtype(), request.getWireDtypeValue(), "wire_dtype");
            Model model = registry.get(request.getModel(), "model");
            Model.ResolvedView view = model.resolveView(request.getView(), "view", false).sentAs(wire);
            reader = model.read(view, request.getTensorsList(), "tensors");
        } catch (RuntimeException e) {
            out.onError(Statuses.toStatus(e));
            return;
        }
        out.setOnReadyThreshold(4 * ChunkSender.CHUNK_BYTES);
        ChunkSender<WeightsChunk> sender = new ChunkSender<>(out, reader, w -> w, out::onCompleted);
        out.setOnCancelHandler(sender::cancel);
        out.setOnReadyHandler(() -> {
            try {
                sender.drain();
            } catch (RuntimeException e) {
                sender.cancel();
                out.onError(Statuses.toStatus(e));
            }
        });
        sender.drain();
    }

    /** Writes the view into the request's segment; the answer is one chunk without data, naming view and version. */
    private WeightsChunk pullIntoSegment(PullRequest request) {
        Model model = registry.get(request.getModel(), "model");
        Model.ResolvedView view = model.resolveView(request.getView(), "view", false).readInPlace();
        try (Segment segment = sharedMemory.open(request.getShared(), model.tensorNumels(), "shared")) {
            ViewReader reader = model.read(view, request.getTensorsList(), "tensors");
            long version = SegmentTransfer.writeView(reader, segment).version();
            return WeightsChunk.newBuilder().setView(reader.view()).setVersion(version).build();
        }
    }

    @Override
    public void describe(DescribeRequest request, StreamObserver<ModelInfo> out) {
        unary(out, () -> registry.get(request.getModel(), "model").describe());
    }

    @Override
    public void list(ListRequest request, StreamObserver<ListResponse> out) {
        unary(out, () -> ListResponse.newBuilder()
                .addAllModels(registry.names().stream().filter(Caller::maySee).toList()).build());
    }

    @Override
    public void delete(DeleteRequest request, StreamObserver<DeleteResponse> out) {
        unary(out, () -> {
            Model m = registry.get(request.getModel(), "model");
            registry.delete(request.getModel(), "model");
            if (persistence != null) {
                persistence.deleted(m);
            }
            LogEvent.info(LOG, "delete", m.name(), () -> String.format("model '%s': deleted at version %d (%d bytes"
                    + " freed)", m.name(), m.version(), m.memoryBytes()), "version", m.version(), "bytes",
                    m.memoryBytes());
            return DeleteResponse.getDefaultInstance();
        });
    }

    @Override
    public void renewLease(RenewLeaseRequest request, StreamObserver<RenewLeaseResponse> out) {
        unary(out, () -> RenewLeaseResponse.newBuilder()
                .setLeaseSeconds(registry.renewLease(request.getModel(), "model")).build());
    }

    @Override
    public void snapshot(SnapshotRequest request, StreamObserver<SnapshotInfo> out) {
        unary(out, () -> persistence().snapshot(registry.get(request.getModel(), "model"), "rpc"));
    }

    @Override
    public void listSnapshots(ListSnapshotsRequest request, StreamObserver<ListSnapshotsResponse> out) {
        unary(out, () -> ListSnapshotsResponse.newBuilder().addAllSnapshots(request.getModel().isEmpty()
                ? persistence().store().listAll().stream().filter(s -> Caller.maySee(s.getModel())).toList()
                : persistence().store().list(request.getModel())).build());
    }

    @Override
    public void restore(RestoreRequest request, StreamObserver<ModelInfo> out) {
        unary(out, () -> {
            if (request.getModel().isEmpty()) {
                throw OptError.invalid("model: name the model whose snapshots to restore");
            }
            return persistence().restore(request.getModel(), request.getId(), request.getAsModel(),
                    request.getReplace()).describe();
        });
    }

    @Override
    public void fork(ForkRequest request, StreamObserver<ModelInfo> out) {
        unary(out, () -> {
            Model source = registry.get(request.getModel(), "model");
            Model fork = ModelLoader.fork(registry, source, request.getNewModel(),
                    request.hasSchedule() ? request.getSchedule() : null).publish();
            if (persistence != null) {
                persistence.adopt(fork, "fork");
            }
            return fork.describe();
        });
    }

    @Override
    public void export(ExportRequest request, StreamObserver<ExportInfo> out) {
        unary(out, () -> persistence().export(registry.get(request.getModel(), "model"), request.getView()));
    }

    @Override
    public void history(HistoryRequest request, StreamObserver<HistoryResponse> out) {
        unary(out, () -> registry.get(request.getModel(), "model")
                .history(request.getFromVersion(), request.getMaxVersions()));
    }

    @Override
    public void figures(FiguresRequest request, StreamObserver<FiguresResponse> out) {
        unary(out, () -> registry.get(request.getModel(), "model")
                .figures(request.getFromVersion(), request.getMaxVersions()));
    }

    @Override
    public void logFigures(LogFiguresRequest request, StreamObserver<LogFiguresResponse> out) {
        unary(out, () -> {
            Model m = registry.get(request.getModel(), "model");
            long version = m.logFigures(ClientFigures.check(request.getFiguresMap(), "figures"));
            return LogFiguresResponse.newBuilder().setVersion(version).build();
        });
    }

    private Persistence persistence() {
        if (persistence == null) {
            throw OptError.precondition("the server was started without --state-dir, so it keeps no snapshots")
                    .withReason(OptError.Reason.NO_STATE_DIR);
        }
        return persistence;
    }

    /** A unary body that may do file I/O. */
    @FunctionalInterface
    private interface Body<T> {
        T get() throws IOException;
    }

    private static <T> void unary(StreamObserver<T> out, Body<T> body) {
        T response;
        try {
            response = body.get();
        } catch (IOException | RuntimeException e) {
            out.onError(Statuses.toStatus(e));
            return;
        }
        out.onNext(response);
        out.onCompleted();
    }
}
