package dev.optsidecar.server;

import dev.optsidecar.proto.v1.ModelInfo;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;

import java.util.concurrent.CompletableFuture;

/** The response side of a raw Register call: completes with how the server ended it (OK or its error). */
public final class RegisterEnd implements StreamObserver<ModelInfo> {
    public final CompletableFuture<Status> status;

    public RegisterEnd(CompletableFuture<Status> status) {
        this.status = status;
    }

    @Override
    public void onNext(ModelInfo value) {}

    @Override
    public void onError(Throwable t) {
        status.complete(Status.fromThrowable(t));
    }

    @Override
    public void onCompleted() {
        status.complete(Status.OK);
    }
}
