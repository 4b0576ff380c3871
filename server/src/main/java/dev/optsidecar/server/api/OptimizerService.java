package dev.optsidecar.server.api;

import dev.optsidecar.proto.v1.DeleteRequest;
import dev.optsidecar.proto.v1.DeleteResponse;
import dev.optsidecar.proto.v1.DescribeRequest;
import dev.optsidecar.proto.v1.ListRequest;
import dev.optsidecar.proto.v1.ListResponse;
import dev.optsidecar.proto.v1.ModelInfo;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.PullRequest;
import dev.optsidecar.proto.v1.RegisterRequest;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.WeightsChunk;
import dev.optsidecar.server.model.Model;
import dev.optsidecar.server.model.ModelRegistry;
import dev.optsidecar.server.model.ViewReader;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;

import java.util.function.Supplier;

/** The Optimizer service: validates requests and delegates to the model registry. */
public final class OptimizerService extends OptimizerGrpc.OptimizerImplBase {
    private final ModelRegistry registry;

    public OptimizerService(ModelRegistry registry) {
        this.registry = registry;
    }

    @Override
    public StreamObserver<RegisterRequest> register(StreamObserver<ModelInfo> out) {
        return new RegisterCall(registry, out);
    }

    @Override
    public StreamObserver<StepRequest> step(StreamObserver<StepResponse> out) {
        return new StepCall(registry, (ServerCallStreamObserver<StepResponse>) out);
    }

    @Override
    public void pull(PullRequest request, StreamObserver<WeightsChunk> responses) {
        ServerCallStreamObserver<WeightsChunk> out = (ServerCallStreamObserver<WeightsChunk>) responses;
        ViewReader reader;
        try {
            Model model = registry.get(request.getModel(), "model");
            Model.ResolvedView view = model.resolveView(request.getView(), "view", false);
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

    @Override
    public void describe(DescribeRequest request, StreamObserver<ModelInfo> out) {
        unary(out, () -> registry.get(request.getModel(), "model").describe());
    }

    @Override
    public void list(ListRequest request, StreamObserver<ListResponse> out) {
        unary(out, () -> ListResponse.newBuilder().addAllModels(registry.names()).build());
    }

    @Override
    public void delete(DeleteRequest request, StreamObserver<DeleteResponse> out) {
        unary(out, () -> {
            registry.delete(request.getModel(), "model");
            return DeleteResponse.getDefaultInstance();
        });
    }

    private static <T> void unary(StreamObserver<T> out, Supplier<T> body) {
        T response;
        try {
            response = body.get();
        } catch (RuntimeException e) {
            out.onError(Statuses.toStatus(e));
            return;
        }
        out.onNext(response);
        out.onCompleted();
    }
}
