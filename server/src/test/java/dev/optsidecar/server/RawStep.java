package dev.optsidecar.server;

import com.google.protobuf.ByteString;
import dev.optsidecar.proto.v1.GradientChunk;
import dev.optsidecar.proto.v1.OptimizerGrpc;
import dev.optsidecar.proto.v1.StepCommit;
import dev.optsidecar.proto.v1.StepOpen;
import dev.optsidecar.proto.v1.StepRequest;
import dev.optsidecar.proto.v1.StepResponse;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.View;
import dev.optsidecar.proto.v1.ViewKind;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;

import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.fail;

/**
 * A Step stream driven message by message through the generated stub, for sequences the client
 * never sends: bad chunks, commits with chunks missing, streams cancelled midway.
 */
public final class RawStep implements ClientResponseObserver<StepRequest, StepResponse> {
    public final List<StepResponse> responses = new CopyOnWriteArrayList<>();
    /** How the server ended the call, with its trailers, when it ended with an error. */
    public volatile Throwable error;
    private final CompletableFuture<Status> closed = new CompletableFuture<>();
    private ClientCallStreamObserver<StepRequest> requests;

    private final int initialRequests;

    private RawStep(int initialRequests) {
        this.initialRequests = initialRequests;
    }

    /** A Step stream with nothing sent yet. */
    public static RawStep start(OptimizerGrpc.OptimizerStub stub) {
        RawStep s = new RawStep(-1);
        stub.step(s);
        return s;
    }

    /**
     * A Step stream that has sent its StepOpen and takes only {@code responses} responses until
     * more are requested, so the server's sending backs up behind flow control.
     */
    public static RawStep openWithManualFlow(OptimizerGrpc.OptimizerStub stub, String model, int responses) {
        RawStep s = new RawStep(responses);
        stub.step(s);
        return s.send(StepRequest.newBuilder()
                .setOpen(StepOpen.newBuilder().setModel(model).setClientId(uniqueClientId())).build());
    }

    private static final java.util.concurrent.atomic.AtomicLong CLIENTS = new java.util.concurrent.atomic.AtomicLong();

    /** Each raw stream is its own client, so step ids reused across streams are never taken for retries. */
    private static String uniqueClientId() {
        return "raw-" + CLIENTS.incrementAndGet();
    }

    /** A Step stream that has sent its StepOpen for {@code model} as client {@code clientId}. */
    public static RawStep openAs(OptimizerGrpc.OptimizerStub stub, String model, String clientId) {
        return start(stub).send(StepRequest.newBuilder()
                .setOpen(StepOpen.newBuilder().setModel(model).setClientId(clientId)).build());
    }

    /** A Step stream that has sent its StepOpen for {@code model}. */
    public static RawStep open(OptimizerGrpc.OptimizerStub stub, String model) {
        return start(stub).send(StepRequest.newBuilder()
                .setOpen(StepOpen.newBuilder().setModel(model).setClientId(uniqueClientId())).build());
    }

    @Override
    public void beforeStart(ClientCallStreamObserver<StepRequest> stream) {
        this.requests = stream;
        if (initialRequests >= 0) {
            stream.disableAutoRequestWithInitial(initialRequests);
        }
    }

    public RawStep send(StepRequest r) {
        requests.onNext(r);
        return this;
    }

    public RawStep chunk(long stepId, int tensor, long offset, ByteString data) {
        return send(StepRequest.newBuilder().setChunk(GradientChunk.newBuilder()
                .setStepId(stepId).setTensor(tensor).setOffset(offset).setData(data)).build());
    }

    /** Sends tensor {@code t} of {@code grads} as the client would: 1 MiB chunks in order. */
    public RawStep tensor(long stepId, float[][] grads, int t) {
        float[] g = grads[t];
        for (int off = 0; off < g.length; off += StandardModel.CHUNK_FLOATS) {
            int n = Math.min(StandardModel.CHUNK_FLOATS, g.length - off);
            chunk(stepId, t, off, StandardModel.le(g, off, n));
        }
        return this;
    }

    /** Sends every tensor of {@code grads}. */
    public RawStep all(long stepId, float[][] grads) {
        for (int t = 0; t < grads.length; t++) {
            tensor(stepId, grads, t);
        }
        return this;
    }

    public RawStep commit(StepCommit commit) {
        return send(StepRequest.newBuilder().setCommit(commit).build());
    }

    public RawStep commit(long stepId, ViewKind view) {
        return commit(StepCommit.newBuilder().setStepId(stepId)
                .setView(View.newBuilder().setKind(view)).build());
    }

    /**
     * The results received so far on a stream whose weights go outside it (a shared segment, a
     * trainer's device buffers); fails if weights chunks were streamed instead.
     */
    public java.util.List<StepResult> resultsWithoutChunks() {
        java.util.List<StepResult> r = new java.util.ArrayList<>();
        for (StepResponse x : responses) {
            if (x.hasResult()) {
                r.add(x.getResult());
            }
            org.junit.jupiter.api.Assertions.assertFalse(x.hasWeights(),
                    "weights were streamed although they went outside the stream");
        }
        return r;
    }

    /** Waits for the {@code n}-th result (1-based) of {@link #resultsWithoutChunks}. */
    public StepResult resultWithoutChunks(int n) {
        SidecarFixture.awaitTrue("result " + n, () -> isClosed() || resultsWithoutChunks().size() >= n);
        java.util.List<StepResult> r = resultsWithoutChunks();
        org.junit.jupiter.api.Assertions.assertTrue(r.size() >= n,
                () -> "the stream ended with " + awaitClose() + " before result " + n);
        return r.get(n - 1);
    }

    public RawStep halfClose() {
        requests.onCompleted();
        return this;
    }

    /** The client cancels the call (RST_STREAM CANCEL). */
    public void cancel() {
        requests.cancel("test cancels the step midway", null);
    }

    /** The client fails the call through the observer, as application code on error would. */
    public void clientError(Throwable cause) {
        requests.onError(cause);
    }

    public boolean isClosed() {
        return closed.isDone();
    }

    /** Waits for the server to end the call; Status.OK when it completed normally. */
    public Status awaitClose() {
        try {
            return closed.get(SidecarFixture.WAIT_MS, TimeUnit.MILLISECONDS);
        } catch (Exception e) {
            requests.cancel("test timed out", e);
            return fail("the server did not end the Step call within " + SidecarFixture.WAIT_MS + " ms: " + e);
        }
    }

    @Override
    public void onNext(StepResponse value) {
        responses.add(value);
    }

    @Override
    public void onError(Throwable t) {
        error = t;
        closed.complete(Status.fromThrowable(t));
    }

    @Override
    public void onCompleted() {
        closed.complete(Status.OK);
    }
}
